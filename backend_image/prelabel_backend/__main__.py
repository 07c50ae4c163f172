"""`python -m prelabel_backend`: serve the backend through gunicorn on $HOST:$PORT.

Each worker builds the app and loads its models before it serves (no preload in the master:
torch's thread pool does not survive a fork); /health answers 503 until they are loaded.

Slow clients (slow-loris): gunicorn's gthread worker gives each connection one of THREADS threads
as soon as its first byte arrives, and then reads with no time limit, so THREADS clients sending
their headers a byte at a time would hold every thread. SlowClientSafeWorker reads a new connection's
first request (line, headers, and a body up to PREREAD_BODY_BYTES) in gunicorn's poller instead,
without a thread, and gives each request REQUEST_READ_TIMEOUT seconds in all to arrive; a slower
client is disconnected. The bound: a slow client holds no thread while that arrives; a larger body,
or a kept-alive connection's next request, holds one thread at most REQUEST_READ_TIMEOUT; gunicorn's
worker_connections (1000) caps the connections a worker holds open. While in the poller, a client
silent for longer than gunicorn's keepalive (2 s) is dropped, as gunicorn drops one that sends nothing.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import socket
import sys
import time
from typing import Any

from gunicorn.app.base import BaseApplication
from gunicorn.workers import gthread

from . import memory
from .settings import Settings

HEAD_END = b"\r\n\r\n"
MAX_HEAD_BYTES = 64 * 1024  # read ahead in the poller at most this; gunicorn's own limits refuse larger heads
# A body up to this is read in the poller too (a 1000-task /predict is about 0.2 MiB); a larger one
# is read by a thread, within REQUEST_READ_TIMEOUT. The memory this may hold: worker_connections x this.
PREREAD_BODY_BYTES = 1024 * 1024


class _DeadlineSocket(socket.socket):
    """A client socket whose blocking reads end at `deadline` (time.monotonic()), and whose blocking
    mode is a timeout (`timeout_s`), so no read or send of a request waits forever."""

    timeout_s: float = 30.0
    deadline: float | None = None
    expired = False  # a read reached the deadline: the client is too slow

    @classmethod
    def adopt(cls, sock: socket.socket, timeout_s: float) -> _DeadlineSocket:
        adopted = cls(sock.family, sock.type, sock.proto, fileno=sock.detach())
        adopted.timeout_s = timeout_s
        return adopted

    def setblocking(self, flag: bool) -> None:
        if flag:
            super().settimeout(self.timeout_s)
        else:
            super().setblocking(False)

    def recv(self, bufsize: int, flags: int = 0) -> bytes:
        timeout = self.gettimeout()
        if self.deadline is None or not timeout:  # non-blocking reads (the poller's) return at once
            return super().recv(bufsize, flags)
        remaining = self.deadline - time.monotonic()
        if remaining <= 0:
            self.expired = True
            raise TimeoutError("the request did not arrive within REQUEST_READ_TIMEOUT")
        super().settimeout(min(remaining, timeout))
        try:
            return super().recv(bufsize, flags)
        except TimeoutError:
            self.expired = True
            raise
        finally:
            super().settimeout(timeout)


class _Conn(gthread.TConn):
    """gunicorn's connection, with when it was accepted and the head read so far."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.prelabel_started: float | None = time.monotonic()  # cleared once its first request is read
        self.prelabel_head = b""
        self.prelabel_expired = False

    def close(self, graceful: bool = False) -> None:
        # gunicorn's graceful close lingers up to 2 s on the worker's main thread to drain what the
        # client still sends: a client dropped for being too slow is closed at once instead.
        expired = self.prelabel_expired or getattr(self.sock, "expired", False)
        super().close(graceful=graceful and not expired)


# gthread's answer from handle() that puts a connection back in the poller until more data arrives
# (gunicorn >= 24; a private name: the backend's slow-client test fails if it goes).
_DEFER = getattr(gthread, "_DEFER")  # noqa: B009


