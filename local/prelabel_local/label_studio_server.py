"""A real Label Studio server on 127.0.0.1: installed once into its own virtualenv (its pins clash
with ours), started with its own HOME and data dir, a known user and legacy token, and stopped by
PID. Measured here: ~2.5 min to install, 60-80 s for the first start (docs/local-mode.md, "Label Studio").

That first start is Label Studio's own migrations: they run once per version and database kind on a
machine, and the migrated, user-less database is kept (`migrated_template`). Every later server starts
from a copy of it, in seconds (20-30 s under the test suite's load, against about 200 s migrating).
What the tests check is still what this Label Studio itself stored.

Its database is SQLite (what `label-studio start` uses) or a PostgreSQL of its own (postgres.py), as
big installs run it; its server is `label-studio start` (Django's threaded runserver, one process)
or, with `workers`, gunicorn on its WSGI app with that many processes, as its Docker image runs
uwsgi in production (deploy/uwsgi.ini: 2 processes a core, 1 thread each).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import secrets
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import requests

from prelabel_operator import support

from . import processes
from .cluster import free_port, stop_group
from .postgres import Postgres
from .venv import CACHE, uv
from .venv import create as create_venv

# The support range (docs/label-studio-versions.md): the newest release of each of the last three minor
# versions on PyPI. The whole suite runs on the newest; tests/integration's version matrix on each.
SUPPORTED = ("1.21.0", "1.22.0", "1.23.2")
VERSION = SUPPORTED[-1]
GUNICORN = "gunicorn==27.0.1"  # the backend image's pin (backend_image/requirements.lock)
TEMPLATES = CACHE / "label-studio-migrated"


def venv_dir(version: str = VERSION) -> Path:
    return CACHE / "venvs" / f"label-studio-{version}"


def ensure_installed(version: str = VERSION) -> Path:
    """Installs label-studio==`version` into its own venv with uv (cached); returns the `label-studio` executable."""
    venv = venv_dir(version)
    exe, done = venv / "bin" / "label-studio", venv / ".prelabel-complete"
    if done.exists():
        return exe
    print(f"[label-studio] installing label-studio=={version} into {venv} (first time: a few minutes)", file=sys.stderr)
    create_venv(venv, f"label-studio=={version}")
    done.touch()
    return exe


def ensure_all() -> None:
    """Every supported version (what `make label-studio` prepares for the tests), gunicorn beside the newest,
    and the migrated databases the tests start from: each version's on SQLite, the newest's on PostgreSQL."""
    for version in SUPPORTED:
        ensure_installed(version)
    ensure_gunicorn()
    for version in SUPPORTED:
        migrated_template(version, "sqlite")
    migrated_template(VERSION, "postgresql")


def ensure_gunicorn() -> Path:
    """gunicorn in the newest Label Studio's venv (cached; Label Studio does not depend on it); returns its executable."""
    exe = ensure_installed().parent / "gunicorn"
    if not exe.exists():
        env = {**os.environ, "UV_CACHE_DIR": os.environ.get("UV_CACHE_DIR", str(CACHE / "uv"))}
        subprocess.run([uv(), "pip", "install", "-q", "-p", str(exe.parent / "python"), GUNICORN], check=True, env=env)
    return exe


