"""Many light stand-in ML backends in one process, for scale tests: 500 real model servers do not fit
on this machine, and what is measured there is the operator, Label Studio and the API server.

It watches the Services the operator makes (kwok clusters' Service range is loopback, cluster.py)
and listens on each one's ClusterIP:port as it appears, answering Label Studio's ML-backend protocol
as the real backend does for the seed's config (`/health`, `/setup`, `/predict` with no regions,
`/webhook`), so Label Studio registers and connects them. A deleted Service closes its listener.

`python -m prelabel_local.fake_backends --kubeconfig PATH`; `FakeBackends` runs it as a recorded
process (processes.spawn). Every `--report` seconds it logs "serving N addresses, M requests".
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

from kubernetes import client, config, watch

from . import processes
from .cluster import stop_group

SELECTOR = "app.kubernetes.io/managed-by=prelabel-operator"
MODEL_VERSION = "fake-backend-1"
log = logging.getLogger("fake-backends")


def answer(method: str, path: str, body: bytes) -> tuple[int, dict[str, Any]]:
    """(HTTP status, JSON body) for one request of Label Studio's ML-backend protocol."""
    path = path.split("?", 1)[0].rstrip("/") or "/"
    if method == "GET" and path in ("/health", "/"):
        return 200, {"status": "UP", "model_class": "FakeBackend"}
    if method == "POST" and path == "/setup":
        return 200, {"model_version": MODEL_VERSION, "compatible": True, "warnings": []}
    if method == "POST" and path == "/predict":
        try:
            tasks = json.loads(body or b"{}").get("tasks") or []
        except (ValueError, AttributeError):
            return 400, {"error": "the body is not a JSON object"}
        return 200, {"results": [{"result": [], "score": 0.0, "model_version": MODEL_VERSION} for _ in tasks]}
    if method == "POST" and path == "/webhook":
        return 200, {"status": "ok"}
    return 404, {"error": f"no {method} {path}"}


class Server:
    """The listeners, one per (ClusterIP, port), on one asyncio loop."""

    def __init__(self) -> None:
        self.listeners: dict[tuple[str, int], asyncio.base_events.Server] = {}
        self.requests = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:  # keep-alive: Label Studio's requests session reuses connections
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                method, path, _ = lines[0].split(" ", 2)
                headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)}
                body = await reader.readexactly(int(headers.get("content-length") or 0))
                status, payload = answer(method, path, body)
                self.requests += 1
                data = json.dumps(payload).encode()
                writer.write(f"HTTP/1.1 {status} {'OK' if status < 400 else 'Error'}\r\nContent-Type: application/json\r\n"
                             f"Content-Length: {len(data)}\r\n\r\n".encode() + data)
                await writer.drain()
                if headers.get("connection", "").lower() == "close":
                    break
        except (asyncio.IncompleteReadError, ConnectionError, ValueError, asyncio.LimitOverrunError):
            pass
        finally:
            writer.close()

    async def listen(self, host: str, port: int) -> None:
        if (host, port) not in self.listeners:
            self.listeners[(host, port)] = await asyncio.start_server(self.handle, host, port, reuse_address=True)

    async def close(self, host: str, port: int) -> None:
        listener = self.listeners.pop((host, port), None)
        if listener is not None:
            listener.close()


def _watch_services(kubeconfig: str, loop: asyncio.AbstractEventLoop, server: Server) -> None:
    """Follows the operator's Services (list, then watch; again after the watch ends) and opens or
    closes listeners on the loop."""
    core = client.CoreV1Api(config.new_client_from_config(kubeconfig))
    while True:
        try:
            for event in watch.Watch().stream(core.list_service_for_all_namespaces, label_selector=SELECTOR, timeout_seconds=300):
                service = event["object"]
                ip = service.spec.cluster_ip if service.spec else None
                if not ip or ip == "None" or not service.spec.ports:
                    continue
                port = int(service.spec.ports[0].port)
                action = server.close if event["type"] == "DELETED" else server.listen
                asyncio.run_coroutine_threadsafe(action(ip, port), loop).result()
        except Exception as exc:  # noqa: BLE001 - a dropped watch: list and watch again
            log.warning("service watch ended (%s: %s); watching again", type(exc).__name__, exc)
            threading.Event().wait(1)


async def serve(kubeconfig: str, report: float) -> None:
    server = Server()
    loop = asyncio.get_running_loop()
    threading.Thread(target=_watch_services, args=(kubeconfig, loop, server), daemon=True, name="services").start()
    while True:
        await asyncio.sleep(report)
        log.info("serving %d addresses, %d requests", len(server.listeners), server.requests)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kubeconfig", required=True)
    parser.add_argument("--report", type=float, default=10.0, help="seconds between two log lines of counts")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    asyncio.run(serve(args.kubeconfig, args.report))


class FakeBackends:
    """The stand-in backends as a recorded process (stopped by `stop()`, or by `prelabel down`)."""

    def __init__(self, kubeconfig: Path, log_path: Path) -> None:
        self.kubeconfig, self.log = kubeconfig, log_path
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> FakeBackends:
        self.proc = processes.spawn("fake-backends", [sys.executable, "-m", "prelabel_local.fake_backends", "--kubeconfig", str(self.kubeconfig)],
                                    log=self.log)
        return self

    def stop(self) -> None:
        if self.proc is not None:
            stop_group(self.proc)
            self.proc = None


if __name__ == "__main__":
    main()
