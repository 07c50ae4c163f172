"""The pre-labeling driver marks its own backend requests as batch work (X-Prelabel-Priority: batch),
so the backend serves a person's /predict from Label Studio first (backend_image/prelabel_backend/
priority.py); requests to Label Studio go without it. A whole pass runs against httpx's MockTransport
for Label Studio and the backend."""

from __future__ import annotations

import asyncio
import json
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from prelabel_operator.backend_client import BATCH_HEADERS
from prelabel_operator.prelabel_driver import Driver, Target
from prelabel_operator.spec import PrelabelSpec

TASKS = [{"id": 11, "data": {"image": "s3://bucket/a.png"}}, {"id": 12, "data": {"image": "s3://bucket/b.png"}}]


async def _nothing(progress: object) -> None:
    return None


def test_the_driver_sends_its_backend_requests_as_batch_work(monkeypatch: pytest.MonkeyPatch) -> None:
    sent: list[tuple[str, str | None]] = []  # (where, the priority header)

    def label_studio(request: httpx.Request) -> httpx.Response:
        sent.append(("label studio", request.headers.get("X-Prelabel-Priority")))
        path = request.url.path.rstrip("/")
        if path == "/api/projects/1":
            return httpx.Response(200, json={"id": 1, "label_config": "<View/>"})
        if path == "/api/projects/1/import/predictions":
            return httpx.Response(201, json={"created": len(json.loads(request.content))})
        params = {k: v[0] for k, v in parse_qs(urlsplit(str(request.url)).query).items()}
        if params.get("page_size") == "1":
            return httpx.Response(200, json={"tasks": [], "total": 2})
        first_page = json.loads(params["query"])["filters"]["items"][-1]["value"] == 0
        return httpx.Response(200, json={"tasks": TASKS if first_page else [], "total": 2})

    def backend(request: httpx.Request) -> httpx.Response:
        sent.append((f"backend {request.url.path}", request.headers.get("X-Prelabel-Priority")))
        if request.url.path == "/setup":
            return httpx.Response(200, json={"model_version": "v1"})
        tasks = json.loads(request.content)["tasks"]
        return httpx.Response(200, json={"results": [{"result": [], "model_version": "v1"} for _ in tasks]})

    class Mocked(httpx.AsyncClient):  # the driver's clients, each on its fake server
        def __init__(self, *args, **kwargs) -> None:  # noqa: ANN002, ANN003
            mock = backend if kwargs.get("base_url") == "http://backend" else label_studio
            super().__init__(*args, **kwargs, transport=httpx.MockTransport(mock))

    monkeypatch.setattr(httpx, "AsyncClient", Mocked)
    target = Target("http://ls", "k", "http://backend", None, (1,))
    asyncio.run(Driver("team", "shapes", _nothing).run_pass(target, PrelabelSpec(), False))

    assert BATCH_HEADERS == {"X-Prelabel-Priority": "batch"}
    assert ("backend /predict", "batch") in sent, sent
    assert {header for where, header in sent if where.startswith("backend")} == {"batch"}, sent
    assert {header for where, header in sent if where == "label studio"} == {None}, sent
