"""Hostile input for the backend, shared by tests/integration/test_backend_hostile.py and
bench/fuzz_bench.py: decompression bombs, hostile media servers, slow clients, schemathesis runs, and
the backend's worker process (its PID and RSS) read from /proc."""

from __future__ import annotations

import contextlib
import http.server
import re
import socket
import struct
import subprocess
import sys
import threading
import zlib
from collections.abc import Iterator
from pathlib import Path

import psutil
import requests

SCHEMATHESIS = Path(sys.executable).with_name("schemathesis")
# The checks every generated request's answer passes: no 5xx, and status, content type and body as
# the backend's openapi.yaml says (what Label Studio relies on).
CHECKS = "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance"


def png_bomb(width: int, height: int) -> bytes:
    """A valid 1-bit grayscale PNG of width x height zeros: a few hundred KB that decode to
    width x height x 3 bytes in BGR (50000x50000: 300 KB claiming 7.5 GB)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    row = b"\0" * (1 + (width + 7) // 8)
    packer = zlib.compressobj(9)
    parts = [packer.compress(row * min(1000, height - start)) for start in range(0, height, 1000)]
    parts.append(packer.flush())
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", b"".join(parts)) + chunk(b"IEND", b"")


@contextlib.contextmanager
def hostile_media_server(files: dict[str, bytes]) -> Iterator[str]:
    """A loopback server: files[path] as they are; /huge streams 200 MB with no Content-Length;
    /loop redirects to itself; /html is a web page. Yields its base URL."""

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.0"  # a body without Content-Length ends when the connection does

        def log_message(self, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            if self.path == "/loop":
                self.send_response(302)
                self.send_header("Location", "/loop")
                self.end_headers()
                return
            if self.path == "/huge":
                self.send_response(200)
                self.send_header("Content-Type", "image/jpeg")
                self.end_headers()
                block = b"\xff" * (1 << 20)
                with contextlib.suppress(OSError):  # the backend hangs up at MEDIA_MAX_BYTES
                    for _ in range(200):
                        self.wfile.write(block)
                return
            body = b"<!doctype html><html><body>not an image</body></html>" if self.path == "/html" else files.get(self.path)
            self.send_response(200 if body is not None else 404)
            self.send_header("Content-Type", "text/html" if self.path == "/html" else "application/octet-stream")
            self.send_header("Content-Length", str(len(body or b"")))
            self.end_headers()
            with contextlib.suppress(OSError):
                self.wfile.write(body or b"")

    class Server(http.server.ThreadingHTTPServer):
        def handle_error(self, request: object, client_address: object) -> None:
            pass  # the backend hangs up on what it refuses: broken pipes are expected

    server = Server(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def worker_pids(master: int) -> list[int]:
    """The gunicorn workers of a master: its children."""
    return sorted(child.pid for child in psutil.Process(master).children())


def rss_mib(pid: int) -> float:
    """Resident set size of one process, MiB."""
    return psutil.Process(pid).memory_info().rss / 2**20


def requests_by_status(url: str) -> dict[str, int]:
    """The backend's own count of answered requests by status code (its /metrics), every route."""
    counts: dict[str, int] = {}
    for line in requests.get(f"{url}/metrics", timeout=30).text.splitlines():
        match = re.match(r'prelabel_backend_requests_total\{route="[^"]*",status="(\d+)"\} ([0-9.e+]+)', line)
        if match:
            counts[match.group(1)] = counts.get(match.group(1), 0) + int(float(match.group(2)))
    return counts


def schemathesis_run(url: str, max_examples: int, seed: int, report: Path, workers: int = 4) -> subprocess.CompletedProcess[str]:
    """schemathesis against the running backend with its own /openapi.yaml: every phase (examples,
    coverage, fuzzing, stateful), positive and negative data, CHECKS on every answer."""
    report.mkdir(parents=True, exist_ok=True)
    return subprocess.run(
        [str(SCHEMATHESIS), "run", f"{url}/openapi.yaml", "--checks", CHECKS, "--max-examples", str(max_examples),
         "--seed", str(seed), "--workers", str(workers), "--mode", "all", "--request-timeout", "120",
         "--suppress-health-check", "all", "--continue-on-failure", "--no-color",
         "--report", "ndjson", "--report-dir", str(report)],
        capture_output=True, text=True, timeout=3600, check=False, cwd=report)  # its cache dir goes there, not in the checkout


def fuzz(url: str, requests_wanted: int, report: Path, max_examples: int = 250, first_seed: int = 15) -> tuple[dict[str, int], list[str]]:
    """schemathesis_run with seed after seed until the backend counted `requests_wanted` more answered
    requests (one run sends a few hundred: hypothesis stops early on small operations). Returns the
    answers to those requests by status (the backend's /metrics) and the output of each failed run."""
    before = requests_by_status(url)
    answered: dict[str, int] = {}
    failures, seed = [], first_seed
    while sum(answered.values()) < requests_wanted:
        run = schemathesis_run(url, max_examples, seed, report / str(seed))
        if run.returncode != 0:
            failures.append(run.stdout[-6000:])
        answered = {status: n - before.get(status, 0) for status, n in requests_by_status(url).items() if n > before.get(status, 0)}
        seed += 1
    return answered, failures


@contextlib.contextmanager
def slow_clients(port: int, heads: int, bodies: int) -> Iterator[list[socket.socket]]:
    """Slow-loris: `heads` connections that sent half a request head, `bodies` that sent a head and
    one byte of a 100 KB body; the caller trickles more with trickle()."""
    socks = []
    try:
        for _ in range(heads):
            sock = socket.create_connection(("127.0.0.1", port))
            sock.sendall(b"GET /health HTTP/1.1\r\nHost: backend\r\n")
            socks.append(sock)
        for _ in range(bodies):
            sock = socket.create_connection(("127.0.0.1", port))
            sock.sendall(b"POST /predict HTTP/1.1\r\nHost: backend\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n{")
            socks.append(sock)
        yield socks
    finally:
        for sock in socks:
            sock.close()


def trickle(socks: list[socket.socket]) -> None:
    """One more byte of each slow request (a header byte, or a body byte)."""
    for sock in socks:
        with contextlib.suppress(OSError):
            sock.sendall(b" ")


def closed_by_server(sock: socket.socket) -> bool:
    """True when the server answered (a 4xx) or hung up on a slow client; False while it still waits."""
    sock.settimeout(2)
    try:
        sock.recv(1 << 16)
        return True
    except TimeoutError:
        return False
    except OSError:
        return True
