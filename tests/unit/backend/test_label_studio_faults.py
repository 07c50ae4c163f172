"""Label Studio as it really calls the backend (issue 29): /setup within its 3 s read timeout while a
model loads (fault 1), and /predict with the keys newer Label Studio versions add (fault 8). Real
models through flask's test client."""

from __future__ import annotations

import email.utils
import shutil
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import pytest

from prelabel_backend import synthetic
from prelabel_backend.app import Backend, create_app
from prelabel_backend.label_config import PACKAGED_WEIGHTS
from prelabel_backend.media import retry_after
from prelabel_backend.settings import Settings
from tests.conftest import SEED_CONFIG, data_uri, scenes, wait_for

LATE_CONFIG = SEED_CONFIG.replace('model_score_threshold="0.25"', 'model_score_threshold="0.25" model_path="late/detect.pt"')


def test_setup_answers_at_once_for_a_model_not_loaded_yet_and_loads_it_meanwhile(tmp_path: Path) -> None:
    """Fault 1 (label-studio-ml-backend #636, #223, #288): a config whose model_path names weights no
    request loaded yet. Label Studio gives /setup 3 s; the load (an export to ONNX and OpenVINO on a
    first start) takes longer. The first answer comes before the load ends (it lists the file under
    `loading`, which only an answer made while loading can), with the model version the loaded model
    then serves; the load goes on in the background and the next /setup answers from it."""
    root = tmp_path / "models"
    (root / "late").mkdir(parents=True)
    shutil.copy(PACKAGED_WEIGHTS / "shapes-detect.pt", root / "late" / "detect.pt")
    settings = Settings(model_dir=tmp_path / "model-dir", model_root=root, runtime="torch")
    backend = Backend(settings)
    client = create_app(settings, backend, load="none").test_client()
    first = client.post("/setup", json={"project": "7.1", "schema": LATE_CONFIG})
    assert first.status_code == 200
    body = first.get_json()
    assert body["loading"] == ["late/detect.pt"] and body["compatible"] is True
    assert body["model_version"].startswith("prelabel-") and "late/detect.pt" in body["warnings"][0]
    wait_for("the background load", lambda: backend.store.ready("late/detect.pt"), timeout=120)
    second = client.post("/setup", json={"project": "7.1", "schema": LATE_CONFIG}).get_json()
    assert "loading" not in second and second["compatible"] is True
    assert second["model_version"] == body["model_version"]  # what the first answer promised
    # /predict with the schema /setup kept, on the model loaded meanwhile.
    scene = scenes(29, 1)[0]
    answer = client.post("/predict", json={"project": "7.1", "tasks": [{"id": 1, "data": {"image": data_uri(scene.image)}}]})
    assert answer.status_code == 200 and answer.get_json()["results"][0]["model_version"] == body["model_version"]


def test_a_model_that_fails_to_load_in_the_background_is_named_by_the_next_setup(tmp_path: Path) -> None:
    root = tmp_path / "models"
    (root / "late").mkdir(parents=True)
    (root / "late" / "detect.pt").write_bytes(b"not a checkpoint")
    settings = Settings(model_dir=tmp_path / "model-dir", model_root=root, runtime="torch")
    backend = Backend(settings)
    client = create_app(settings, backend, load="none").test_client()
    assert client.post("/setup", json={"project": "7.1", "schema": LATE_CONFIG}).get_json()["loading"] == ["late/detect.pt"]

    def refused() -> dict | None:
        answer = client.post("/setup", json={"project": "7.1", "schema": LATE_CONFIG})
        return answer.get_json() if answer.status_code == 422 else None

    body = wait_for("the load's failure", refused, timeout=60)
    assert "late/detect.pt" in body["error"] and "could not be loaded" in body["error"]


class _Counting(BaseHTTPRequestHandler):
    """A loopback server that serves one PNG at any path and counts the requests it got."""

    body = b""
    hits: ClassVar[list[str]] = []

    def log_message(self, *args) -> None:  # noqa: ANN002
        pass

    def do_GET(self) -> None:
        type(self).hits.append(self.path)
        self.send_response(200)
        self.send_header("Content-Type", "image/png")
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)


def _serve(handler: type[BaseHTTPRequestHandler]) -> ThreadingHTTPServer:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    return httpd


HOSTNAME_AND_CONTEXT = {
    "hostname at the top level": {"hostname": "{other}"},
    "hostname in params": {"params": {"hostname": "{other}"}},
    "hostname as a non-string": {"hostname": 12, "params": {"hostname": ["{other}"]}},
    "context null": {"context": None},
    "params null": {"params": None},
    "context null in params": {"params": {"context": None}},
    "a keypoint click": {"context": {"result": [{"type": "keypointlabels", "from_name": "label", "to_name": "image", "original_width": 96,
                                                 "original_height": 96, "value": {"x": 40.0, "y": 52.5, "width": 0.6,
                                                                                  "keypointlabels": ["Square"]}, "is_positive": True}]}},
    "a click in params": {"params": {"context": {"result": [{"type": "rectanglelabels", "value": {"x": 1, "y": 2}}]}, "login": None,
                                     "password": None}},
    "context not an object": {"context": "click", "params": {"context": [1, 2]}},
}