class SlowClientSafeWorker(gthread.ThreadWorker):
    """gunicorn's gthread worker, reading a new connection's request head in the poller (see above)."""

    read_timeout: float = 30.0  # REQUEST_READ_TIMEOUT, set by _Server

    def accept(self, listener: Any) -> None:
        try:
            client_sock, client_addr = listener.accept()
        except OSError as e:
            if e.errno not in (errno.EAGAIN, errno.ECONNABORTED, errno.EWOULDBLOCK):
                raise
            return
        self.nr_conns += 1
        self.enqueue_req(_Conn(self.cfg, _DeadlineSocket.adopt(client_sock, self.read_timeout), client_addr, listener.getsockname()))

    def handle(self, conn: Any) -> Any:
        sock = conn.sock
        started = getattr(conn, "prelabel_started", None)  # set at accept, cleared once the first request is read
        if started is not None and not conn.initialized:
            if time.monotonic() - started > self.read_timeout:
                conn.prelabel_expired = True
                return False  # its request took too long to arrive: closed
            if not self._request_arrived(conn):
                conn.data_ready = False
                return _DEFER  # back to the poller until more arrives; no thread waits for it
            conn.init()
            conn.parser.unreader.unread(conn.prelabel_head)
            conn.data_ready = True
        conn.prelabel_started = None
        if isinstance(sock, _DeadlineSocket):  # the first request: from its accept; a kept-alive one: from now
            sock.deadline = (started or time.monotonic()) + self.read_timeout
        try:
            return super().handle(conn)
        finally:
            if isinstance(sock, _DeadlineSocket):
                sock.deadline = None

    def _request_arrived(self, conn: Any) -> bool:
        """Reads what has arrived, without waiting. True once the head and a body of Content-Length up
        to PREREAD_BODY_BYTES are in (or what follows cannot be waited for here: a chunked or larger
        body, Expect: 100-continue, a head over MAX_HEAD_BYTES, a closed connection)."""
        while True:
            need = _bytes_needed(conn.prelabel_head)
            if need is None:
                return True
            try:
                chunk = socket.socket.recv(conn.sock, need, socket.MSG_DONTWAIT)
            except (BlockingIOError, InterruptedError):
                return False
            if not chunk:  # closed: let gunicorn's parser see the end
                return True
            conn.prelabel_head += chunk


def _bytes_needed(buffered: bytes) -> int | None:
    """How many more bytes to read in the poller before a thread takes the request; None: none."""
    end = buffered.find(HEAD_END)
    if end < 0:
        return MAX_HEAD_BYTES - len(buffered) if len(buffered) < MAX_HEAD_BYTES else None
    head = buffered[:end].lower()
    if b"\r\ntransfer-encoding:" in head or b"\r\nexpect:" in head:
        return None
    match = re.search(rb"\r\ncontent-length:[ \t]*(\d{1,12})[ \t]*(?:\r\n|$)", head)
    length = int(match.group(1)) if match else 0
    if length > PREREAD_BODY_BYTES:
        return None
    missing = end + len(HEAD_END) + length - len(buffered)
    return missing if missing > 0 else None


class _Server(BaseApplication):
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        super().__init__()

    def load_config(self) -> None:
        s = self.settings
        SlowClientSafeWorker.read_timeout = s.request_read_timeout
        options: dict[str, Any] = {
            "bind": f"{s.host}:{s.port}",
            "workers": s.workers,
            "threads": s.threads,
            "worker_class": SlowClientSafeWorker,
            "timeout": 300,  # a 32-image request on CPU is seconds; a model load is more
            "graceful_timeout": 30,
            "loglevel": s.log_level.lower(),
            "accesslog": "-",
            # The access log never includes request headers (Authorization stays out of logs).
            "access_log_format": '%(h)s "%(r)s" %(s)s %(b)s %(L)ss',
            "worker_tmp_dir": "/dev/shm" if sys.platform.startswith("linux") else None,
            # gunicorn >= 25's control socket (runtime management through gunicornc) is not used, and
            # it would be written under $HOME/.gunicorn: the image's user has no home, its root is read-only.
            "control_socket_disable": True if "control_socket_disable" in self.cfg.settings else None,
        }
        for key, value in options.items():
            if value is not None:
                self.cfg.set(key, value)

    def load(self) -> Any:
        from .app import create_app

        return create_app(self.settings)


def main() -> None:
    # Before torch is imported (in the workers): OpenMP threads that finished their share sleep instead
    # of spinning. On a shared or CPU-throttled node spinning threads take the time the working ones
    # need: measured on a busy 2-core machine, a small model's call took 116 ms spinning, 12 ms passive.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    # Before any thread starts (the worker is forked from here and keeps it): two malloc arenas, not
    # 8 per core, for the memory bound (memory.py).
    memory.limit_arenas()
    settings = Settings.from_env()
    logging.basicConfig(level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    _Server(settings).run()


if __name__ == "__main__":
    main()
