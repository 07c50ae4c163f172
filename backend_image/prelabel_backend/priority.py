"""Annotators first: a person's /predict runs its model calls before a pre-labeling run's (issue 30).

Label Studio calls /predict with one task when a person opens it; the operator's pre-labeling driver
sends batches of tasks, marked with the header `X-Prelabel-Priority: batch` (HEADER). Both run on the
same worker's THREADS, model instances and CPUs, so without an order a person's image waits behind
the run's batches.

Each model call (one model batch, or one video frame when tracking) takes a turn at its worker's Gate:

- a batch call waits while any interactive call waits or runs, and while `slots` batch calls run:
  as many as the model has instances (predictor.py), so a batch call never queues for an instance
  ahead of a person; and only one while a person is labeling (from an interactive call until `hold`
  seconds after the last one ended, PRIORITY_HOLD), which leaves OpenVINO's second instance, and
  most of the CPU, to the person's next call;
- an interactive call never waits at the gate, only for a free instance of its model: at most until
  one running call ends, never for the rest of a batch request.

Why the hold: batch calls one at a time cost up to a fifth of the batch throughput on 2 cores (one
call's inference no longer overlaps the other's pre- and post-processing), so they run side by side
again once nobody has been served for `hold` seconds (bench/README.md, annotators first). Only model
calls are ordered: a batch request keeps downloading and decoding its next images (up to its window,
predictor.py) while its call waits.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from typing import Literal

Priority = Literal["interactive", "batch"]
HEADER = "X-Prelabel-Priority"
BATCH: Priority = "batch"
INTERACTIVE: Priority = "interactive"


def of_header(value: str | None) -> Priority:
    """The class of a request from its X-Prelabel-Priority header: "batch" (any case) is batch work;
    anything else, or no header (Label Studio's calls), is interactive."""
    return BATCH if (value or "").strip().lower() == BATCH else INTERACTIVE


class Gate:
    """The order of one worker process's model calls (module docstring). Thread-safe; a waiting
    call blocks its thread (gunicorn's gthread workers: one request per thread)."""

    def __init__(self, hold: float) -> None:
        self.hold = hold  # seconds
        self._changed = threading.Condition()
        self._interactive = 0  # interactive calls waiting for an instance or running
        self._batch = 0  # batch calls running
        self._batch_waiting = 0
        self._held_until = float("-inf")  # time.monotonic() until which batch calls run one at a time

    @contextlib.contextmanager
    def turn(self, priority: Priority, slots: int = 1) -> Iterator[float]:
        """Runs the body of the with-statement in its turn; yields the seconds waited for it.
        slots: the calls the model can run at once (its instances), at least 1."""
        started = time.monotonic()
        with self._changed:
            if priority == INTERACTIVE:
                self._interactive += 1
            else:
                self._batch_waiting += 1
                try:
                    while True:
                        held = self._held_until - time.monotonic()
                        if not self._interactive and self._batch < (1 if held > 0 else max(1, slots)):
                            break
                        # Woken by a call's end, or when the hold ends (then more batch calls may run).
                        self._changed.wait(held if held > 0 and not self._interactive else None)
                finally:
                    self._batch_waiting -= 1
                self._batch += 1
        try:
            yield time.monotonic() - started
        finally:
            with self._changed:
                if priority == INTERACTIVE:
                    self._interactive -= 1
                    self._held_until = time.monotonic() + self.hold
                else:
                    self._batch -= 1
                self._changed.notify_all()

    def counts(self) -> tuple[int, int, int]:
        """(interactive calls waiting for an instance or running, batch calls running, batch calls waiting)."""
        with self._changed:
            return self._interactive, self._batch, self._batch_waiting
