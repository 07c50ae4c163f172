"""The drift-check budget (prelabel_operator.drift): periods, phases, the token bucket, the shared
schedule, and the status patch that writes only what changed."""

from __future__ import annotations

import itertools
import uuid

import pytest

from prelabel_operator import drift


def test_period_is_the_budget_share_never_below_the_interval() -> None:
    assert drift.period(cost=10, rate=1.0, interval=30) == 30  # few resources: the interval
    assert drift.period(cost=500, rate=1.0, interval=30) == 500  # many: each gets its share of the budget
    assert drift.period(cost=500, rate=0.5, interval=30) == 1000
    with pytest.raises(ValueError, match="rate must be > 0"):
        drift.period(cost=1, rate=0, interval=30)


def test_phases_are_stable_and_spread_over_the_period() -> None:
    uids = [str(uuid.UUID(int=i)) for i in range(1000)]
    phases = [drift.phase(u, 100.0) for u in uids]
    assert phases == [drift.phase(u, 100.0) for u in uids]  # the same after a restart
    assert all(0 <= p < 100 for p in phases)
    per_decile = [sum(1 for p in phases if d * 10 <= p < (d + 1) * 10) for d in range(10)]
    assert min(per_decile) > 60 and max(per_decile) < 140, per_decile  # ~100 each: no bunching


def test_a_resource_is_due_once_per_period_at_its_slot() -> None:
    uid, every = "a-uid", 100.0
    slot = drift.phase(uid, every) + 1000 * every
    assert drift.due(uid, None, slot - 1, every)  # never checked: due now
    assert not drift.due(uid, slot - 1, slot - 0.5, every)  # checked after its previous slot
    assert drift.due(uid, slot - 1, slot, every)  # its slot came
    assert not drift.due(uid, slot, slot + every - 0.001, every)
    assert drift.due(uid, slot, slot + every, every)
    assert drift.repair_bound(every, 30) == 160


def test_bucket_holds_the_rate_and_lets_a_costly_take_pass_into_debt() -> None:
    bucket = drift.Bucket(rate=1.0, burst=3)
    assert [bucket.take(0.0, 1) for _ in range(4)] == [True, True, True, False]  # starts full: the burst
    assert not bucket.take(0.5, 1)
    assert bucket.take(1.0, 1)
    taken = sum(bucket.take(1.0 + t / 10, 1) for t in range(1, 1001))  # 100 s more, asking 10 times a second
    assert taken == 100
    big = drift.Bucket(rate=1.0, burst=3)
    assert big.take(0.0, 30)  # larger than the burst: passes...
    assert not big.take(27.5, 1)  # ...and is paid back at the rate before anything else passes
    assert big.take(28.0, 1)


def test_schedule_checks_each_resource_once_per_period_within_the_rate() -> None:
    schedule = drift.Schedule(rate=1.0, interval=30, full_every=5)
    uids = [f"uid-{i}" for i in range(200)]
    for u in uids:
        schedule.track(u, projects=1, now=0.0)
    every = schedule.period()
    assert every == pytest.approx(200 * (1 + 2 / 5) / 0.8)  # 350 s: light checks cost 1, every 5th full one 3; 80% of the rate
    claims: list[tuple[float, str, str]] = []
    now, tick = 0.0, 30.0
    while now < 10 * every:  # each resource's timer ticks every 30 s, at an offset of its own
        now += 1.0
        for i, u in enumerate(uids):
            if (now + i) % tick == 0 and (kind := schedule.claim(u, now)):
                claims.append((now, u, kind))
    requests = sum(3 if kind == "full" else 1 for _, _, kind in claims)
    assert requests / now <= 1.0 + 3 / now  # never above the rate (the burst aside)
    for u in uids:  # every resource was checked about once a period, never left longer than the bound
        times = [t for t, who, _ in claims if who == u]
        gaps = [b - a for a, b in zip([0.0, *times], times, strict=False)]
        assert len(times) >= 8 and max(gaps) <= drift.repair_bound(every, tick), (u, gaps)
    kinds = [k for _, _, k in claims]
    assert kinds.count("full") == pytest.approx(len(kinds) / 5, rel=0.1)


def test_timers_ticking_together_are_all_checked_every_period() -> None:
    """MLBackends applied at once tick together; a tick the budget refuses passes at the next one."""
    schedule = drift.Schedule(rate=0.8, interval=30, full_every=10)
    uids = [f"uid-{i}" for i in range(10)]
    for u in uids:
        schedule.track(u, projects=1, now=0.0)
    assert schedule.period() == 30
    checked: dict[str, list[float]] = {u: [] for u in uids}
    for tick in range(1, 41):
        for i, u in enumerate(uids):
            now = tick * 30.1 + i * 0.01
            if schedule.claim(u, now):
                checked[u].append(now)
    for u, times in checked.items():
        gaps = [b - a for a, b in itertools.pairwise(times)]
        assert len(times) >= 19 and max(gaps) <= drift.repair_bound(30, 30), (u, gaps)
    total = sum(len(t) for t in checked.values())
    assert total <= 0.8 * 40 * 30.1 + schedule.bucket.burst  # within the rate: 10 per 30 s is 0.33/s


def test_schedule_forgets_deleted_resources() -> None:
    schedule = drift.Schedule(rate=1.0, interval=30)
    schedule.track("a", 100, 0.0)
    assert schedule.period() > 100
    schedule.forget("a")
    assert schedule.period() == 30
    assert schedule.claim("a", 1.0) in ("light", "full")  # unknown again: due at once


def test_a_resource_not_ready_is_checked_again_at_the_next_tick_within_the_budget() -> None:
    # 500 single-project resources at 0.8 requests/s: a period of ~15 min each.
    schedule = drift.Schedule(rate=0.8, interval=30)
    uids = [str(uuid.UUID(int=i)) for i in range(500)]
    for uid in uids:
        schedule.track(uid, 1, 0.0)
    assert schedule.period() > 600
    uid = uids[0]
    now = drift.phase(uid, schedule.period()) + schedule.period()  # its slot
    assert schedule.claim(uid, now) is not None
    assert schedule.claim(uid, now + 30) is None  # checked: not due for a whole period
    schedule.recheck(uid)  # that check found it not Ready (a rollout after a key rotation)
    assert schedule.claim(uid, now + 30) is not None  # the next tick checks it again
    assert schedule.claim(uid, now + 60) is None  # Ready then: back to its period
    # Within the budget: with the bucket spent, a recheck waits for room (or its next tick).
    other = uids[1]
    schedule.recheck(other)
    while schedule.bucket.take(now + 60, 1):
        pass
    assert schedule.claim(other, now + 60) is None
    assert schedule.claim(other, now + 90) is not None  # refused once, it passes at the next tick


def test_status_patch_holds_only_what_changed() -> None:
    old = {"conditions": [{"type": "Ready", "status": "True"}], "url": "http://a", "prelabel": {"phase": "Complete"}}
    assert drift.changed(old, {"conditions": [{"type": "Ready", "status": "True"}], "url": "http://a"}) == {}
    assert drift.changed(old, {"url": "http://b"}) == {"url": "http://b"}
    assert drift.changed(None, {"url": "http://a"}) == {"url": "http://a"}
