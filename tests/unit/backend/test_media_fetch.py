"""Media fetched from loopback servers that record every request: a stand-in Label Studio (served at
the root or under a sub-path, media only with `Authorization: Token abc123`) and another host.
Each case of issue 12 with its right value, and the rule that no other host ever sees the key."""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

from prelabel_backend import synthetic
from prelabel_backend.media import MediaError, MediaFetcher
from prelabel_backend.settings import Settings

PNG = synthetic.encode_png(synthetic.make_scene(np.random.default_rng(7)).image)
KEY = "abc123"


@dataclass
class Server:
    url: str
    seen: list[tuple[str, str | None]] = field(default_factory=list)  # (path, Authorization)
    routes: dict[str, tuple[int, dict[str, str], bytes]] = field(default_factory=dict)  # path -> (status, headers, body)
    needs_key: bool = False


def _serve(server: Server, httpd_holder: list[ThreadingHTTPServer]) -> None:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args) -> None:  # noqa: ANN002
            pass

        def do_GET(self) -> None:
            auth = self.headers.get("Authorization")
            server.seen.append((self.path, auth))
            status, headers, body = server.routes.get(self.path, (404, {}, b""))
            if server.needs_key and auth != f"Token {KEY}":
                status, headers, body = 401, {}, b"{}"
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd_holder.append(httpd)
    server.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    threading.Thread(target=httpd.serve_forever, daemon=True).start()


@pytest.fixture
def servers() -> Iterator[tuple[Server, Server]]:
    """(Label Studio, another host); the other host is reached as `localhost`."""
    held: list[ThreadingHTTPServer] = []
    ls, other = Server("", needs_key=True), Server("")
    _serve(ls, held)
    _serve(other, held)
    yield ls, other
    for httpd in held:
        httpd.shutdown()
        httpd.server_close()
    # The rule behind every case: the key never reaches a host that is not Label Studio's.
    assert all(auth is None for _, auth in other.seen), other.seen


def fetcher(ls_url: str, **settings) -> MediaFetcher:  # noqa: ANN003
    return MediaFetcher(Settings(label_studio_url=ls_url.rstrip("/"), label_studio_api_key=KEY, media_cache_items=0, **settings))


def test_case1_sub_path_is_not_doubled(servers) -> None:  # noqa: ANN001
    ls, _ = servers
    ls.routes["/ls/data/upload/1/a.png"] = (200, {}, PNG)
    media = fetcher(ls.url + "/ls")
    for ref in ("/data/upload/1/a.png", "/ls/data/upload/1/a.png", "upload/1/a.png", ls.url + "/ls/data/upload/1/a.png"):
        assert media.fetch(ref, 1, "1") == PNG
    assert {path for path, _ in ls.seen} == {"/ls/data/upload/1/a.png"}


def test_case1_a_404_on_label_studio_names_the_sub_path_to_check(servers) -> None:  # noqa: ANN001
    ls, _ = servers
    with pytest.raises(MediaError, match=r"HTTP 404.*sub-path"):
        fetcher(ls.url).fetch("/data/upload/1/missing.png", 1, "1")


def test_case2_public_host_links_reach_label_studio_url_with_the_key(servers) -> None:  # noqa: ANN001
    ls, _ = servers
    ls.routes["/data/upload/1/a.png"] = (200, {}, PNG)
    ls.routes["/tasks/4/resolve/?fileuri=czM6Ly9i"] = (200, {}, PNG)
    media = fetcher(ls.url, label_studio_public_urls=("https://labelstudio.example.com",))
    assert media.fetch("https://labelstudio.example.com/data/upload/1/a.png", 1, "1") == PNG
    assert media.fetch("https://labelstudio.example.com/tasks/4/resolve/?fileuri=czM6Ly9i", 4, "1") == PNG
    assert ls.seen == [("/data/upload/1/a.png", f"Token {KEY}"), ("/tasks/4/resolve/?fileuri=czM6Ly9i", f"Token {KEY}")]


