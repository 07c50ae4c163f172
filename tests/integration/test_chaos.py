"""Chaos with a small N (tests/integration/chaos.py; the full run is bench/chaos_bench.py): MLBackends
created, updated, given a rotated key and deleted while the operator is SIGKILLed at random moments.
Every phase converges with exactly one registration and one webhook per project, and the deletion
leaves no registration, webhook, Deployment, Service or stuck finalizer. The seed is printed (and
can be set with PRELABEL_CHAOS_SEED) so a failure replays."""

from __future__ import annotations

import os
import random
import time
import uuid
from collections.abc import Iterator

import pytest

from prelabel_local import chart
from prelabel_local.fake_backends import FakeBackends
from prelabel_local.operator_process import OperatorProcess
from tests.conftest import SEED_CONFIG, wait_for
from tests.integration.chaos import Chaos

pytestmark = [pytest.mark.cluster, pytest.mark.labelstudio]


@pytest.fixture(scope="module")
def env(cluster, label_studio, tmp_path_factory) -> Iterator:  # noqa: ANN001
    service_account = chart.install(cluster)
    work = tmp_path_factory.mktemp("chaos")
    backends = FakeBackends(cluster.kubeconfig, work / "fake-backends.log").start()
    yield cluster, service_account
    backends.stop()


def test_operator_killed_at_random_converges_with_nothing_duplicated_or_left(env, label_studio, ls_client, personal_access_token,  # noqa: ANN001
                                                                             tmp_path) -> None:  # noqa: ANN001
    cluster, service_account = env
    seed = int(os.environ.get("PRELABEL_CHAOS_SEED") or random.randrange(10**6))
    chaos = Chaos(cluster, service_account, label_studio.url, ls_client, (label_studio.token, personal_access_token), tmp_path,
                  f"chaos-{uuid.uuid4().hex[:6]}", backends=8, kills=5, seed=seed, window=6, timeout=120)
    try:
        outcome = chaos.run()
    finally:
        chaos.stop()
    print(f"seed {seed}: kills {outcome.kills}; converged after the last kill of each phase {outcome.converged_after}")
    assert outcome.problems == {}, f"seed {seed}: {outcome.problems}\n{(tmp_path / 'operator.log').read_text()[-4000:]}"
    assert len(outcome.kills) == 5 and chaos.starts == 6
    assert outcome.counts["rotate"]["registrations"] == 8 and outcome.counts["rotate"]["duplicate_registrations"] == 0
    assert outcome.counts["delete"] == {"mlbackends": 0, "registrations": 0, "webhooks": 0, "deployments": 0, "services": 0}


def test_deletions_while_the_operator_is_down_leave_nothing(env, label_studio, ls_client, tmp_path) -> None:  # noqa: ANN001
    """The windows a random kill rarely hits, made on purpose. Two MLBackends are deleted while the
    operator is down; for one of them the operator had died between deleting its registration and
    deleting the webhook Label Studio made for it (Label Studio leaves it behind, and it would POST
    every annotation to an address nobody serves). Started again, the operator leaves no
    registration, webhook, Deployment or Service, and no finalizer."""
    cluster, service_account = env
    chaos = Chaos(cluster, service_account, label_studio.url, ls_client, (label_studio.token, label_studio.token), tmp_path,
                  f"down-{uuid.uuid4().hex[:6]}", backends=2, kills=0, seed=0, window=0, timeout=120)
    cluster.kubectl("create", "namespace", chaos.ns)
    chaos.apply_secret(label_studio.token)
    for name in ("chaos-000", "chaos-001"):
        chaos.projects[name] = ls_client.projects.create(title=f"down {chaos.ns} {name}", label_config=SEED_CONFIG).id
    operator = OperatorProcess(service_account, tmp_path / "operator.log").start()
    try:
        chaos.apply_backends(title="prelabel", threshold=0.5)
        wait_for("both registered", lambda: not chaos.check_registered("prelabel", label_studio.token)[0], 120)
        operator.kill()
        interrupted = chaos.projects["chaos-000"]
        for registration in ls_client.ml.list(project=interrupted):
            ls_client.ml.delete(registration.id)  # what the killed operator did last
        assert [h.url for h in ls_client.webhooks.list(project=str(interrupted))], "Label Studio kept the webhook"
        cluster.kubectl("delete", "mlbackends", "--all", "-n", chaos.ns, "--wait=false")
        operator = OperatorProcess(service_account, tmp_path / "operator.log").start()
        deadline = time.monotonic() + 120
        while (problems := chaos.check_gone()[0]) and time.monotonic() < deadline:
            time.sleep(1)
        assert not problems, problems
    finally:
        operator.stop()