@pytest.mark.parametrize("extra", HOSTNAME_AND_CONTEXT.values(), ids=list(HOSTNAME_AND_CONTEXT))
def test_hostname_and_interactive_context_in_predict_change_nothing(store, tmp_path: Path, extra: dict) -> None:  # noqa: ANN001
    """Fault 8 (label-studio PR #9649, label-studio #8527): newer Label Studio versions add the caller's
    `hostname` to /predict, and an interactive click sends `context` (or null). The answer is the same
    as without them, media come from LABEL_STUDIO_URL only (never from that hostname), no 5xx."""
    scene = scenes(8, 1)[0]
    label_studio = type("LS", (_Counting,), {"body": synthetic.encode_png(scene.image), "hits": []})
    other = type("Other", (_Counting,), {"body": label_studio.body, "hits": []})
    ls_server, other_server = _serve(label_studio), _serve(other)
    try:
        ls_url = f"http://127.0.0.1:{ls_server.server_address[1]}"
        other_url = f"http://127.0.0.1:{other_server.server_address[1]}"
        settings = Settings(model_dir=tmp_path, label_studio_url=ls_url, label_studio_api_key="k", media_cache_items=0)
        client = create_app(settings, Backend(settings, store), load="none").test_client()
        base = {"project": "5.1", "label_config": SEED_CONFIG, "tasks": [{"id": 1, "data": {"image": "/data/upload/5/a.png"}}]}
        plain = client.post("/predict", json=base)
        assert plain.status_code == 200
        body = {**base, **{k: _fill(v, other_url) for k, v in extra.items()}}
        answer = client.post("/predict", json=body)
        assert answer.status_code == 200, answer.get_json()
        assert answer.get_json() == plain.get_json() and plain.get_json()["results"][0]["result"]
        assert other.hits == [] and label_studio.hits == ["/data/upload/5/a.png"] * 2
    finally:
        for server in (ls_server, other_server):
            server.shutdown()
            server.server_close()


def _fill(value: object, url: str) -> object:
    if isinstance(value, str):
        return value.replace("{other}", url)
    if isinstance(value, dict):
        return {k: _fill(v, url) for k, v in value.items()}
    if isinstance(value, list):
        return [_fill(v, url) for v in value]
    return value


class _Busy(BaseHTTPRequestHandler):
    """Answers `statuses` in turn (the last one for ever after), a PNG with the 200; Retry-After as set."""

    statuses: ClassVar[list[int]] = []
    retry_after = "1"
    body = b""
    hits: ClassVar[list[float]] = []

    def log_message(self, *args) -> None:  # noqa: ANN002
        pass

    def do_GET(self) -> None:
        cls = type(self)
        cls.hits.append(time.monotonic())
        status = cls.statuses[min(len(cls.hits), len(cls.statuses)) - 1]
        body = self.body if status == 200 else b"busy"
        self.send_response(status)
        if status != 200 and self.retry_after:
            self.send_header("Retry-After", self.retry_after)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def _predict_through(store, tmp_path: Path, handler: type[_Busy], retry_seconds: float) -> dict:  # noqa: ANN001
    server = _serve(handler)
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        settings = Settings(model_dir=tmp_path, label_studio_url=url, label_studio_api_key="k", media_retry_seconds=retry_seconds)
        client = create_app(settings, Backend(settings, store), load="none").test_client()
        answer = client.post("/predict", json={"project": "5.1", "label_config": SEED_CONFIG,
                                               "tasks": [{"id": 11, "data": {"image": "/data/upload/5/busy.png"}}]})
        assert answer.status_code == 200
        return answer.get_json()["results"][0]
    finally:
        server.shutdown()
        server.server_close()


def test_a_media_fetch_answered_429_waits_its_retry_after_then_predicts(store, tmp_path: Path) -> None:  # noqa: ANN001
    """Fault 7 (label-studio-ml-backend PR #903): Label Studio (or a storage) under load answers 429
    with Retry-After; the fetch waits that long and tries again, and the task is predicted."""
    handler = type("Busy429", (_Busy,), {"statuses": [429, 200], "retry_after": "1", "hits": [],
                                         "body": synthetic.encode_png(scenes(7, 1)[0].image)})
    result = _predict_through(store, tmp_path, handler, retry_seconds=10)
    assert "errors" not in result and result["result"]
    assert len(handler.hits) == 2 and handler.hits[1] - handler.hits[0] >= 0.9  # it waited Retry-After, not less


def test_a_media_fetch_always_answered_503_fails_the_task_with_the_reason(store, tmp_path: Path) -> None:  # noqa: ANN001
    """...and a server that stays busy: tries within MEDIA_RETRY_SECONDS, then the task carries the reason
    in `errors` (the driver counts it failed and retries it later), never an empty "done" prediction."""
    handler = type("Busy503", (_Busy,), {"statuses": [503], "retry_after": "1", "hits": []})
    result = _predict_through(store, tmp_path, handler, retry_seconds=2)
    assert result["result"] == [] and len(handler.hits) == 3  # the first try and two after a 1 s wait each
    assert "answered HTTP 503" in result["errors"][0] and "MEDIA_RETRY_SECONDS is 2" in result["errors"][0]
    # A Retry-After past what is left is not waited for: the task fails at once with the reason.
    later = type("Busy503Later", (_Busy,), {"statuses": [503], "retry_after": "3600", "hits": []})
    result = _predict_through(store, tmp_path, later, retry_seconds=2)
    assert len(later.hits) == 1 and "asked to wait 3600 s" in result["errors"][0]


@pytest.mark.parametrize(("value", "seconds"), [("3", 3.0), (" 0 ", 0.0), ("Wed, 21 Oct 2015 07:28:10 GMT", 10.0),
                                                ("Wed, 21 Oct 2015 07:27:00 GMT", 0.0), ("soon", None), ("", None), (None, None)])
def test_retry_after_reads_seconds_and_http_dates(value: str | None, seconds: float | None) -> None:
    now = email.utils.parsedate_to_datetime("Wed, 21 Oct 2015 07:28:00 GMT").timestamp()
    assert retry_after(value, now) == seconds
