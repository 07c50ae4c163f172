"""Chaos with a small N (tests/integration/chaos.py; the full run is bench/chaos_bench.py): MLBackends
created, updated, given a rotated key and deleted while the operator is SIGKILLed at random moments.
Every phase converges with exactly one registration and one webhook per project, and the deletion
leaves no registration, webhook, Deployment, Service or stuck finalizer. The seed is printed (and
can be set with PRELABEL_CHAOS_SEED) so a failure replays."""

from __future__ import annotations

import os
import random
import uuid
from collections.abc import Iterator

import pytest

from prelabel_local import chart
from prelabel_local.fake_backends import FakeBackends
from tests.integration.chaos import Chaos

pytestmark = [pytest.mark.cluster, pytest.mark.labelstudio]


@pytest.fixture(scope="module")
def env(cluster, label_studio) -> Iterator:  # noqa: ANN001
    service_account = chart.install(cluster)
    backends = FakeBackends(cluster.kubeconfig).start()
    yield cluster, service_account
    backends.stop()
    assert not backends.errors, backends.errors[-5:]


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
