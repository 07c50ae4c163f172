"""The YOLO backend (`python -m prelabel_backend`) as a real gunicorn process on 127.0.0.1."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import requests

from . import processes
from .cluster import free_port, stop_group


class BackendProcess:
    def __init__(self, env: dict[str, str], log: Path, host: str = "127.0.0.1", port: int = 0) -> None:
        self.port = port or free_port()
        self.url = f"http://{host}:{self.port}"
        self.log = log
        log.parent.mkdir(parents=True, exist_ok=True)
        full_env = {**os.environ, "HOST": host, "PORT": str(self.port), "MODEL_DIR": str(log.parent / "model-dir"), **env}
        self.proc = processes.spawn("backend", [sys.executable, "-m", "prelabel_backend"], log=log, env=full_env, mode="wb")

    def wait_ready(self, timeout: float = 120) -> BackendProcess:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"backend exited with {self.proc.returncode}: {self.log.read_text()[-2000:]}")
            try:
                if requests.get(f"{self.url}/health", timeout=5).status_code == 200:
                    return self
            except requests.RequestException:  # refused while binding, slow while models load
                pass
            time.sleep(0.3)
        raise RuntimeError(f"backend not ready after {timeout:.0f}s: {self.log.read_text()[-2000:]}")

    def stop(self) -> None:
        stop_group(self.proc)
