"""What the pre-labeling driver asks Label Studio's task list for (httpx's MockTransport for Label
Studio and the backend): no request leaves Label Studio to resolve media URLs, whose default is to
resolve them (`resolve_uri` true: a cloud-storage link presigned per task, label-studio-sdk #658), and
the counts ask for ids only. A whole pass runs: counts, the pending page, a partly refused import
and its read-back page, the counts again."""

from __future__ import annotations

import asyncio
import json
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from prelabel_operator.prelabel_driver import Driver, Target
from prelabel_operator.spec import PrelabelSpec

TASKS = [{"id": 11, "data": {"image": "s3://bucket/a.png"}}, {"id": 12, "data": {"image": "s3://bucket/b.png"}}]


async def _nothing(progress: object) -> None:
    return None


def test_no_task_list_request_asks_label_studio_to_resolve_media_urls(monkeypatch: pytest.MonkeyPatch) -> None:
    listed: list[dict[str, str]] = []
    imports: list[int] = []

    def label_studio(request: httpx.Request) -> httpx.Response:
        path = request.url.path.rstrip("/")
        if path == "/api/projects/1":
            return httpx.Response(200, json={"id": 1, "label_config": "<View/>"})
        if path == "/api/projects/1/import/predictions":
            sent = json.loads(request.content)
            imports.append(len(sent))
            return httpx.Response(201, json={"created": 1})  # the first bulk of 2 partly refused: read back, then one at a time
        assert path == "/api/tasks", path
        params = {k: v[0] for k, v in parse_qs(urlsplit(str(request.url)).query).items()}
        listed.append(params)
        if "predictions_model_versions" in params.get("include", ""):
            return httpx.Response(200, json={"tasks": [{"id": 11, "predictions_model_versions": "v1"}], "total": 1})
        if params.get("page_size") == "1":
            return httpx.Response(200, json={"tasks": [], "total": 2})
        first_page = json.loads(params["query"])["filters"]["items"][-1]["value"] == 0
        return httpx.Response(200, json={"tasks": TASKS if first_page else [], "total": 2})

    def backend(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/setup":
            return httpx.Response(200, json={"model_version": "v1"})
        tasks = json.loads(request.content)["tasks"]
        return httpx.Response(200, json={"results": [{"result": [], "model_version": "v1"} for _ in tasks]})

    class Mocked(httpx.AsyncClient):  # the driver's two clients, each on its fake server
        def __init__(self, *args, **kwargs) -> None:  # noqa: ANN002, ANN003
            mock = backend if kwargs.get("base_url") == "http://backend" else label_studio
            super().__init__(*args, **kwargs, transport=httpx.MockTransport(mock))

    monkeypatch.setattr(httpx, "AsyncClient", Mocked)
    target = Target("http://ls", "k", "http://backend", None, (1,))
    asyncio.run(Driver("team", "shapes", _nothing).run_pass(target, PrelabelSpec(), False))

    kinds = {
        ("read-back" if "predictions_model_versions" in p["include"] else "count" if p["page_size"] == "1" else "page") for p in listed
    }
    assert kinds == {"count", "page", "read-back"} and imports == [2, 1], (listed, imports)
    assert [p.get("resolve_uri") for p in listed] == ["false"] * len(listed), listed
    assert {p["include"] for p in listed if p["page_size"] == "1"} == {"id"}
