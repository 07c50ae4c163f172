"""Media fetching against a real HTTP server on loopback that records what it was sent."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest

from prelabel_backend import synthetic
from prelabel_backend.media import MediaError, MediaFetcher
from prelabel_backend.settings import Settings

PNG = synthetic.encode_png(synthetic.make_scene(np.random.default_rng(5)).image)
PAT = "eyJhbGciOiJIUzI1NiJ9.eyJ0b2tlbl90eXBlIjoicmVmcmVzaCJ9.c2lnbmF0dXJl"


class Recorder(BaseHTTPRequestHandler):
    seen: ClassVar[list[tuple[str, str, str | None]]] = []  # one handler per request: what they saw, together

    def log_message(self, *args) -> None:  # noqa: ANN002
        pass

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.seen.append(("POST", self.path, json.dumps(body)))
        ok = self.path == "/api/token/refresh/" and body.get("refresh") == PAT
        self._send(200 if ok else 401, json.dumps({"access": "ACCESS-123"}).encode() if ok else b"{}")

    def do_GET(self) -> None:
        self.seen.append(("GET", self.path, self.headers.get("Authorization")))
        if self.path.startswith("/data/upload/"):
            auth = self.headers.get("Authorization")
            self._send(200 if auth in ("Token legacy-key", "Bearer ACCESS-123") else 401, PNG)
        elif self.path.startswith("/big"):
            self._send(200, b"x" * 5000)
        elif self.path.startswith("/tasks/9/presign/"):
            self.send_response(302)
            self.send_header("Location", "/data/upload/1/presigned.png")
            self.end_headers()
        else:
            self._send(200, PNG)

    def _send(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture
def server() -> Iterator[str]:
    Recorder.seen = []
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Recorder)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def test_relative_upload_urls_go_to_label_studio_with_the_legacy_token(server: str) -> None:
    fetcher = MediaFetcher(Settings(label_studio_url=server, label_studio_api_key="legacy-key"))
    image = fetcher.image("/data/upload/1/a.png", 1, "1")
    assert image.shape == (144, 192, 3)
    assert Recorder.seen == [("GET", "/data/upload/1/a.png", "Token legacy-key")]


def test_a_personal_access_token_is_exchanged_for_a_bearer_token_once(server: str) -> None:
    fetcher = MediaFetcher(Settings(label_studio_url=server, label_studio_api_key=PAT))
    fetcher.fetch("/data/upload/1/a.png", 1, "1")
    fetcher.fetch("/data/upload/1/b.png", 2, "1")
    assert [s[:2] for s in Recorder.seen] == [("POST", "/api/token/refresh/"), ("GET", "/data/upload/1/a.png"), ("GET", "/data/upload/1/b.png")]
    assert Recorder.seen[1][2] == "Bearer ACCESS-123"


def test_setup_hostname_and_token_serve_when_env_is_unset(server: str) -> None:
    fetcher = MediaFetcher(Settings())
    with pytest.raises(MediaError, match="set LABEL_STUDIO_URL"):
        fetcher.fetch("/data/upload/1/a.png", 1, "5")
    fetcher.remember_setup("5", server + "/", "legacy-key")
    assert fetcher.fetch("/data/upload/1/a.png", 1, "5") == PNG


def test_other_hosts_need_the_allowlist(server: str) -> None:
    url = server.replace("127.0.0.1", "localhost") + "/photo.png"
    fetcher = MediaFetcher(Settings(label_studio_url=server, label_studio_api_key="legacy-key"))
    with pytest.raises(MediaError, match="MEDIA_ALLOWED_HOSTS"):
        fetcher.fetch(url, 1, "1")
    assert Recorder.seen == []
    allowed = MediaFetcher(Settings(label_studio_url=server, label_studio_api_key="legacy-key", media_allowed_hosts=("localhost",)))
    assert allowed.fetch(url, 1, "1") == PNG
    assert Recorder.seen == [("GET", "/photo.png", None)]  # Label Studio's key is not sent to other hosts


def test_size_limit_and_error_messages_hide_query_strings(server: str) -> None:
    fetcher = MediaFetcher(Settings(media_allowed_hosts=("127.0.0.1",), media_max_bytes=1000))
    with pytest.raises(MediaError) as err:
        fetcher.fetch(f"{server}/big?X-Amz-Signature=secret", 1, None)
    assert "over MEDIA_MAX_BYTES" in str(err.value) and "secret" not in str(err.value)


def test_failed_auth_names_the_setting_to_fix(server: str) -> None:
    fetcher = MediaFetcher(Settings(label_studio_url=server, label_studio_api_key="wrong"))
    with pytest.raises(MediaError, match=r"HTTP 401 \(check LABEL_STUDIO_API_KEY\)"):
        fetcher.fetch("/data/upload/1/a.png", 1, "1")


def test_cloud_uris_go_through_label_studio_presign(server: str) -> None:
    fetcher = MediaFetcher(Settings(label_studio_url=server, label_studio_api_key="legacy-key"))
    assert fetcher.fetch("s3://bucket/key.png", 9, "1") == PNG
    assert Recorder.seen[0][1].startswith("/tasks/9/presign/?fileuri=")


def test_results_are_cached(server: str) -> None:
    fetcher = MediaFetcher(Settings(label_studio_url=server, label_studio_api_key="legacy-key"))
    fetcher.fetch("/data/upload/1/a.png", 1, "1")
    fetcher.fetch("/data/upload/1/a.png", 1, "1")
    assert len(Recorder.seen) == 1


def test_local_files_are_read_under_the_document_root_only(tmp_path: Path) -> None:
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "a.png").write_bytes(PNG)
    fetcher = MediaFetcher(Settings(local_files_document_root=tmp_path, label_studio_url="http://127.0.0.1:9"))
    assert fetcher.fetch("/data/local-files/?d=images/a.png", 1, None) == PNG
    with pytest.raises(MediaError, match="outside LOCAL_FILES_DOCUMENT_ROOT"):
        fetcher.fetch("/data/local-files/?d=../../etc/passwd", 1, None)


def test_unsupported_schemes_are_refused() -> None:
    with pytest.raises(MediaError, match="unsupported media reference scheme 'file'"):
        MediaFetcher(Settings()).fetch("file:///etc/passwd", 1, None)


def _jwt(payload: dict) -> str:
    import base64
    import json

    def part(obj: dict) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).decode().rstrip("=")

    return f"{part({'alg': 'HS256', 'typ': 'JWT'})}.{part(payload)}.c2lnbmF0dXJl"


def test_an_access_token_is_reused_until_shortly_before_its_own_expiry() -> None:
    """A Label Studio may issue access tokens shorter-lived than its 5-minute default: a cached token
    past its `exp` would make every media fetch fail with 401 until the cache's own deadline."""
    from prelabel_backend.media import access_lifetime

    now = 1_000_000.0
    assert access_lifetime(_jwt({"exp": now + 300}), now) == 240.0  # the default lifetime: capped
    assert access_lifetime(_jwt({"exp": now + 60}), now) == 30.0  # a short one: until 30 s before it expires
    assert access_lifetime(_jwt({"exp": now + 10}), now) == 0.0  # nearly expired: refreshed at the next fetch
    assert access_lifetime("not-a-jwt", now) == 240.0 and access_lifetime(_jwt({"sub": 1}), now) == 240.0
