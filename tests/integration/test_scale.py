"""Scale, small N (bench/scale_bench.py runs 10, 100, 500): 10 MLBackends applied at once, each with
its own Label Studio project, served by one process of stand-in backends. All become Ready,
registered exactly once each; in the quiet state the operator's drift checks keep Label Studio's
request rate within their budget and write nothing to the API server; a registration deleted in
Label Studio is back within the bound the budget states (prelabel_operator.drift)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import pytest

from prelabel_local import chart
from prelabel_local.operator_process import OperatorProcess
from prelabel_operator import drift
from prelabel_operator.registration import ours
from prelabel_operator.status import condition
from tests.conftest import wait_for
from tests.integration.scale import NAMESPACE, Scale, api_requests, ls_requests

pytestmark = [pytest.mark.cluster, pytest.mark.labelstudio]

N, RESYNC, RATE = 10, 5.0, 0.8


@pytest.fixture(scope="module")
def scale(cluster, label_studio, tmp_path_factory) -> Iterator[Scale]:  # noqa: ANN001
    stack = Scale(cluster, label_studio, tmp_path_factory.mktemp("scale"), resync_seconds=RESYNC, drift_rate=RATE).start()
    yield stack
    stack.stop()
    print("operator log tail:\n", (stack.workdir / "operator.log").read_text()[-3000:])


def operator(scale: Scale) -> OperatorProcess:
    assert scale.operator is not None
    return scale.operator


def registration_creates(scale: Scale) -> float:
    return operator(scale).metric('prelabel_operator_registration_changes_total{action="create"}')


def test_ten_backends_ready_once_each_quiet_and_repaired(scale: Scale, ls_client) -> None:  # noqa: ANN001
    prefix = f"scale-{uuid.uuid4().hex[:6]}"
    projects = scale.projects(N, prefix)
    scale.apply(projects, "b")
    scale.wait_ready(N, timeout=300)
    uids = {r["status"]["projects"][0]["id"]: r["metadata"]["uid"] for r in scale.resources()}
    for project in projects:
        assert len(ours(scale_registrations(ls_client, project), uids[project])) == 1, project
    assert registration_creates(scale) == N

    # The quiet state: the first resync ticks have passed; then count over a minute.
    time.sleep(2 * RESYNC)
    log = scale.label_studio.log
    _, offset = ls_requests(log)
    start = time.time()
    time.sleep(60)
    requests_made, _ = ls_requests(log, offset)
    end = time.time()
    rate = requests_made / (end - start)
    budget = drift.Schedule(rate=RATE, interval=RESYNC)
    for uid in uids.values():
        budget.track(uid, 1, 0.0)
    # Drift checks run (each resource is listed about every period), and within the budget (plus its burst).
    assert N * 60 / budget.period() / 2 <= requests_made <= RATE * (end - start) + budget.bucket.burst, (requests_made, rate)
    calls = api_requests(scale.cluster, chart.SERVICE_ACCOUNT_USER, start, end)
    assert not any(k.startswith(("patch mlbackends", "create events")) for k in calls), calls  # nothing changed: nothing written

    # Drift: a registration deleted in Label Studio is back within the stated bound.
    project = projects[0]
    (registration_id,) = ours(scale_registrations(ls_client, project), uids[project])
    ls_client.ml.delete(registration_id)
    deleted = time.monotonic()
    bound = drift.repair_bound(budget.period(), RESYNC)
    restored = wait_for("re-registration", lambda: ours(scale_registrations(ls_client, project), uids[project]), bound + 30)
    took = time.monotonic() - deleted
    print(f"LS requests in the quiet state: {requests_made} in {end - start:.0f}s ({rate:.2f}/s, budget {RATE}/s); "
          f"API calls: {calls}; drift repaired in {took:.0f}s (bound {bound:.0f}s)")
    assert len(restored) == 1 and restored[0] != registration_id
    # Counted once the pass that made it ends (after its second look and the webhooks): one create more, no other.
    wait_for("the re-registration counted", lambda: registration_creates(scale) == N + 1, 30)
    wait_for("Ready again", lambda: all(r["status"]["projects"][0].get("mlBackendId") == restored[0]
                                        for r in scale.resources() if r["metadata"]["uid"] == uids[project]), 30)


def scale_registrations(ls_client, project: int) -> list:  # noqa: ANN001
    from prelabel_operator.registration import Registration

    return [Registration(id=int(m.id), url=str(m.url), title=str(m.title or ""), description=str(m.description or ""))
            for m in ls_client.ml.list(project=project)]


def test_a_backend_deployment_wakes_its_mlbackend_both_ways(scale: Scale) -> None:
    """With the resync timer 10 minutes away and no retry pending (the operator waits for a Deployment
    without one), only the backend Deployment's watch events can move the MLBackend: Ready when its
    Deployment becomes Available, no longer Available when the Deployment stops being so. The kwok
    nodes are cordoned to hold the backend pod Pending."""
    scale.restart_operator(resync_seconds=600)
    wakeups = "prelabel_operator_deployment_wakeups_total"
    wait_for("the restarted operator's metrics", lambda: _scraped(scale), 60)
    cluster, name = scale.cluster, "late-0"

    def available() -> dict:  # type: ignore[type-arg]
        return condition(cluster.status("mlb", NAMESPACE, name), "Available")

    def ready() -> bool:
        return condition(cluster.status("mlb", NAMESPACE, name), "Ready").get("status") == "True"

    cluster.kubectl("cordon", "-l", "type=kwok")
    try:
        scale.apply(scale.projects(1, f"late-{uuid.uuid4().hex[:6]}"), "late")
        wait_for("not Available while no node takes its pod", lambda: available().get("status") == "False", 60)
        # the diagnosis, or the Deployment's own reason when the scheduler had not marked the pod yet
        assert available()["reason"] in ("Unschedulable", "DeploymentNotAvailable"), available()
        time.sleep(2)  # the operator's handling of the change is over: nothing is pending but the watch
        assert operator(scale).metric(wakeups) == 0
        cluster.kubectl("uncordon", "-l", "type=kwok")
        wait_for("Ready, woken by the Deployment becoming Available", ready, 60)
        assert operator(scale).metric(wakeups) == 1

        cluster.kubectl("cordon", "-l", "type=kwok")
        cluster.kubectl("delete", "pod", "-n", NAMESPACE, "-l", f"app.kubernetes.io/instance={name}", "--wait=false")
        wait_for("not Available, from the Deployment's event", lambda: available().get("status") == "False", 60)
        cluster.kubectl("uncordon", "-l", "type=kwok")
        wait_for("Ready again", ready, 60)
        assert operator(scale).metric(wakeups) == 3
    finally:
        cluster.kubectl("uncordon", "-l", "type=kwok", check=False)
        cluster.kubectl("delete", "mlb", name, "-n", NAMESPACE, "--timeout=60s", check=False)
        scale.restart_operator(resync_seconds=RESYNC)


def _scraped(scale: Scale) -> bool:
    try:
        operator(scale).metrics()
        return True
    except OSError:  # not listening yet
        return False
