"""The backend's limits on hostile input, in process: its OpenAPI description covers every route,
bodies over MAX_REQUEST_BYTES are 413, bombs are refused from their headers, request types are
checked at the boundary, and the server's slow-client reading (the real process: tests/integration/
test_backend_hostile.py)."""

from __future__ import annotations

import base64
import sys

import pytest
import yaml

from prelabel_backend import __main__ as server
from prelabel_backend.app import OPENAPI, Backend, create_app
from prelabel_backend.media import MediaError, MediaFetcher
from prelabel_backend.settings import Settings
from tests.conftest import SEED_CONFIG, serve_files
from tests.integration.hostile import png_bomb


@pytest.fixture(scope="module")
def client(settings, store):  # noqa: ANN001, ANN201
    backend = Backend(settings, store)
    backend.load_defaults()
    return create_app(settings, backend, load="none").test_client()


def test_the_openapi_description_names_every_route_and_method_the_app_serves(client) -> None:  # noqa: ANN001
    described = yaml.safe_load(OPENAPI.read_text())["paths"]
    app = client.application
    served = {(rule.rule, method.lower()) for rule in app.url_map.iter_rules() if rule.endpoint != "static"
              for method in rule.methods - {"HEAD", "OPTIONS"}}
    assert served == {(path, method) for path, item in described.items() for method in item}
    assert client.get("/openapi.json").get_json()["paths"].keys() == described.keys()
    assert client.get("/openapi.yaml").data == OPENAPI.read_bytes()


@pytest.mark.parametrize("field", ["hostname", "access_token"])
def test_setup_refuses_a_non_string_hostname_or_token(client, field: str) -> None:  # noqa: ANN001
    """Regression: an integer hostname was a 500 (AttributeError on .rstrip)."""
    response = client.post("/setup", json={"project": "1.1", "schema": SEED_CONFIG, field: 5})
    assert response.status_code == 400 and response.get_json()["error"] == f"'{field}' must be a string, got int"


def test_a_body_over_max_request_bytes_is_413_with_the_limit(settings, store) -> None:  # noqa: ANN001
    small = Settings(model_dir=settings.model_dir, max_request_bytes=1000)
    client = create_app(small, Backend(small, store), load="none").test_client()
    response = client.post("/predict", data=b'{"tasks": [], "x": "' + b"x" * 2000 + b'"}', content_type="application/json")
    assert response.status_code == 413 and response.get_json()["error"] == "the request body is over MAX_REQUEST_BYTES (1000 bytes)"


def test_limits_are_read_from_the_environment() -> None:
    settings = Settings.from_env({"MEDIA_MAX_PIXELS": "1000", "MAX_REQUEST_BYTES": "2048", "REQUEST_READ_TIMEOUT": "7.5", "MEDIA_CACHE_BYTES": "0"})
    assert (settings.media_max_pixels, settings.max_request_bytes, settings.request_read_timeout, settings.media_cache_bytes) == (1000, 2048, 7.5, 0)
    assert Settings.from_env({}).media_max_pixels == 89_478_485
    with pytest.raises(ValueError, match="MEDIA_MAX_PIXELS must be an integer"):
        Settings.from_env({"MEDIA_MAX_PIXELS": "lots"})


def inline(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode()


@pytest.mark.parametrize(("size", "reason"), [
    (50000, "claims more than 178956970 pixels (Pillow's decompression-bomb limit"),  # cv2.error before: a 500
    (12000, "is 12000x12000 pixels, over MEDIA_MAX_PIXELS (89478485)"),
])
def test_decompression_bombs_are_refused_from_their_header(size: int, reason: str) -> None:
    with pytest.raises(MediaError, match=reason.replace("(", r"\(").replace(")", r"\)")):
        MediaFetcher(Settings()).image(inline(png_bomb(size, size)), 1, None)


def test_media_max_pixels_also_bounds_what_opencv_alone_reads() -> None:
    fetcher = MediaFetcher(Settings(media_max_pixels=100))
    with pytest.raises(MediaError, match="64x64 pixels, over MEDIA_MAX_PIXELS"):
        fetcher.image(inline(png_bomb(64, 64)), 1, None)


def test_an_unknown_format_is_a_media_error_without_installing_anything() -> None:
    """Regression: ultralytics' patched Image.open pip-installs pi-heif on an unknown format (a 500 offline)."""
    import ultralytics.utils.patches  # noqa: F401  (the patch is applied on import)

    with pytest.raises(MediaError, match="not an image OpenCV can decode"):
        MediaFetcher(Settings()).image(inline(b"definitely not an image"), 1, None)
    assert "pi_heif" not in sys.modules


@pytest.mark.parametrize(("buffered", "needed"), [
    (b"GET /health HTTP/1.1\r\nHost: x\r\n", server.MAX_HEAD_BYTES - 31),  # head incomplete: read on
    (b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n", None),  # complete, no body
    (b"POST /predict HTTP/1.1\r\nContent-Length: 10\r\n\r\n{\"a\"", 6),  # the rest of the body
    (b"POST /predict HTTP/1.1\r\ncontent-length: 4\r\n\r\n{}{}", None),
    (b"POST /predict HTTP/1.1\r\nContent-Length: 99999999\r\n\r\n", None),  # too big to hold: a thread reads it
    (b"POST /predict HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n", None),
    (b"POST /predict HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n", None),  # waits for our 100
])
def test_the_poller_reads_a_request_head_and_small_body_before_a_thread_takes_it(buffered: bytes, needed: int | None) -> None:
    assert server._bytes_needed(buffered) == needed


def test_the_media_cache_holds_at_most_media_cache_bytes() -> None:
    """Without a byte budget, MEDIA_CACHE_ITEMS (64) downloads of MEDIA_MAX_BYTES (50 MiB) could be held: 3.2 GiB."""
    files = {f"/{i}.png": bytes([i]) * 40 for i in range(3)} | {"/big.png": b"b" * 150}
    with serve_files(files) as url:
        fetcher = MediaFetcher(Settings(media_allowed_hosts=("127.0.0.1",), media_cache_items=64, media_cache_bytes=100))
        for path in files:
            assert fetcher.fetch(f"{url}{path}", 1, None) == files[path]
        held = dict(fetcher._cache)
    assert [ref for _, ref in held] == [f"{url}/1.png", f"{url}/2.png"]  # the oldest went; the 150-byte one never fit
    assert sum(map(len, held.values())) <= 100