def test_case2_the_hostname_setup_sends_is_a_public_address_too(servers) -> None:  # noqa: ANN001
    ls, _ = servers
    ls.routes["/data/upload/1/a.png"] = (200, {}, PNG)
    media = fetcher(ls.url)
    with pytest.raises(MediaError, match="neither Label Studio's"):
        media.fetch("https://labelstudio.example.com/data/upload/1/a.png", 1, "3")
    media.remember_setup("3", "https://labelstudio.example.com", "setup-token")
    assert media.fetch("https://labelstudio.example.com/data/upload/1/a.png", 1, "3") == PNG
    assert ls.seen == [("/data/upload/1/a.png", f"Token {KEY}")]  # LABEL_STUDIO_URL's key, not /setup's


def test_setup_hostname_never_receives_the_env_key(servers) -> None:  # noqa: ANN001
    """Without LABEL_STUDIO_URL, /setup's hostname is used with /setup's own token only: whoever calls
    /setup must not be able to choose where LABEL_STUDIO_API_KEY goes."""
    _, other = servers
    other.routes["/data/upload/1/a.png"] = (200, {}, PNG)
    media = MediaFetcher(Settings(label_studio_api_key=KEY, media_cache_items=0))
    media.remember_setup("5", other.url.replace("127.0.0.1", "localhost"), None)
    assert media.fetch("/data/upload/1/a.png", 1, "5") == PNG
    assert other.seen == [("/data/upload/1/a.png", None)]


def test_case3_local_files_in_every_form_resolve_to_the_same_file(servers, tmp_path: Path) -> None:  # noqa: ANN001
    ls, _ = servers
    (tmp_path / "set 1").mkdir()
    (tmp_path / "set 1" / "a b+c.png").write_bytes(PNG)
    (tmp_path / "set 1" / "plain.png").write_bytes(PNG[::-1])
    (tmp_path / "set 1" / "a b c.png").write_bytes(b"the wrong file")
    media = fetcher(ls.url, local_files_document_root=tmp_path, label_studio_public_urls=("https://labelstudio.example.com",))
    for ref in ("/data/local-files/?d=set 1/a b+c.png", "/data/local-files/?d=set%201/a%20b%2Bc.png",
                f"{ls.url}/data/local-files/?d=set%201/a%20b%2Bc.png", "https://labelstudio.example.com/data/local-files/?d=set%201/a%20b%2Bc.png"):
        assert media.fetch(ref, 1, "1") == PNG, ref
    assert media.fetch(f"{ls.url}/data/local-files/?d=set%201/plain.png", 1, "1") == PNG[::-1]
    assert media.fetch("/data/local-files/?d=set+1/plain.png", 1, "1") == PNG[::-1]  # form-encoded: "+" was a space
    assert ls.seen == []  # read from disk, never over HTTP
    with pytest.raises(MediaError, match=r"'set 1/missing.png' not found under LOCAL_FILES_DOCUMENT_ROOT"):
        media.fetch("/data/local-files/?d=set%201/missing.png", 1, "1")
    with pytest.raises(MediaError, match="outside LOCAL_FILES_DOCUMENT_ROOT"):
        media.fetch("/data/local-files/?d=../../etc/passwd", 1, "1")


def test_case3_without_a_root_label_studio_serves_local_files_encoded_as_it_writes_them(servers) -> None:  # noqa: ANN001
    ls, _ = servers
    ls.routes["/data/local-files/?d=set%201/a%20b%2Bc.png"] = (200, {}, PNG)
    assert fetcher(ls.url).fetch("/data/local-files/?d=set 1/a b+c.png", 1, "1") == PNG
    ls.routes["/data/local-files/?d=set%201/plain.png"] = (200, {}, PNG)
    assert fetcher(ls.url).fetch("/data/local-files/?d=set+1/plain.png", 1, "1") == PNG  # the literal reading 404s first
    assert [path for path, _ in ls.seen] == ["/data/local-files/?d=set%201/a%20b%2Bc.png",
                                              "/data/local-files/?d=set%2B1/plain.png", "/data/local-files/?d=set%201/plain.png"]


