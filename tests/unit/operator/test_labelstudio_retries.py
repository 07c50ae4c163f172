"""A create is sent once: Label Studio on SQLite answers 500 ("database is locked") to POSTs it may
have committed, and the SDK's own retry of a create made a duplicate registration at scale. A loopback
server that answers every request 500 counts what the operator's client sends."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from prelabel_operator.labelstudio import Client, LabelStudioError
from prelabel_operator.registration import Desired


@pytest.fixture
def locked() -> Iterator[tuple[str, list[str]]]:
    seen: list[str] = []

    class Locked(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def _answer(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            seen.append(f"{self.command} {self.path}")
            if self.command == "GET":  # no registrations, no webhooks yet
                body, status = b"[]", 200
            else:
                body, status = json.dumps({"detail": "database is locked"}).encode(), 500
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:
            self._answer()

        def do_POST(self) -> None:
            self._answer()

        def do_PATCH(self) -> None:
            self._answer()

    server = ThreadingHTTPServer(("127.0.0.1", 0), Locked)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}", seen
    server.shutdown()
    server.server_close()


def test_a_registration_is_created_once_even_when_label_studio_answers_500(locked: tuple[str, list[str]]) -> None:
    url, seen = locked
    desired = Desired(url="http://127.99.0.10:9090", title="yolo", description="managed by prelabel: ns/a (uid-1)", is_interactive=False, timeout=100)
    with pytest.raises(LabelStudioError, match="HTTP 500"):
        Client(url, "key").ensure(7, desired, "uid-1")
    assert [s for s in seen if s.startswith("POST")] == ["POST /api/ml/"], seen  # not retried: the next reconcile lists first


def test_a_webhook_is_created_once(locked: tuple[str, list[str]]) -> None:
    url, seen = locked
    with pytest.raises(LabelStudioError, match="HTTP 500"):
        Client(url, "key").tidy_webhooks(7, "uid-1", {"http://127.99.0.10:9090"}, set(), "http://127.99.0.10:9090")
    assert [s for s in seen if s.startswith("POST")] == ["POST /api/webhooks/"], seen


def test_a_registration_label_studio_kept_from_a_failed_create_is_deleted_in_the_same_pass() -> None:
    """Label Studio on SQLite saved the row of a create it then failed ("database is locked"): after the
    operator's own create, the project holds two of its registrations; the create's pass deletes one."""
    marker = "managed by prelabel: ns/a (uid-1)"
    rows: dict[int, dict] = {}
    seen: list[str] = []

    class TwoRows(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def _send(self, status: int, body: object) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            seen.append(f"GET {self.path}")
            self._send(200, list(rows.values()) if self.path.startswith("/api/ml") else [])

        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)))
            seen.append(f"POST {self.path}")
            if self.path.startswith("/api/ml"):
                for i in (len(rows) + 1, len(rows) + 2):  # the failed create's row, then this one's
                    rows[i] = {**body, "id": i, "state": "CO"}
                self._send(201, rows[max(rows)])
            else:
                self._send(201, {**body, "id": 1})

        def do_DELETE(self) -> None:
            seen.append(f"DELETE {self.path}")
            rows.pop(int(self.path.rstrip("/").rsplit("/", 1)[1]), None)
            self._send(204, {})

    server = ThreadingHTTPServer(("127.0.0.1", 0), TwoRows)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        desired = Desired(url="http://127.99.0.10:9090", title="yolo", description=marker, is_interactive=False, timeout=100)
        registration_id, decided = Client(f"http://127.0.0.1:{server.server_address[1]}", "key").ensure(7, desired, "uid-1")
    finally:
        server.shutdown()
        server.server_close()
    assert list(rows) == [registration_id] == [1], (rows, seen)
    assert decided.create and decided.delete_ids == (2,)
    assert [s for s in seen if s.startswith("POST /api/ml")] == ["POST /api/ml/"]
