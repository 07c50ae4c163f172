"""The backend's /setup is asked and read one way (backend_client, configcheck.interpret) by the
reconcile (sync) and the pre-labeling driver (async): a real HTTP server on loopback answers both."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

from prelabel_operator import backend_client
from prelabel_operator.configcheck import ConfigCheck
from prelabel_operator.errors import BackendUnreachable

ANSWERS = {
    "served": (200, {"model_version": "prelabel-0123456789ab", "warnings": ["label 'kite' maps to no class"]}),
    "int-version": (200, {"model_version": 1796529612}),
    "nothing-yet": (200, {"compatible": False, "error": "no control to predict"}),
    "bad-model-path": (422, {"error": "model_path 'x.pt' does not exist"}),
    "unreadable": (400, {"error": "'schema' is required"}),
    "broken": (500, "Internal Server Error"),
}


@pytest.fixture(scope="module")
def backend() -> Iterator[tuple[str, list[dict]]]:
    bodies: list[dict] = []

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            bodies.append(body)
            status, answer = ANSWERS[body["schema"]]
            data = answer.encode() if isinstance(answer, str) else json.dumps(answer).encode()
            self.send_response(status)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}", bodies
    server.shutdown()
    server.server_close()


def both(url: str, schema: str) -> tuple[ConfigCheck, ConfigCheck]:
    sync = backend_client.Backend().check_config(url, 7, schema, None)

    async def ask() -> ConfigCheck:
        async with httpx.AsyncClient(base_url=url) as http:
            return await backend_client.check_config(http, 7, schema)

    return sync, asyncio.run(ask())


@pytest.mark.parametrize("schema", sorted(ANSWERS))
def test_the_reconcile_and_the_driver_read_the_same_answer_the_same_way(backend: tuple[str, list[dict]], schema: str) -> None:
    url, bodies = backend
    sync, driven = both(url, schema)
    assert sync == driven
    assert bodies[-1] == bodies[-2] == {"project": "7.0", "schema": schema}  # Label Studio's /setup body


def test_what_each_answer_means(backend: tuple[str, list[dict]]) -> None:
    url, _ = backend
    assert both(url, "served")[0] == ConfigCheck(True, "label 'kite' maps to no class", "prelabel-0123456789ab", True)
    assert both(url, "int-version")[0].model_version == "1796529612"  # any JSON type: a string from here on
    assert both(url, "nothing-yet")[0] == ConfigCheck(False, "no control to predict", None, True)  # registered, predicts nothing
    assert both(url, "bad-model-path")[0] == ConfigCheck(False, "model_path 'x.pt' does not exist", None, False)
    assert both(url, "unreadable")[0].registrable is False  # Label Studio would refuse it too
    assert both(url, "broken")[0] == ConfigCheck(None, "backend answered HTTP 500 to /setup: Internal Server Error", None, True)


def test_an_unreachable_backend_raises_for_both() -> None:
    with pytest.raises(BackendUnreachable, match="ConnectError"):
        backend_client.Backend().check_config("http://127.0.0.1:9", 1, "<View/>", None)

    async def ask() -> None:
        async with httpx.AsyncClient(base_url="http://127.0.0.1:9") as http:
            await backend_client.check_config(http, 1, "<View/>")

    with pytest.raises(BackendUnreachable, match="ConnectError"):
        asyncio.run(ask())
