"""The operator (`python -m prelabel_operator`) as a local process against a kubeconfig."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from .cluster import free_port, stop_group


class OperatorProcess:
    def __init__(self, kubeconfig: Path, log: Path, resync_seconds: float = 5, extra_args: list[str] | None = None,
                 python: str = sys.executable, env: dict[str, str] | None = None) -> None:
        self.kubeconfig, self.log, self.resync_seconds = kubeconfig, log, resync_seconds
        self.extra_args = extra_args or []
        self.python, self.env = python, env or {}  # another interpreter: e.g. one with only the image's dependencies
        self.proc: subprocess.Popen[bytes] | None = None
        self.metrics_port = free_port()

    def start(self) -> OperatorProcess:
        env = {**os.environ, **self.env, "KUBECONFIG": str(self.kubeconfig), "PRELABEL_RESYNC_SECONDS": str(self.resync_seconds)}
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with self.log.open("ab") as handle:
            self.proc = subprocess.Popen(
                [self.python, "-m", "prelabel_operator", "--liveness", f"http://127.0.0.1:{free_port()}/healthz",
                 "--metrics-address", "127.0.0.1", "--metrics-port", str(self.metrics_port), *self.extra_args],
                env=env, stdout=handle, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        return self

    def kill(self) -> None:
        """SIGKILL: no cleanup, as a crashed or evicted operator pod."""
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def stop(self) -> None:
        if self.proc:
            stop_group(self.proc)
