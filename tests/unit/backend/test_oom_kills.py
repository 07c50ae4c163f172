"""The backend counts its container's OOM kills from the cgroup (memory.oom_kills) and /health says so:
the only trace of a model worker killed for memory while gunicorn's master lives on."""

from __future__ import annotations

from pathlib import Path

from prelabel_backend import memory
from prelabel_backend.app import Backend, create_app


def test_cgroup_v2_and_v1_counts_are_read(tmp_path: Path) -> None:
    v2 = tmp_path / "v2"
    v2.mkdir()
    (v2 / "memory.events").write_text("low 0\nhigh 0\nmax 12\noom 3\noom_kill 2\noom_group_kill 0\n")
    assert memory.oom_kills(str(v2)) == 2
    v1 = tmp_path / "v1"
    (v1 / "memory").mkdir(parents=True)
    (v1 / "memory" / "memory.oom_control").write_text("oom_kill_disable 0\nunder_oom 0\noom_kill 5\n")
    assert memory.oom_kills(str(v1)) == 5
    assert memory.oom_kills(str(tmp_path / "none")) is None


def test_health_names_the_oom_kills_while_loading(settings, store, monkeypatch) -> None:  # noqa: ANN001
    client = create_app(settings, Backend(settings, store), load="none").test_client()
    for none in (None, 0):  # unreadable, or none counted: not said
        monkeypatch.setattr(memory, "oom_kills", lambda root=memory.CGROUP_ROOT, n=none: n)
        assert "oom_kills" not in client.get("/health").get_json()
    monkeypatch.setattr(memory, "oom_kills", lambda root=memory.CGROUP_ROOT: 3)
    body = client.get("/health").get_json()
    assert body["oom_kills"] == 3 and body["status"] == "LOADING"
