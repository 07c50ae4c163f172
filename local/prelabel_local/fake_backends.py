"""Light stand-ins for many backends at once: for each Service the operator made (kwok marks its
Deployment Available, no pod runs), a small HTTP server on the Service's ClusterIP and port (a
loopback address: see cluster.py) that speaks just enough of Label Studio's ML-backend protocol
for a registration: GET /health, POST /setup, POST /webhook, POST /predict (no predictions).

Hundreds fit in one process (a thread per listening address), where real model servers would not
(about 1 GB each). For the scale and chaos benches and their CI tests; the real backend runs under
kubelet.BackendKubelet.
"""

from __future__ import annotations

import json
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from kubernetes import client, config

from .poller import Poller

SELECTOR = "app.kubernetes.io/managed-by=prelabel-operator"
MODEL_VERSION = "fake-backend"


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    requests: Counter[str]  # path -> count, shared by every server of one FakeBackends


class _Protocol(BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, *args: Any) -> None:
        pass

    def _answer(self, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        path = self.path.split("?")[0].rstrip("/")
        self.server.requests[path] += 1
        self._answer({"status": "UP", "model_class": "FakeBackend"} if path == "/health" else {})

    def do_POST(self) -> None:
        path = self.path.split("?")[0].rstrip("/")
        self.server.requests[path] += 1
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if path == "/setup":
            self._answer({"model_version": MODEL_VERSION})
        elif path == "/predict":
            self._answer({"results": [], "model_version": MODEL_VERSION})
        else:  # /webhook, /train
            self._answer({})


class FakeBackends(Poller):
    """Serves the protocol on the ClusterIP:port of every Service labelled as the operator's, in any
    namespace, from the sync after it gets its ClusterIP until the sync after it is gone. `requests`
    counts the requests per path, over all backends."""

    def __init__(self, kubeconfig: Path, period: float = 0.5) -> None:
        super().__init__(period, "fake-backends")
        self.core = client.CoreV1Api(config.new_client_from_config(str(kubeconfig)))
        self.servers: dict[tuple[str, int], _Server] = {}
        self.requests: Counter[str] = Counter()

    def stop(self) -> None:
        super().stop()
        for address in list(self.servers):
            self._close(address)

    def sync(self) -> None:
        wanted = set()
        for service in self.core.list_service_for_all_namespaces(label_selector=SELECTOR).items:
            spec = service.spec
            if spec and spec.cluster_ip and spec.cluster_ip != "None" and spec.ports:
                wanted.add((spec.cluster_ip, int(spec.ports[0].port)))
        for address in wanted - set(self.servers):
            server = _Server(address, _Protocol)
            server.requests = self.requests
            threading.Thread(target=server.serve_forever, name=f"fake-backend-{address[0]}", daemon=True).start()
            self.servers[address] = server
        for address in set(self.servers) - wanted:
            self._close(address)

    def _close(self, address: tuple[str, int]) -> None:
        server = self.servers.pop(address)
        server.shutdown()
        server.server_close()
