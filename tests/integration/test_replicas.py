"""Two operator replicas, as the chart runs them with peering.enabled: kopf's peering lets only the
replica of highest priority reconcile; the other pauses and touches no MLBackend. When the active
one is killed (SIGKILL: no goodbye in the peering object), the other takes over once the dead one's
record expires (its lifetime, 30 s: startup.configure), resumes within TAKEOVER_BOUND and reconciles, with
no duplicate registration in Label Studio. Both run with the chart's ServiceAccount: its RBAC for
the peering object is exercised too."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator

import pytest
import yaml

from prelabel_local import chart
from prelabel_local.kubelet import BackendKubelet
from prelabel_local.operator_process import OperatorProcess
from prelabel_operator.status import condition
from tests.conftest import SEED_CONFIG, wait_for

pytestmark = [pytest.mark.cluster, pytest.mark.labelstudio]

# The peer's record lifetime (30 s) and the standby's re-check at that deadline, with room for a
# shared machine; the reconcile after it (a Deployment made Available, a registration) gets what
# a, b and c got.
TAKEOVER_BOUND = 90
READY_BOUND = 180


@pytest.fixture(scope="module")
def env(cluster, label_studio, tmp_path_factory) -> Iterator:  # noqa: ANN001
    service_account = chart.install(cluster, {"replicaCount": 2, "peering": {"enabled": True}})
    work = tmp_path_factory.mktemp("replicas")
    kubelet = BackendKubelet(cluster.kubeconfig, work / "pods").start()
    yield cluster, service_account, work
    kubelet.stop()


def replica(service_account, work, name: str, priority: int) -> OperatorProcess:  # noqa: ANN001
    env = {"PRELABEL_PEERING": chart.RELEASE, "PRELABEL_PEERING_PRIORITY": str(priority)}  # PRELABEL_PEERING: as the chart sets it
    return OperatorProcess(service_account, work / f"{name}.log", env=env).start()


def test_one_replica_works_and_the_other_takes_over(env, label_studio, ls_client) -> None:  # noqa: ANN001
    cluster, service_account, work = env
    ns = f"rep-{uuid.uuid4().hex[:6]}"
    chart.restricted_namespace(cluster, ns)
    cluster.kubectl("create", "secret", "generic", "ls-key", "-n", ns, f"--from-literal=api-key={label_studio.token}")
    projects: dict[str, int] = {}

    def create(name: str) -> None:
        project = ls_client.projects.create(title=f"replicas {ns} {name}", label_config=SEED_CONFIG)
        projects[name] = project.id
        resource = {"apiVersion": "prelabel.dev/v1alpha1", "kind": "MLBackend", "metadata": {"name": name, "namespace": ns},
                    "spec": {"labelStudio": {"url": label_studio.url, "apiKeySecretRef": {"name": "ls-key"}, "projects": [{"id": project.id}]},
                             "image": "prelabel-backend:test"}}
        cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump(resource))

    def ready(name: str) -> bool:
        return condition(cluster.status("mlb", ns, name), "Ready").get("status") == "True"

    def peers() -> list[int]:
        """The priorities recorded in the peering object (the operator creates it at startup)."""
        out = cluster.kubectl("get", "clusterkopfpeerings.kopf.dev", chart.RELEASE, "-o", "json", check=False)
        return sorted(p["priority"] for p in (json.loads(out.stdout).get("status") or {}).values()) if out.returncode == 0 else []

    def resumed(process: OperatorProcess) -> bool:  # kopf starts paused and logs only the resumption
        return "Resuming operations" in process.log.read_text(errors="replace")

    def why(name: str, process: OperatorProcess) -> str:
        ready_condition = condition(cluster.status("mlb", ns, name), "Ready")
        return f"{name}'s Ready: {ready_condition}; peers {peers()}; {process.log.name} ends:\n{process.log.read_text(errors='replace')[-3000:]}"

    active = replica(service_account, work, "active", 200)
    wait_for("the active replica working", lambda: peers() == [200] and resumed(active), 60)
    standby = replica(service_account, work, "standby", 100)
    try:
        wait_for("both replicas in the peering object", lambda: peers() == [100, 200], 60)
        for name in ("a", "b", "c"):
            create(name)
        for name in ("a", "b", "c"):
            wait_for(f"{name} Ready", lambda name=name: ready(name), READY_BOUND, why=lambda name=name: why(name, active))
        time.sleep(10)  # several resyncs (5 s): the standby would have logged any handling by now
        assert not resumed(standby)
        assert f"[{ns}/" not in standby.log.read_text(errors="replace"), "the paused replica handled an MLBackend"
        assert f"[{ns}/a]" in active.log.read_text(errors="replace")

        active.kill()
        killed = time.monotonic()
        create("d")
        # Two waits, so a failure says which went wrong: the takeover, or the reconcile after it.
        wait_for(f"the standby resuming within {TAKEOVER_BOUND}s of the active replica's death", lambda: resumed(standby), TAKEOVER_BOUND,
                 why=lambda: why("d", standby))
        took_over = time.monotonic() - killed
        wait_for("d Ready after the takeover", lambda: ready("d"), READY_BOUND, why=lambda: why("d", standby))
        print(f"the standby took over {took_over:.1f}s after SIGKILL of the active replica; d Ready {time.monotonic() - killed:.1f}s after it")
        assert f"[{ns}/d]" in standby.log.read_text(errors="replace")
        time.sleep(10)  # the resumed replica's resume handlers and resyncs for a, b, c
        counts = {name: len(list(ls_client.ml.list(project=project))) for name, project in projects.items()}
        assert counts == {"a": 1, "b": 1, "c": 1, "d": 1}, counts
        for name in projects:
            cluster.kubectl("delete", "mlb", name, "-n", ns, "--timeout=120s")
        assert all(list(ls_client.ml.list(project=project)) == [] for project in projects.values())
    finally:
        active.stop()
        standby.stop()
