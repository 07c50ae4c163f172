"""`python -m prelabel_backend`: serve the backend through gunicorn on $HOST:$PORT.

Each worker builds the app and loads its models before it serves (no preload in the master:
torch's thread pool does not survive a fork); /health answers 503 until they are loaded.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

from gunicorn.app.base import BaseApplication

from . import memory
from .settings import Settings


class _Server(BaseApplication):
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        super().__init__()

    def load_config(self) -> None:
        s = self.settings
        options: dict[str, Any] = {
            "bind": f"{s.host}:{s.port}",
            "workers": s.workers,
            "threads": s.threads,
            "worker_class": "gthread",
            "timeout": 300,  # a 32-image request on CPU is seconds; a model load is more
            "graceful_timeout": 30,
            "loglevel": s.log_level.lower(),
            "accesslog": "-",
            # The access log never includes request headers (Authorization stays out of logs).
            "access_log_format": '%(h)s "%(r)s" %(s)s %(b)s %(L)ss',
            "worker_tmp_dir": "/dev/shm" if sys.platform.startswith("linux") else None,
            # gunicorn >= 25's control socket (runtime management through gunicornc) is not used, and
            # it would be written under $HOME/.gunicorn: the image's user has no home, its root is read-only.
            "control_socket_disable": True if "control_socket_disable" in self.cfg.settings else None,
        }
        for key, value in options.items():
            if value is not None:
                self.cfg.set(key, value)

    def load(self) -> Any:
        from .app import create_app

        return create_app(self.settings)


def main() -> None:
    # Before torch is imported (in the workers): OpenMP threads that finished their share sleep instead
    # of spinning. On a shared or CPU-throttled node spinning threads take the time the working ones
    # need: measured on a busy 2-core machine, a small model's call took 116 ms spinning, 12 ms passive.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    # Before any thread starts (the worker is forked from here and keeps it): two malloc arenas, not
    # 8 per core, for the memory bound (memory.py).
    memory.limit_arenas()
    settings = Settings.from_env()
    logging.basicConfig(level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    _Server(settings).run()


if __name__ == "__main__":
    main()
