"""While the backend starts, loads its models and predicts, no connection leaves loopback: every
socket connect and name lookup of the real gunicorn process is recorded through audit hooks."""

from __future__ import annotations

import ast
import ipaddress
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import requests

from prelabel_backend import synthetic
from tests.conftest import SEED_CONFIG, data_uri, scenes

AUDIT = Path(__file__).parent / "egress_audit"


def is_local(address: object) -> bool:
    if isinstance(address, str):  # AF_UNIX path
        return True
    host = address[0] if isinstance(address, tuple) else address
    if host in ("localhost", None):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def test_no_connection_leaves_loopback(tmp_path: Path, start_backend) -> None:  # noqa: ANN001
    scene = scenes(401, 1)[0]
    png = synthetic.encode_png(scene.image)

    class Images(BaseHTTPRequestHandler):
        def log_message(self, *args) -> None:  # noqa: ANN002
            pass

        def do_GET(self) -> None:  # noqa: N802
            self.send_response(200)
            self.send_header("Content-Length", str(len(png)))
            self.end_headers()
            self.wfile.write(png)

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Images)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    audit = tmp_path / "audit.log"
    try:
        backend = start_backend({"PYTHONPATH": str(AUDIT), "PRELABEL_AUDIT_FILE": str(audit), "MEDIA_ALLOWED_HOSTS": "127.0.0.1",
                                 "DEBUG_PLOT": "true"})
        tasks = [{"id": 1, "data": {"image": f"http://127.0.0.1:{httpd.server_address[1]}/a.png"}},
                 {"id": 2, "data": {"image": data_uri(scene.image)}}]
        assert requests.post(f"{backend.url}/setup", json={"project": "1.1", "schema": SEED_CONFIG}, timeout=60).status_code == 200
        results = requests.post(f"{backend.url}/predict", json={"tasks": tasks, "label_config": SEED_CONFIG}, timeout=120).json()["results"]
        assert all(len(r["result"]) == len(scene.shapes) for r in results)
    finally:
        httpd.shutdown()
        httpd.server_close()
    lines = audit.read_text().splitlines()
    media_gets = [line for line in lines if line.startswith("socket.connect") and str(httpd.server_address[1]) in line]
    assert media_gets, "the audit hook saw no connect: it is not recording"
    outside = [line for line in lines if not is_local(ast.literal_eval(line.split(" ", 1)[1]))]
    assert outside == []