def test_case4_redirects_are_followed_hop_by_hop_within_the_allow_list(servers) -> None:  # noqa: ANN001
    ls, other = servers
    other.routes["/a.png"] = (302, {"Location": "/new/a.png"}, b"")
    other.routes["/new/a.png"] = (200, {}, PNG)
    other.routes["/away.png"] = (302, {"Location": "http://169.254.169.254/latest/meta-data"}, b"")
    other.routes["/loop.png"] = (302, {"Location": "/loop.png"}, b"")
    media = fetcher(ls.url, media_allowed_hosts=("localhost",))
    host = other.url.replace("127.0.0.1", "localhost")
    assert media.fetch(host + "/a.png", 1, "1") == PNG
    with pytest.raises(MediaError, match=re.escape("to host '169.254.169.254' refused")):
        media.fetch(host + "/away.png", 1, "1")
    with pytest.raises(MediaError, match="more than 5 redirects"):
        media.fetch(host + "/loop.png", 1, "1")


def test_case4_label_studio_presign_redirects_to_storage_without_the_key(servers) -> None:  # noqa: ANN001
    ls, other = servers
    signed = other.url.replace("127.0.0.1", "localhost") + "/bucket/a.png?X-Amz-Signature=s3cr3t"
    other.routes["/bucket/a.png?X-Amz-Signature=s3cr3t"] = (200, {}, PNG)
    media = fetcher(ls.url)
    ls.needs_key = False  # the stand-in answers the presign redirect whatever the header; the key is checked below
    ls.routes["/tasks/9/presign/?fileuri=czM6Ly9idWNrZXQvYS5wbmc%3D"] = (302, {"Location": signed}, b"")
    assert media.fetch("s3://bucket/a.png", 9, "1") == PNG
    assert ls.seen[0][1] == f"Token {KEY}" and other.seen == [("/bucket/a.png?X-Amz-Signature=s3cr3t", None)]


def test_no_label_studio_key_to_any_other_host(servers) -> None:  # noqa: ANN001
    """The same host on another port, an allowed host, a redirect from Label Studio to it: no key.
    (The fixture asserts it for every test of this module.)"""
    ls, other = servers
    other.routes["/photo.png"] = (200, {}, PNG)
    ls.routes["/data/upload/1/moved.png"] = (302, {"Location": other.url + "/photo.png"}, b"")
    media = fetcher(ls.url, media_allowed_hosts=("127.0.0.1",))
    assert media.fetch(other.url + "/photo.png", 1, "1") == PNG  # 127.0.0.1 but not Label Studio's port
    assert media.fetch("/data/upload/1/moved.png", 1, "1") == PNG
    assert [auth for _, auth in ls.seen] == [f"Token {KEY}"]
    assert [auth for _, auth in other.seen] == [None, None]


def test_a_refusal_by_another_host_does_not_blame_the_key(servers) -> None:  # noqa: ANN001
    ls, other = servers
    other.routes["/private.png"] = (401, {}, b"")
    with pytest.raises(MediaError) as err:
        fetcher(ls.url, media_allowed_hosts=("localhost",)).fetch(other.url.replace("127.0.0.1", "localhost") + "/private.png", 1, "1")
    assert "LABEL_STUDIO_API_KEY" not in str(err.value) and "no key is sent" in str(err.value)


def test_a_public_host_listed_as_an_ordinary_host_gets_no_key_and_the_error_says_where_to_list_it(servers) -> None:  # noqa: ANN001
    """Case 2's old workaround (MEDIA_ALLOWED_HOSTS) sends no key; the 401 no longer blames the key."""
    ls, other = servers
    other.needs_key = True
    public = other.url.replace("127.0.0.1", "localhost")
    with pytest.raises(MediaError) as err:
        fetcher(ls.url, media_allowed_hosts=("localhost",)).fetch(public + "/data/upload/1/a.png", 1, "1")
    assert "check LABEL_STUDIO_API_KEY" not in str(err.value) and "LABEL_STUDIO_PUBLIC_URLS" in str(err.value)
