"""The local Label Studio as big installs run it (bench/ls_db_bench.py, scale_bench --label-studio):
on a PostgreSQL of its own, under gunicorn with several processes. What the operator registers lands
in that PostgreSQL (not a silent SQLite), PostgreSQL listens on loopback only, and stop() ends both."""

from __future__ import annotations

import subprocess

import pytest

from prelabel_local import processes
from prelabel_local.label_studio_server import LabelStudio
from prelabel_local.postgres import USER, bin_dir
from prelabel_operator.labelstudio import Client
from prelabel_operator.registration import Desired, marker
from prelabel_operator.spec import ProjectRef
from tests.conftest import SEED_CONFIG

pytestmark = pytest.mark.labelstudio


def sql(port: int, database: str, query: str) -> str:
    done = subprocess.run([str(bin_dir() / "psql"), "-h", "127.0.0.1", "-p", str(port), "-U", USER, "-d", database, "-Atc", query],
                          check=True, capture_output=True, text=True)
    return done.stdout.strip()


def test_registrations_land_in_postgresql_under_gunicorn(start_backend) -> None:  # noqa: ANN001
    server = LabelStudio(database="postgresql", workers=2).start()
    try:
        assert server.postgres is not None and server.process is not None
        pg = server.postgres
        assert "gunicorn" in " ".join(processes._mine[server.process.pid].argv)
        backend = start_backend({"LABEL_STUDIO_URL": server.url, "LABEL_STUDIO_API_KEY": server.token})
        client = Client(server.url, server.token)
        project_id = int(client.sdk.projects.create(title="on postgresql", label_config=SEED_CONFIG).id)
        desired = Desired(url=backend.url, title="prelabel", description=marker("ml", "pg", "uid-pg"), is_interactive=False, timeout=100)
        client.ensure(project_id, desired, "uid-pg")
        client.set_model_version(client.resolve(ProjectRef(id=project_id)), desired.title)

        assert sql(pg.port, pg.database, f"select title from project where id = {project_id}") == "on postgresql"
        assert sql(pg.port, pg.database, f"select url from ml_mlbackend where project_id = {project_id}") == backend.url
        assert sql(pg.port, pg.database, "show listen_addresses") == "127.0.0.1"
    finally:
        postgres_process = server.postgres.process if server.postgres else None
        server.stop()
    assert postgres_process is not None and postgres_process.poll() is not None
