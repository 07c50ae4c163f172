"""A throwaway PostgreSQL server on 127.0.0.1, for Label Studio as big installs run it: Debian's
postgresql package (`apt-get install -y postgresql`: its binaries under /usr/lib/postgresql/<major>/bin),
a fresh cluster (`initdb`) in a temp dir, trust authentication on loopback only, started and
stopped by PID through processes.spawn(). PostgreSQL refuses to run as root, so as root the
server runs as the `postgres` user the package makes (`setpriv`, which execs: the recorded leader
is the postmaster itself).
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import processes
from .cluster import free_port, stop_group

USER = "postgres"  # the OS user (as root) and the database superuser initdb makes


def bin_dir() -> Path:
    """The newest /usr/lib/postgresql/<major>/bin (Debian's layout); raises with the package to install."""
    majors = sorted(Path("/usr/lib/postgresql").glob("*/bin/postgres"), key=lambda p: int(p.parent.parent.name))
    if not majors:
        raise RuntimeError("PostgreSQL is not installed: apt-get install -y postgresql")
    return majors[-1].parent


def _env() -> dict[str, str]:
    """What PostgreSQL's programs run with: the PATH, and a UTF-8 locale whatever the caller's."""
    return {"PATH": os.environ.get("PATH", ""), "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8"}


@dataclass
class Postgres:
    workdir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="prelabel-pg-")))
    port: int = 0
    database: str = "labelstudio"
    process: subprocess.Popen[bytes] | None = None
    settings: dict[str, str] = field(default_factory=dict)  # extra `postgres -c name=value`

    @property
    def log(self) -> Path:
        return self.workdir / "postgres.log"

    def _as_owner(self) -> list[str]:
        """The argv prefix that runs a command as the server's OS user: `setpriv` to `postgres` as root."""
        if os.geteuid() != 0:
            return []
        pw = pwd.getpwnam(USER)
        return ["setpriv", f"--reuid={pw.pw_uid}", f"--regid={pw.pw_gid}", "--init-groups", "--"]

    def start(self, timeout: float = 60) -> Postgres:
        binaries = bin_dir()
        self.port = self.port or free_port()
        data, sockets = self.workdir / "data", self.workdir / "run"
        sockets.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            pw = pwd.getpwnam(USER)
            for path in (self.workdir, sockets):
                os.chown(path, pw.pw_uid, pw.pw_gid)
        env = _env()
        subprocess.run([*self._as_owner(), str(binaries / "initdb"), "-D", str(data), "-U", USER, "--auth=trust",
                        "--encoding=UTF8", "--no-instructions"], check=True, env=env, stdout=subprocess.DEVNULL)
        options = {"listen_addresses": "127.0.0.1", "port": str(self.port), "unix_socket_directories": str(sockets),
                   **self.settings}
        argv = [*self._as_owner(), str(binaries / "postgres"), "-D", str(data), *(a for k, v in options.items() for a in ("-c", f"{k}={v}"))]
        self.process = processes.spawn("postgres", argv, log=self.log, env=env, cwd=self.workdir)
        deadline = time.monotonic() + timeout
        while subprocess.run([str(binaries / "pg_isready"), "-q", "-h", "127.0.0.1", "-p", str(self.port)], check=False).returncode != 0:
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"PostgreSQL did not start on 127.0.0.1:{self.port}:\n{self.log.read_text(errors='replace')[-3000:]}")
            time.sleep(0.2)
        self.client("createdb", self.database)
        return self

    def client(self, program: str, *args: str, **run: Any) -> subprocess.CompletedProcess[Any]:
        """Runs one of PostgreSQL's client programs (psql, createdb, pg_dump, ...) against this server, as
        its superuser over loopback (trust); `run`: subprocess.run's other arguments. Raises on failure."""
        return subprocess.run([str(bin_dir() / program), "-h", "127.0.0.1", "-p", str(self.port), "-U", USER, *args],
                              check=True, env=_env(), **run)

    def stop(self, keep: bool = False) -> None:
        if self.process is not None:
            stop_group(self.process)  # SIGTERM: PostgreSQL's smart shutdown
        self.process = None
        if not keep:
            shutil.rmtree(self.workdir, ignore_errors=True)
