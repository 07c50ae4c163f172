"""The local Label Studio as big installs run it (bench/ls_db_bench.py, scale_bench --label-studio):
on a PostgreSQL of its own, under gunicorn with several processes. What the operator registers lands
in that PostgreSQL (not a silent SQLite), PostgreSQL listens on loopback only, and stop() ends both."""

from __future__ import annotations

import pytest

from prelabel_local import processes
from prelabel_local.label_studio_server import LabelStudio
from prelabel_local.postgres import Postgres
from prelabel_operator.labelstudio import Client
from prelabel_operator.registration import Desired, marker
from prelabel_operator.spec import ProjectRef
from tests.conftest import SEED_CONFIG

pytestmark = pytest.mark.labelstudio


def sql(pg: Postgres, query: str) -> str:
    return str(pg.client("psql", "-d", pg.database, "-Atc", query, capture_output=True, text=True).stdout).strip()


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

        assert sql(pg, f"select title from project where id = {project_id}") == "on postgresql"
        assert sql(pg, f"select url from ml_mlbackend where project_id = {project_id}") == backend.url
        assert sql(pg, "show listen_addresses") == "127.0.0.1"
    finally:
        postgres_process = server.postgres.process if server.postgres else None
        server.stop()
    assert postgres_process is not None and postgres_process.poll() is not None


@pytest.mark.parametrize("database", ["sqlite", "postgresql"])
def test_servers_start_from_the_migrated_template_each_with_only_its_own_admin(database: str) -> None:
    """Label Studio migrates once per version and database kind (label_studio_server.migrated_template);
    each server then starts from a copy: the template holds the migrations and no user, and two servers
    made from it share nothing (each admin's token works on its own server only, a project stays put)."""
    from label_studio_sdk import LabelStudio as Sdk
    from label_studio_sdk.core.api_error import ApiError

    from prelabel_local.label_studio_server import migrated_template

    template = migrated_template(database=database)
    made = template.stat().st_mtime_ns
    first, second = LabelStudio(database=database).start(), LabelStudio(database=database).start()
    try:
        assert migrated_template(database=database).stat().st_mtime_ns == made, "made again"
        text = template.read_bytes()
        assert b"django_migrations" in text and first.username.encode() not in text
        ones, twos = Sdk(base_url=first.url, api_key=first.token), Sdk(base_url=second.url, api_key=second.token)
        assert [u.email for u in ones.users.list()] == [first.username]
        ones.projects.create(title="only on the first", label_config=SEED_CONFIG)
        assert [p.title for p in ones.projects.list()] == ["only on the first"]
        assert list(twos.projects.list()) == []
        with pytest.raises(ApiError) as refused:
            Sdk(base_url=second.url, api_key=first.token).projects.list().items  # noqa: B018
        assert refused.value.status_code == 401
    finally:
        first.stop()
        second.stop()
