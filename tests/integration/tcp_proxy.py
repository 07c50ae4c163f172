"""A loopback TCP proxy for outage tests: it forwards bytes (TLS passes through untouched), and can
`freeze()` the connections open at that moment (they stay open and stop forwarding: a silently dead
watch, as a NAT or load balancer that dropped its state makes one) or `blackhole` new ones (accepted,
never answered: no route, as a client that only sees timeouts)."""

from __future__ import annotations

import contextlib
import socket
import threading
from dataclasses import dataclass, field


@dataclass
class _Pair:
    client: socket.socket
    upstream: socket.socket
    frozen: threading.Event = field(default_factory=threading.Event)


class TcpProxy:
    def __init__(self, target_port: int, target_host: str = "127.0.0.1") -> None:
        self.target = (target_host, target_port)
        self.blackhole = False  # new connections: accepted and held, never forwarded
        self._server = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._server.getsockname()[1])
        self._pairs: list[_Pair] = []
        self._held: list[socket.socket] = []
        self._closed = threading.Event()
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True, name="tcp-proxy").start()

    def connections(self) -> int:
        """Connections open now (forwarding or frozen)."""
        with self._lock:
            return sum(1 for p in self._pairs if p.client.fileno() != -1)

    def freeze(self) -> int:
        """Stops forwarding on every connection open now, keeping each open; returns how many."""
        with self._lock:
            live = [p for p in self._pairs if p.client.fileno() != -1]
            for pair in live:
                pair.frozen.set()
        return len(live)

    def close(self) -> None:
        """Stops listening (connections to its port are refused from now on) and drops every pair.
        The listener is shut down, not only closed: a close leaves an accept() blocked in another
        thread listening, and the next connection would still be forwarded."""
        self._closed.set()
        with contextlib.suppress(OSError):
            self._server.shutdown(socket.SHUT_RDWR)
        with self._lock:
            socks = [self._server, *self._held] + [s for p in self._pairs for s in (p.client, p.upstream)]
        for sock in socks:
            with contextlib.suppress(OSError):
                sock.close()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            if self.blackhole:
                with self._lock:
                    self._held.append(client)
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=5)
                upstream.settimeout(None)
            except OSError:
                client.close()
                continue
            pair = _Pair(client, upstream)
            with self._lock:
                self._pairs.append(pair)
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(pair, src, dst), daemon=True).start()

    def _pump(self, pair: _Pair, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                if pair.frozen.is_set():
                    self._closed.wait()  # hold the connection open, silent, until the proxy closes
                    return
                dst.sendall(data)
        except OSError:
            pass
        if not pair.frozen.is_set():
            for sock in (pair.client, pair.upstream):
                with contextlib.suppress(OSError):
                    sock.close()
