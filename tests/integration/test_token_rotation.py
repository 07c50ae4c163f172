"""A personal access token rotated in Label Studio (issue 29, fault 4; POST /api/token/rotate/, label-studio
#7435), on a real control plane, with the operator installed by its chart and a real Label Studio whose
access tokens live 30 s (its default is 5 minutes): the old refresh token dies at once, and the access
tokens already given out live their lifetime. Before the Secret changes, Registered says Unauthorized
and what to do, pre-labeling says the same, and the tasks imported meanwhile get no prediction (none
stored empty); after it changes, the backend pods roll, Registered is True again and the run completes:
every task holds one non-empty prediction of the backend's version."""

from __future__ import annotations

import collections
import uuid
from collections.abc import Iterator

import pytest
import yaml
from label_studio_sdk import LabelStudio as Client

from prelabel_backend import synthetic
from prelabel_local import chart
from prelabel_local.kubelet import BackendKubelet
from prelabel_local.label_studio_server import LabelStudio
from prelabel_local.operator_process import OperatorProcess
from prelabel_operator.status import condition
from tests.conftest import SEED_CONFIG, scenes, wait_for

pytestmark = [pytest.mark.cluster, pytest.mark.labelstudio]


@pytest.fixture(scope="module")
def env(cluster, tmp_path_factory) -> Iterator:  # noqa: ANN001
    """Its own Label Studio: rotating the admin's one personal access token would break the session's."""
    work = tmp_path_factory.mktemp("rotation")
    label_studio = LabelStudio(workdir=work / "label-studio", access_token_seconds=30).start()
    service_account = chart.install(cluster)
    kubelet = BackendKubelet(cluster.kubeconfig, work / "pods").start()
    operator = OperatorProcess(service_account, work / "operator.log").start()
    yield cluster, label_studio, operator
    operator.stop()
    kubelet.stop()
    label_studio.stop()


def apply_secret(cluster, ns: str, api_key: str) -> None:  # noqa: ANN001
    manifest = cluster.kubectl("create", "secret", "generic", "ls-key", "-n", ns, f"--from-literal=api-key={api_key}",
                               "--dry-run=client", "-o", "yaml").stdout
    cluster.kubectl("apply", "-f", "-", input=manifest)


def test_a_rotated_token_is_unauthorized_until_the_secret_holds_the_new_one(env) -> None:  # noqa: ANN001
    cluster, label_studio, operator = env
    admin = Client(base_url=label_studio.url, api_key=label_studio.token)
    token = str(admin.tokens.create().token)
    ns = f"rot-{uuid.uuid4().hex[:6]}"
    chart.restricted_namespace(cluster, ns)
    apply_secret(cluster, ns, token)
    project = admin.projects.create(title=f"rotation {ns}", label_config=SEED_CONFIG)
    images = iter(scenes(801, 5))
    label_studio.upload_images(project.id, {f"first-{i}.png": synthetic.encode_png(next(images).image) for i in range(3)})
    resource = {"apiVersion": "prelabel.dev/v1alpha1", "kind": "MLBackend", "metadata": {"name": "shapes", "namespace": ns},
                "spec": {"labelStudio": {"url": label_studio.url, "apiKeySecretRef": {"name": "ls-key"}, "projects": [{"id": project.id}]},
                         "image": "prelabel-backend:test", "prelabel": {"batchSize": 2, "pollSeconds": 3}}}
    cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump(resource))

    def status() -> dict:
        return cluster.status("mlb", ns, "shapes")

    def prelabeled(summary: str) -> bool:
        return (p := status().get("prelabel") or {}).get("phase") == "Complete" and p.get("summary") == summary

    def why() -> str:
        return f"status: {status()}\noperator log:\n{operator.log.read_text(errors='replace')[-3000:]}"

    wait_for("3/3 Complete with the personal access token", lambda: prelabeled("3/3"), 300, why)
    assert condition(status(), "Ready")["status"] == "True"

    # The token's user rotates it in Label Studio: the old one is blacklisted at once.
    rotated = str(Client(base_url=label_studio.url, api_key=token).tokens.rotate(refresh=token).refresh)
    late = label_studio.upload_images(project.id, {f"late-{i}.png": synthetic.encode_png(next(images).image) for i in range(2)})
    late_ids = {late[f"late-{i}.png"] for i in range(2)}
    registered = wait_for("Registered: Unauthorized", lambda: (c := condition(status(), "Registered")).get("reason") == "Unauthorized" and c,
                          150, why)
    assert registered["status"] == "False" and "rotated or revoked" in registered["message"] and "blacklisted" in registered["message"]
    assert condition(status(), "Ready")["reason"] == "Unauthorized"
    wait_for("pre-labeling says the key is refused", lambda: "refused the API key" in (status().get("prelabel") or {}).get("message", ""), 60, why)
    assert not [p for p in admin.predictions.list(project=project.id) if p.task in late_ids]  # nothing stored for them, empty or not

    # The Secret gets the new token: the pods roll, the backend is registered again, the run completes.
    def secrets_hash() -> str:
        return cluster.kubectl("get", "deployment", "shapes-backend", "-n", ns, "-o",
                               "jsonpath={.spec.template.metadata.annotations.prelabel\\.dev/secrets-hash}").stdout
    before = secrets_hash()
    apply_secret(cluster, ns, rotated)
    wait_for("a rollout for the new token", lambda: secrets_hash() not in ("", before), 60, why)
    wait_for("5/5 Complete with the new token", lambda: prelabeled("5/5"), 300, why)
    wait_for("Ready again", lambda: condition(status(), "Ready")["status"] == "True", 120, why)
    assert condition(status(), "Registered")["reason"] == "Registered"
    version = status()["prelabel"]["modelVersion"]
    predictions = list(admin.predictions.list(project=project.id))
    assert collections.Counter(p.task for p in predictions if p.model_version == version) == collections.Counter(
        {int(t.id): 1 for t in admin.tasks.list(project=project.id)})
    assert all(p.result for p in predictions if p.task in late_ids), "a late task's prediction is empty"
    assert status()["prelabel"]["failed"] == 0