@dataclass
class LabelStudio:
    workdir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="prelabel-ls-")))
    port: int = 0
    host: str = "127.0.0.1"  # or a real node's bridge gateway (node.GATEWAY), where pods reach it
    username: str = "admin@prelabel.local"
    password: str = field(default_factory=lambda: secrets.token_urlsafe(12))
    token: str = field(default_factory=lambda: secrets.token_hex(20))  # a legacy API token (40 hex)
    process: subprocess.Popen[bytes] | None = None
    extra_env: dict[str, str] = field(default_factory=dict)
    database: Literal["sqlite", "postgresql"] = "sqlite"
    workers: int = 0  # 0: `label-studio start`; N: gunicorn with N worker processes of `threads` threads
    threads: int = 1
    postgres: Postgres | None = None  # started with Label Studio when database is "postgresql"
    version: str = VERSION  # one of SUPPORTED (another is installed on demand too)
    access_token_seconds: int | None = None  # the lifetime of the access tokens a personal access token gets (default 5 min)
    blank: bool = False  # migrate only: no user, no copy of the template (what migrated_template makes)

    @property
    def release(self) -> tuple[int, int]:
        """(major, minor) of the version served, as the operator reads a release (support.release): what
        tests compare where Label Studio's behaviour changed."""
        found = support.release(self.version)
        if found is None:
            raise ValueError(f"not a Label Studio release: {self.version!r}")
        return found

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def log(self) -> Path:
        return self.workdir / "label-studio.log"

    def start(self, timeout: float = 240) -> LabelStudio:
        exe = ensure_installed(self.version)
        self.port = self.port or free_port()
        env = {
            "PATH": f"{exe.parent}:{os.environ.get('PATH', '')}",
            "HOME": str(self.workdir / "home"),
            "LABEL_STUDIO_BASE_DATA_DIR": str(self.workdir / "data"),
            "LABEL_STUDIO_USERNAME": self.username,
            "LABEL_STUDIO_PASSWORD": self.password,
            "LABEL_STUDIO_USER_TOKEN": self.token,
            "LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN": "true",
            # Backends here live on loopback (and in-cluster on private ranges): lift the SSRF ban on
            # those ranges, as a Label Studio inside a cluster must (docs/operations.md, "Label Studio inside the cluster").
            "LABEL_STUDIO_USE_DEFAULT_BANNED_SUBNETS": "false",
            "LABEL_STUDIO_LATEST_VERSION_CHECK": "false",
            "LABEL_STUDIO_COLLECT_ANALYTICS": "false",
            "SENTRY_DSN": "",
            "FRONTEND_SENTRY_DSN": "",
            **self._database_env(),
            **self._settings_env(),
            **self.extra_env,
        }
        if self.blank:
            for name in ("LABEL_STUDIO_USERNAME", "LABEL_STUDIO_PASSWORD", "LABEL_STUDIO_USER_TOKEN"):
                env.pop(name)
        else:
            self._from_template()
        (self.workdir / "home").mkdir(parents=True, exist_ok=True)
        start = [str(exe), "start", "--no-browser", "--internal-host", self.host, "--port", str(self.port)]
        self.process = processes.spawn("label-studio", start, log=self.log, env=env, cwd=self.workdir)
        self._wait_ready(timeout)
        if self.workers:
            # `label-studio start` migrated and made the user and token; gunicorn serves the same app
            # and database from here on, as Label Studio's image does (its core.wsgi, its settings).
            stop_group(self.process)
            app_dir = next(exe.parent.parent.glob("lib/python*/site-packages/label_studio"))
            if self.version != VERSION or self.access_token_seconds is not None:
                raise ValueError(f"gunicorn serves Label Studio {VERSION} with its own settings only")
            argv = [str(ensure_gunicorn()), "core.wsgi:application", "--chdir", str(app_dir), "--bind", f"{self.host}:{self.port}",
                    "--workers", str(self.workers), "--threads", str(self.threads), "--timeout", "120"]
            env["DJANGO_SETTINGS_MODULE"] = "core.settings.label_studio"
            self.process = processes.spawn("label-studio", argv, log=self.log, env=env, cwd=self.workdir)
            self._wait_ready(timeout)
        return self

    def _from_template(self) -> None:
        """Starts this server's empty database as a copy of its version's migrated template: a SQLite
        file in the data dir, or a plain-SQL dump restored into the PostgreSQL database."""
        template = migrated_template(self.version, self.database)
        if self.database == "sqlite":
            database = self.workdir / "data" / template.name
            if not database.exists():
                database.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(template, database)
            return
        assert self.postgres is not None
        self.postgres.client("psql", "-q", "-v", "ON_ERROR_STOP=1", "-d", self.postgres.database, "-f", str(template), stdout=subprocess.DEVNULL)

    def _settings_env(self) -> dict[str, str]:
        """Label Studio's own settings module with the access-token lifetime changed (simplejwt's
        SIMPLE_JWT, which Label Studio leaves at its 5-minute default and reads nowhere from its env)."""
        if self.access_token_seconds is None:
            return {}
        settings = self.workdir / "settings"
        settings.mkdir(parents=True, exist_ok=True)
        (settings / "prelabel_ls_settings.py").write_text(
            # Label Studio's settings read django.conf.settings while they load, which then loads them by
            # their own name (what DJANGO_SETTINGS_MODULE says at that moment): this module's name is set back after.
            "import datetime, os\n"
            "os.environ['DJANGO_SETTINGS_MODULE'] = 'label_studio.core.settings.label_studio'\n"
            "from label_studio.core.settings.label_studio import *  # noqa: F403, E402\n"
            "os.environ['DJANGO_SETTINGS_MODULE'] = 'prelabel_ls_settings'\n"
            f"SIMPLE_JWT = {{**globals().get('SIMPLE_JWT', {{}}), 'ACCESS_TOKEN_LIFETIME': datetime.timedelta(seconds={self.access_token_seconds})}}\n")
        return {"PYTHONPATH": str(settings), "DJANGO_SETTINGS_MODULE": "prelabel_ls_settings"}

    def _database_env(self) -> dict[str, str]:
        """Label Studio's database settings (label_studio/core/settings/base.py reads these names)."""
        if self.database == "sqlite":
            return {"DJANGO_DB": "sqlite"}
        self.postgres = self.postgres or Postgres(workdir=Path(tempfile.mkdtemp(prefix="prelabel-ls-pg-"))).start()
        return {"DJANGO_DB": "default", "POSTGRE_HOST": "127.0.0.1", "POSTGRE_PORT": str(self.postgres.port),
                "POSTGRE_NAME": self.postgres.database, "POSTGRE_USER": "postgres", "POSTGRE_PASSWORD": "unused"}  # trust on loopback

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"Label Studio exited with {self.process.returncode}:\n{self.log.read_text(errors='replace')[-3000:]}")
            try:
                # A blank server has no user to ask with: its health answers once the migrations are done.
                request = urllib.request.Request(f"{self.url}/health/") if self.blank else \
                    urllib.request.Request(f"{self.url}/api/projects", headers={"Authorization": f"Token {self.token}"})
                with urllib.request.urlopen(request, timeout=5) as response:
                    if response.status == 200:
                        json.loads(response.read())
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError, json.JSONDecodeError):
                pass
            time.sleep(1)
        raise RuntimeError(f"Label Studio not ready on {self.url} after {timeout:.0f}s; log: {self.log}")

    def upload_images(self, project_id: int, images: dict[str, bytes]) -> dict[str, int]:
        """Uploads images as tasks (one task each: distinct multipart field names); returns file name -> task
        id for every image task of the project, those uploaded before included."""
        headers = {"Authorization": f"Token {self.token}"}
        items = list(images.items())
        for start in range(0, len(items), 50):  # Django refuses more than 100 files in one request
            files = {f"file{i}": (name, data, "image/png") for i, (name, data) in enumerate(items[start:start + 50])}
            requests.post(f"{self.url}/api/projects/{project_id}/import", files=files, headers=headers, timeout=120).raise_for_status()
        tasks = requests.get(f"{self.url}/api/tasks", params={"project": project_id, "page_size": 100000}, headers=headers, timeout=120).json()["tasks"]
        by_name = {}
        for task in tasks:
            # Label Studio stores uploads as /data/upload/<project>/<8 hex>-<original name>
            stored = task["data"]["image"].rsplit("/", 1)[-1]
            by_name[stored.split("-", 1)[1] if "-" in stored else stored] = task["id"]
        return by_name

    def stop(self, keep: bool = False) -> None:
        if self.process is not None:
            stop_group(self.process)  # `label-studio start` runs Django's server in its process group
        self.process = None
        if self.postgres is not None:
            self.postgres.stop(keep=keep)
            self.postgres = None
        if not keep:
            shutil.rmtree(self.workdir, ignore_errors=True)


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive flock on `path` (made if missing): test workers that want the same template wait for one to make it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def migrated_template(version: str = VERSION, database: Literal["sqlite", "postgresql"] = "sqlite") -> Path:
    """The database that Label Studio `version` migrated itself, with no user in it: `label-studio start`
    on an empty database (its own `migrate`, as every first start runs it), stopped once its /health/
    answers. A SQLite file (`label_studio.sqlite3`, its default name) or a plain-SQL `pg_dump` of the
    PostgreSQL database. Made once per version, database kind and Label Studio venv (its install stamp is
    in the key: a reinstall makes it again), under ~/.cache/prelabel/label-studio-migrated/."""
    ensure_installed(version)
    stamp = (venv_dir(version) / ".prelabel-complete").stat().st_mtime_ns
    folder = TEMPLATES / f"{version}-{database}-{stamp}"
    template = folder / ("label_studio.sqlite3" if database == "sqlite" else "labelstudio.sql")
    if template.exists():
        return template
    with _locked(TEMPLATES / f".{version}-{database}.lock"):
        if template.exists():
            return template
        server = LabelStudio(version=version, database=database, blank=True)
        partial = template.with_suffix(".partial")
        folder.mkdir(parents=True, exist_ok=True)
        try:
            server.start()
            if database == "sqlite":
                # sqlite3's backup API (and pg_dump's snapshot below): a consistent copy while the idle server runs.
                with contextlib.closing(sqlite3.connect(server.workdir / "data" / template.name)) as source, \
                        contextlib.closing(sqlite3.connect(partial)) as target:
                    source.backup(target)
            else:
                assert server.postgres is not None
                with partial.open("wb") as out:
                    server.postgres.client("pg_dump", "--no-owner", "--no-privileges", server.postgres.database, stdout=out)
            partial.rename(template)
        finally:
            server.stop()
            partial.unlink(missing_ok=True)
    return template
