"""Hostile input to the operator: MLBackends with absurd but schema-valid values (the schema's own
limits are in test_crd.py). Each gets a status that says what is wrong and what to fix, and the
operator keeps serving the others: a plain MLBackend created after them becomes Ready as usual, and
every one of them can still be deleted.

- 50 projects (the schema's maximum): 45 that exist, 5 ids that do not;
- the largest env the schema allows (64 values of 2048 characters);
- project titles that match no project, or several;
- the longest name allowed (55 characters: its Service name is 63);
- unicode in the registration title and in the project title it is found by.

The backends are light protocol stand-ins (prelabel_local.fake_backends)."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from prelabel_local import chart
from prelabel_local.fake_backends import FakeBackends
from prelabel_local.operator_process import OperatorProcess
from prelabel_operator.status import condition
from tests.conftest import SEED_CONFIG, wait_for

pytestmark = [pytest.mark.cluster, pytest.mark.labelstudio]

MISSING = 10**8  # a project id no Label Studio here reaches


@pytest.fixture(scope="module")
def env(cluster, label_studio, tmp_path_factory) -> Iterator:  # noqa: ANN001
    service_account = chart.install(cluster)
    work = tmp_path_factory.mktemp("hostile")
    backends = FakeBackends(cluster.kubeconfig, work / "fake-backends.log").start()
    operator = OperatorProcess(service_account, work / "operator.log").start()
    yield cluster
    operator.stop()
    backends.stop()
    print("operator log tail:\n", (work / "operator.log").read_text(errors="replace")[-3000:])


def test_absurd_resources_get_a_clear_status_and_the_operator_keeps_serving(env, label_studio, ls_client) -> None:  # noqa: ANN001
    cluster = env
    ns = f"hostile-{uuid.uuid4().hex[:6]}"
    cluster.kubectl("create", "namespace", ns)
    cluster.kubectl("create", "secret", "generic", "ls-key", "-n", ns, f"--from-literal=api-key={label_studio.token}")

    def project(title: str) -> int:
        return int(ls_client.projects.create(title=title, label_config=SEED_CONFIG).id)

    def apply(name: str, projects: list[dict[str, Any]], **spec: Any) -> None:
        ls = {"url": label_studio.url, "apiKeySecretRef": {"name": "ls-key"}, "projects": projects, **spec.pop("labelStudio", {})}
        body = {"apiVersion": "prelabel.dev/v1alpha1", "kind": "MLBackend", "metadata": {"name": name, "namespace": ns},
                "spec": {"labelStudio": ls, "image": "prelabel-backend:hostile", **spec}}
        done = cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump(body), check=False)
        assert done.returncode == 0, done.stderr[:2000]

    def settled(name: str, reason: str) -> dict[str, Any]:
        """The status once Ready's reason is `reason` for the current generation."""
        return wait_for(f"{name}: {reason}", lambda: (s := cluster.status("mlb", ns, name)) and s.get("observedGeneration") == 1
                        and condition(s, "Ready").get("reason") == reason and s, 240)

    many = [project(f"{ns} many {i}") for i in range(45)]
    apply("many-projects", [{"id": p} for p in many] + [{"id": MISSING + i} for i in range(5)])
    apply("huge-env", [{"id": project(f"{ns} env")}], model={"env": [{"name": f"HUGE_{i}", "value": f"{i:02d}" * 1024} for i in range(64)]})
    apply("title-nothing", [{"title": f"{ns} no such project"}])
    twins = f"{ns} twins"
    project(twins), project(twins)
    apply("title-many", [{"title": twins}])
    longest = "n" * 55
    apply(longest, [{"id": project(f"{ns} longest")}])
    unicode_title = f"{ns} проект 标注 ✓ 🚗"
    unicode_project = project(unicode_title)
    apply("unicode", [{"title": unicode_title}], labelStudio={"title": "预标注 ✓ Ümlaut 🚗"})

    status = settled("many-projects", "RegistrationFailed")
    assert status["projectsSummary"] == "45/50", [p for p in status["projects"] if p["state"] != "Connected" and p.get("id", 0) < MISSING]
    message = condition(status, "Ready")["message"]
    assert all(f"project {MISSING + i}: no project {MISSING + i} in Label Studio" in message for i in range(5)), message
    assert "fix spec.labelStudio.projects" in message
    assert all(len(list(ls_client.ml.list(project=p))) == 1 for p in many)

    status = settled("huge-env", "Ready")
    deployment = json.loads(cluster.kubectl("get", "deployment", "huge-env-backend", "-n", ns, "-o", "json").stdout)
    env_vars = {e["name"]: e.get("value") for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env_vars["HUGE_63"] == "63" * 1024

    message = condition(settled("title-nothing", "RegistrationFailed"), "Ready")["message"]
    assert f"no project titled '{ns} no such project' in Label Studio: fix spec.labelStudio.projects or the title" in message
    message = condition(settled("title-many", "RegistrationFailed"), "Ready")["message"]
    assert f"2 projects titled '{twins}' in Label Studio: name the project by id instead" in message

    settled(longest, "Ready")
    service = cluster.kubectl("get", "service", f"{longest}-backend", "-n", ns, "-o", "jsonpath={.metadata.name}").stdout
    assert len(service) == 63

    status = settled("unicode", "Ready")
    assert [(m.title, m.url) for m in ls_client.ml.list(project=unicode_project)] == [("预标注 ✓ Ümlaut 🚗", status["url"])]

    # The operator still serves a plain resource created after all of them.
    apply("plain", [{"id": project(f"{ns} plain")}])
    settled("plain", "Ready")

    # Every one of them can be deleted, missing projects and all, and nothing is left in Label Studio.
    cluster.kubectl("delete", "mlbackends", "--all", "-n", ns, "--timeout=180s")
    everything = [*many, unicode_project]
    assert sum(len(list(ls_client.ml.list(project=p))) for p in everything) == 0
    assert sum(len(list(ls_client.webhooks.list(project=str(p)))) for p in everything) == 0
