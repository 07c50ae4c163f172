"""When each resource's drift check runs: a budget of Label Studio requests shared by all resources.

A drift check lists the registrations of each declared project: one Label Studio request per
project, on which Label Studio itself calls the backend's /health and /setup. Checking every
resource every 30 s made the quiet state loud at scale (500 resources: ~17 lists a second, ~50
requests with the project and webhook reads). Instead, with `rate` Label Studio requests per second
for all drift checks together and `cost` the requests of all known resources' checks (their
projects, summed), each resource is checked once per

    period = max(interval, cost / rate) seconds,

at a phase within the period fixed by its UID, so the checks of many resources spread evenly over
the period instead of bunching at their timers' ticks. A token bucket (`Bucket`) caps the total
even where phases collide or resources come and go. A drift (a registration deleted or edited in
Label Studio) is therefore repaired within period + 2 ticks, a tick being the timer's interval
(`repair_bound`). A resource a check finds not Ready is due again at the next tick (`recheck`),
within the same budget.

Pure: the caller passes the clock (time.monotonic()) and keeps the state.
"""

from __future__ import annotations

import hashlib
import math
import threading
from dataclasses import dataclass


def period(cost: float, rate: float, interval: float) -> float:
    """Seconds between two checks of one resource: `cost` Label Studio requests (all resources'
    checks, summed) spread at `rate` requests/s, never more often than every `interval` s."""
    if rate <= 0:
        raise ValueError(f"the drift-check rate must be > 0 requests/s, not {rate}")
    return max(interval, cost / rate)


def phase(uid: str, every: float) -> float:
    """Where in each period (0 <= phase < every, seconds) the resource's check falls: from its UID,
    so it is stable across the operator's restarts and spread uniformly over many resources."""
    fraction = int.from_bytes(hashlib.sha256(uid.encode()).digest()[:8], "big") / 2**64
    return fraction * every


def last_slot(uid: str, now: float, every: float) -> float:
    """The latest time <= now at which this resource's check was due."""
    offset = phase(uid, every)
    return offset + math.floor((now - offset) / every) * every


def due(uid: str, last_checked: float | None, now: float, every: float) -> bool:
    """Whether the resource's check is due: its last check (None: never) came before its latest slot."""
    return last_checked is None or last_checked < last_slot(uid, now, every)


def repair_bound(every: float, tick: float) -> float:
    """Seconds within which a drift is found (and then repaired, in the same pass): a slot comes
    every `every` s, the resource's timer, ticking every `tick` s, sees it within a tick, and, should
    the budget be spent at that moment (colliding phases), at the next (tests/unit/operator/test_drift.py)."""
    return every + 2 * tick


@dataclass
class Bucket:
    """A token bucket: `rate` tokens a second, at most `burst` saved up; starts full. A take passes
    while the bucket holds a whole token (or `cost`, if less) and may leave it in debt, paid back at
    `rate` before the next passes: a check costing several requests (a full one, many projects) is
    never starved by cheaper ones that keep the bucket below its cost, and the mean rate still holds."""

    rate: float
    burst: float
    tokens: float | None = None
    updated: float | None = None

    def take(self, now: float, cost: float, force: bool = False) -> bool:
        """Takes `cost` tokens at `now` (True), or none while the bucket is below one token (False);
        `force`: takes them whatever the bucket holds."""
        if self.tokens is None or self.updated is None:
            self.tokens, self.updated = self.burst, now
        self.tokens = min(self.burst, self.tokens + max(0.0, now - self.updated) * self.rate)
        self.updated = max(self.updated, now)
        if not force and self.tokens + 1e-9 < min(cost, 1.0):
            return False
        self.tokens -= cost
        return True


class Schedule:
    """The drift checks of every resource this operator reconciles: which are due, within the shared
    budget. Thread-safe (kopf runs sync handlers in a pool); no I/O, the caller passes the clock.

    rate: Label Studio requests/s for all drift checks together; interval: the shortest period (s);
    full_every: every n-th check of a resource is a full one (`FULL_COST` requests a project: the
    project, its registrations and webhooks read), the others read only the registrations (1)."""

    FULL_COST = 3
    HEADROOM = 0.8  # periods planned at 80% of the rate: at 100%, phases that collide push checks into the next tick, and some wait many

    def __init__(self, rate: float, interval: float, full_every: int = 10, burst: float | None = None) -> None:
        self.rate, self.interval, self.full_every = rate, interval, max(1, full_every)
        self.bucket = Bucket(rate, burst if burst is not None else max(self.FULL_COST, 5 * rate))
        self.costs: dict[str, int] = {}  # uid -> projects
        self.checked: dict[str, float] = {}  # uid -> last check (the caller's clock)
        self.checks: dict[str, int] = {}  # uid -> checks made
        self.refused: set[str] = set()  # due, refused by the budget at their last tick
        self._lock = threading.Lock()

    def mean_cost(self, projects: int) -> float:
        """Label Studio requests of one resource's check, averaged over light and full checks."""
        return projects * (1 + (self.FULL_COST - 1) / self.full_every)

    def period(self) -> float:
        with self._lock:
            return period(sum(self.mean_cost(c) for c in self.costs.values()), self.rate * self.HEADROOM, self.interval)

    def track(self, uid: str, projects: int, now: float) -> None:
        """A full reconcile of `uid` just ran (a change, a resume, or a check that found drift)."""
        with self._lock:
            self.costs[uid] = max(1, projects)
            self.checked[uid] = now

    def recheck(self, uid: str) -> None:
        """`uid` is not Ready (a rollout after a key rotation, a Deployment not yet Available, Label
        Studio down): due again at the timer's next tick, not a whole period later (up to ~16 min
        at 500 resources), still within the budget."""
        with self._lock:
            self.checked.pop(uid, None)

    def forget(self, uid: str) -> None:
        with self._lock:
            for table in (self.costs, self.checked, self.checks):
                table.pop(uid, None)
            self.refused.discard(uid)

    def claim(self, uid: str, now: float) -> str | None:
        """"light" or "full" when `uid`'s check is due and the budget has room for it, or when the
        budget refused it at the tick before (then recorded as done), else None: the timer tries
        again at its next tick, `interval` s later."""
        every = self.period()
        with self._lock:
            if not due(uid, self.checked.get(uid), now, every):
                return None
            projects = self.costs.get(uid, 1)
            count = self.checks.get(uid, 0) + 1
            full = count % self.full_every == 0
            # Refused at its previous tick: it passes now, in debt, so the bound holds; the headroom
            # pays the debt back.
            if not self.bucket.take(now, projects * (self.FULL_COST if full else 1), force=uid in self.refused):
                self.refused.add(uid)
                return None
            self.refused.discard(uid)
            self.checks[uid], self.checked[uid] = count, now
            return "full" if full else "light"


def changed(old: dict[str, object] | None, new: dict[str, object]) -> dict[str, object]:
    """The keys of a status body `new` whose values differ from `old` (the status as it is): what a
    merge patch must send. Empty when nothing changed, so a quiet resource costs the API server no
    write."""
    old = old or {}
    return {key: value for key, value in new.items() if old.get(key) != value}
