"""A background thread that calls `sync()` every `period` seconds until stopped: the loop shared by
the harness's stand-ins (kubelet, chart operator) and the tests' recorders. A failing sync is kept
in `errors` (tests read them) and the loop goes on."""

from __future__ import annotations

import threading
from typing import Self


class Poller:
    def __init__(self, period: float, name: str) -> None:
        self.period = period
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)

    def sync(self) -> None:
        raise NotImplementedError

    def start(self) -> Self:
        self._thread.start()
        return self

    def stop(self) -> None:
        """Ends the loop (waiting up to 30 s for a sync in progress)."""
        self._stop.set()
        self._thread.join(timeout=30)

    def _loop(self) -> None:
        while not self._stop.wait(self.period):
            try:
                self.sync()
            except Exception as exc:  # noqa: BLE001 - keep going; tests read .errors
                self.errors.append(f"{type(exc).__name__}: {exc}")
