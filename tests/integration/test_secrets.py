"""No secret in anything the operator and the backend write: one scenario that uses every credential
(a legacy API key, then a personal access token, and the backend's basic-auth password, rotated)
through registration, pre-labeling, rotation and deletion, both at DEBUG log level; then every log
line (operator, backend), every Event, every MLBackend as it was read during the scenario (spec and
status), the objects the operator made (Deployments, Services, ConfigMaps, autoscalers), and its
metrics are searched for each secret, its base64 form, and any JWT (the access tokens the SDK gets
for a personal access token are secrets too, and none is known to the test)."""

from __future__ import annotations

import base64
import re
import secrets
import uuid
from collections.abc import Iterator

import pytest
import yaml

from prelabel_backend import synthetic
from prelabel_local import chart
from prelabel_local.kubelet import BackendKubelet
from prelabel_local.operator_process import OperatorProcess
from prelabel_operator.status import condition
from tests.conftest import SEED_CONFIG, scenes, wait_for

pytestmark = [pytest.mark.cluster, pytest.mark.labelstudio]

JWT = re.compile(r"eyJ[\w-]{8,}\.eyJ[\w-]{8,}\.[\w-]{8,}")


@pytest.fixture(scope="module")
def env(cluster, label_studio, tmp_path_factory) -> Iterator:  # noqa: ANN001
    service_account = chart.install(cluster)
    work = tmp_path_factory.mktemp("secrets")
    kubelet = BackendKubelet(cluster.kubeconfig, work / "pods").start()
    operator = OperatorProcess(service_account, work / "operator.log", env={"LOG_LEVEL": "DEBUG"}).start()
    yield cluster, operator, work
    operator.stop()
    kubelet.stop()


def apply_secret(cluster, ns: str, name: str, **data: str) -> None:  # noqa: ANN001
    literals = [f"--from-literal={k.replace('_', '-')}={v}" for k, v in data.items()]
    manifest = cluster.kubectl("create", "secret", "generic", name, "-n", ns, *literals, "--dry-run=client", "-o", "yaml").stdout
    cluster.kubectl("apply", "-f", "-", input=manifest)


def test_no_secret_in_logs_events_status_or_manifests(env, label_studio, ls_client, personal_access_token: str) -> None:  # noqa: ANN001
    cluster, operator, work = env
    ns = f"sec-{uuid.uuid4().hex[:6]}"
    chart.restricted_namespace(cluster, ns)
    passwords = [secrets.token_urlsafe(18), secrets.token_urlsafe(18)]
    apply_secret(cluster, ns, "ls-key", api_key=label_studio.token)
    apply_secret(cluster, ns, "backend-auth", username="labelstudio", password=passwords[0])
    project = ls_client.projects.create(title=f"secrets {ns}", label_config=SEED_CONFIG)
    label_studio.upload_images(project.id, {f"sec-{i}.png": synthetic.encode_png(s.image) for i, s in enumerate(scenes(701, 4))})
    seen: list[str] = []  # every text read back during the scenario

    def read(*args: str) -> str:
        out = cluster.kubectl(*args, check=False).stdout
        seen.append(out)
        return out

    def mlb() -> dict:
        return yaml.safe_load(read("get", "mlb", "shapes", "-n", ns, "-o", "yaml") or "{}") or {}

    def status() -> dict:
        return mlb().get("status") or {}

    def made() -> None:
        read("get", "deployments,services,configmaps,horizontalpodautoscalers,endpointslices", "-n", ns, "-o", "yaml")
        seen.append(operator.metrics())

    resource = {"apiVersion": "prelabel.dev/v1alpha1", "kind": "MLBackend", "metadata": {"name": "shapes", "namespace": ns},
                "spec": {"labelStudio": {"url": label_studio.url, "apiKeySecretRef": {"name": "ls-key"}, "projects": [{"id": project.id}]},
                         "basicAuthSecretRef": {"name": "backend-auth"}, "image": "prelabel-backend:test",
                         "model": {"env": [{"name": "LOG_LEVEL", "value": "DEBUG"}]},
                         "autoscaling": {"enabled": True, "maxReplicas": 2},
                         "prelabel": {"batchSize": 2, "pollSeconds": 3}}}
    cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump(resource))

    # Registration with basic auth, and the whole project pre-labeled through it.
    wait_for("4/4 Complete", lambda: (p := status().get("prelabel") or {}).get("phase") == "Complete" and p.get("summary") == "4/4", 300)
    assert condition(status(), "Ready")["status"] == "True"
    (registration,) = ls_client.ml.list(project=project.id)
    assert registration.auth_method == "BASIC_AUTH" and registration.basic_auth_user == "labelstudio"
    made()

    # Rotation: the personal access token replaces the legacy key, a new basic-auth password the old one.
    def secrets_hash() -> str:
        return read("get", "deployment", "shapes-backend", "-n", ns, "-o",
                    "jsonpath={.spec.template.metadata.annotations.prelabel\\.dev/secrets-hash}")
    before = secrets_hash()
    apply_secret(cluster, ns, "ls-key", api_key=personal_access_token)
    apply_secret(cluster, ns, "backend-auth", username="labelstudio", password=passwords[1])
    wait_for("a rollout for the rotated secrets", lambda: secrets_hash() not in ("", before), 60)
    label_studio.upload_images(project.id, {"sec-late.png": synthetic.encode_png(scenes(702, 1)[0].image)})
    wait_for("5/5 Complete after rotation", lambda: (p := status().get("prelabel") or {}).get("phase") == "Complete" and p.get("summary") == "5/5", 300)
    # The old pod may pre-label the late task before the rotated one is Available: Ready follows the rollout.
    wait_for("Ready after the rotation's rollout", lambda: condition(status(), "Ready")["status"] == "True", 120)
    made()

    # Deletion: the finalizer removes the registration.
    cluster.kubectl("delete", "mlb", "shapes", "-n", ns, "--timeout=90s")
    assert list(ls_client.ml.list(project=project.id)) == []
    read("get", "events", "-A", "-o", "yaml")
    logs = {"operator": operator.log.read_text(errors="replace")}
    logs |= {str(p.relative_to(work)): p.read_text(errors="replace") for p in (work / "pods").rglob("*.log")}
    assert any("backend" in name for name in logs), "no backend log was collected"
    assert "DEBUG" in logs["operator"]
    texts = {"logs " + name: text for name, text in logs.items()} | {f"read {i}": text for i, text in enumerate(seen)}

    needles = {"the legacy API key": label_studio.token, "the personal access token": personal_access_token,
               "the first basic-auth password": passwords[0], "the second basic-auth password": passwords[1]}
    needles |= {f"{what} in base64": base64.b64encode(value.encode()).decode() for what, value in list(needles.items())}
    leaks = [f"{what} in {where}" for where, text in texts.items() for what, value in needles.items() if value in text]
    leaks += [f"a JWT in {where}: {m.group()[:12]}..." for where, text in texts.items() for m in JWT.finditer(text)]
    assert not leaks, leaks
    print(f"searched {len(texts)} texts, {sum(map(len, texts.values()))} characters, for {len(needles)} secrets and any JWT")
