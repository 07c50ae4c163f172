"""What the operator remembers about each MLBackend between handler calls, in one place with one
way to forget a resource (`Memory.forget`). Lost on restart by design: everything here is found
again from Kubernetes and Label Studio by the next full reconcile."""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from .drift import Schedule
from .status import ProjectStatus

DELETED_KEPT = 10_000  # UIDs are never reused; a bound keeps a long-lived operator's memory flat


@dataclass
class Remembered:
    """What the last full reconcile of a resource found in Label Studio, for the light checks that
    follow: valid while the resource's generation, Secrets digest, backend URL, served store version
    and whether the rollout finished (the fingerprint) stay the same."""

    fingerprint: tuple[int, str, str, str | None, bool]
    model_version: str | None = None
    projects: dict[Any, ProjectStatus] = field(default_factory=dict)  # spec.ProjectRef -> its status


class Memory:
    """Per resource UID: its last findings, its reconcile lock, whether it waits for its Deployment,
    its drift-check schedule and when the training loop last counted its annotations. Thread-safe (kopf runs sync handlers in a pool)."""

    def __init__(self, drift: Schedule) -> None:
        self.drift = drift
        self.remembered: dict[str, Remembered] = {}
        # Resources whose last reconcile found all in order but their Deployment not yet Available:
        # the Deployment's watch event wakes them instead of a retry backoff.
        self.waiting: set[str] = set()
        self.training_checked: dict[str, float] = {}  # when the training loop last counted annotations (monotonic)
        self._locks: dict[str, threading.RLock] = {}
        self._guard = threading.Lock()
        # UIDs deregistered by this process: a reconcile that started from an older body (a resync
        # tick, a Deployment's event) and waited for the lock must not register them again.
        self._deleted: OrderedDict[str, None] = OrderedDict()

    def lock(self, uid: str) -> threading.RLock:
        """One reconcile at a time per resource: kopf runs a resource's timer beside its change
        handlers, and two passes could both create a registration. Reentrant: a Deployment's event
        holds it while it decides, then reconciles."""
        with self._guard:
            return self._locks.setdefault(uid, threading.RLock())

    def forget(self, uid: str) -> None:
        """Everything about a deleted resource: its findings, lock, wait, drift schedule and training
        check; it is remembered as deleted (`deleted`) from now on."""
        with self._guard:
            self._deleted[uid] = None
            while len(self._deleted) > DELETED_KEPT:
                self._deleted.popitem(last=False)
        self.drift.forget(uid)
        self.remembered.pop(uid, None)
        self.waiting.discard(uid)
        self.training_checked.pop(uid, None)
        with self._guard:
            self._locks.pop(uid, None)

    def deleted(self, uid: str) -> bool:
        """Whether this process has deregistered the resource (one of the last DELETED_KEPT)."""
        with self._guard:
            return uid in self._deleted
