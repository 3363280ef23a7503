"""A listener with bounded cost: one selector thread, a fixed pool of workers, a connection cap.

The standard library's threading server gives every connection a thread for as
long as the client keeps it open, so 800 idle connections cost hundreds of
threads. Here a connection costs a thread only once its request headers have
arrived complete: the selector thread accepts, reads headers without blocking
and drops connections that stay silent or slow past `header_timeout_s`; a fixed
number of workers then parse and answer, one request per connection. Past
`max_connections` the oldest connection still sending headers is dropped to make
room, so a flood of idle sockets cannot lock out a health probe.
"""

from __future__ import annotations

import contextlib
import io
import logging
import queue
import selectors
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

logger = logging.getLogger("monitor.http")

DEFAULT_WORKERS = 8
DEFAULT_MAX_CONNECTIONS = 256
HEADER_TIMEOUT_S = 10.0  # accept to complete headers
BODY_TIMEOUT_S = 10.0  # the body, once a worker reads it
MAX_HEADER_BYTES = 64 * 1024
_LISTEN_BACKLOG = 128
_BUSY = b"HTTP/1.0 503 Service Unavailable\r\nContent-Length: 5\r\nConnection: close\r\n\r\nbusy\n"
_TOO_BIG = b"HTTP/1.0 431 Request Header Fields Too Large\r\nContent-Length: 0\r\n\r\n"


@dataclass(eq=False)
class Connection:
    """An accepted socket and the bytes read from it so far."""

    sock: socket.socket
    address: tuple[str, int]
    accepted_at: float
    head: bytearray = field(default_factory=bytearray)

    def headers_complete(self) -> bool:
        return b"\r\n\r\n" in self.head or b"\n\n" in self.head


class _PrefixedReader(io.RawIOBase):
    """What the selector already read, then the socket, all within one deadline."""

    def __init__(self, head: bytes, sock: socket.socket, deadline: float) -> None:
        self._head = memoryview(head)
        self._sock = sock
        self._deadline = deadline

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        if self._head:
            n = min(len(buffer), len(self._head))
            buffer[:n] = self._head[:n]
            self._head = self._head[n:]
            return n
        left = self._deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("the request did not arrive in time")
        self._sock.settimeout(left)
        return self._sock.recv_into(buffer)


Serve = Callable[[Connection, io.BufferedIOBase], None]


class BoundedListener:
    """Accept on `address`, hand each complete request head to `serve` on a worker thread.

    `serve` owns the connection's reply; the socket is closed after it returns.
    """

    def __init__(
        self,
        address: tuple[str, int],
        serve: Serve,
        *,
        workers: int = DEFAULT_WORKERS,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        header_timeout_s: float = HEADER_TIMEOUT_S,
        body_timeout_s: float = BODY_TIMEOUT_S,
        poll_s: float = 0.5,
    ) -> None:
        self._serve = serve
        self.max_connections = max_connections
        self.header_timeout_s = header_timeout_s
        self.body_timeout_s = body_timeout_s
        self._poll_s = poll_s
        family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self._sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self._sock.bind(address)
            self._sock.listen(_LISTEN_BACKLOG)
        except OSError:
            self._sock.close()
            raise
        self._sock.setblocking(False)
        self.server_address: tuple[str, int] = self._sock.getsockname()[:2]
        self._selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._waiting: dict[socket.socket, Connection] = {}  # insertion order = oldest first
        self._work: queue.Queue[Connection | None] = queue.Queue()
        self._lock = threading.Lock()
        self._open = 0  # connections accepted and not yet closed
        self._stopping = threading.Event()
        self._threads = [
            threading.Thread(target=self._work_loop, name=f"monitor-http-worker-{i}", daemon=True)
            for i in range(workers)
        ]
        for thread in self._threads:
            thread.start()

    @property
    def open_connections(self) -> int:
        with self._lock:
            return self._open

    def serve_forever(self) -> None:
        """The selector loop; returns after `shutdown()`."""
        self._selector.register(self._sock, selectors.EVENT_READ)
        self._selector.register(self._wake_r, selectors.EVENT_READ)
        try:
            while not self._stopping.is_set():
                for key, _ in self._selector.select(timeout=self._poll_s):
                    if key.fileobj is self._sock:
                        self._accept()
                    elif key.fileobj is self._wake_r:
                        self._drain_wake()
                    else:
                        self._read_head(self._waiting[key.fileobj])  # type: ignore[index]
                self._expire(time.monotonic())
        finally:
            self._close_waiting()

    def shutdown(self, join_timeout_s: float = 2.0) -> None:
        """Stop accepting, drop connections still sending, let workers finish what they hold."""
        self._stopping.set()
        with contextlib.suppress(OSError):
            self._wake_w.send(b"x")
        for _ in self._threads:
            self._work.put(None)
        deadline = time.monotonic() + join_timeout_s
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))

    def server_close(self) -> None:
        for s in (self._sock, self._wake_r, self._wake_w):
            s.close()
        self._selector.close()

    # -- the selector thread ------------------------------------------------------

    def _accept(self) -> None:
        while True:
            try:
                sock, address = self._sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # e.g. EMFILE: keep serving those already open
                logger.warning("accept failed: %s", exc, extra={"event": "http.accept_failed"})
                return
            if self.open_connections >= self.max_connections and not self._evict_oldest():
                _send_quietly(sock, _BUSY)
                sock.close()
                continue
            sock.setblocking(False)
            conn = Connection(sock, address, time.monotonic())
            with self._lock:
                self._open += 1
            self._waiting[sock] = conn
            self._selector.register(sock, selectors.EVENT_READ)

    def _evict_oldest(self) -> bool:
        if not self._waiting:
            return False
        self._drop(next(iter(self._waiting.values())))
        return True

    def _read_head(self, conn: Connection) -> None:
        try:
            data = conn.sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self._drop(conn)
            return
        conn.head += data
        if conn.headers_complete():
            self._selector.unregister(conn.sock)
            del self._waiting[conn.sock]
            self._work.put(conn)
        elif len(conn.head) > MAX_HEADER_BYTES:
            _send_quietly(conn.sock, _TOO_BIG)
            self._drop(conn)

    def _expire(self, now: float) -> None:
        for conn in list(self._waiting.values()):
            if now - conn.accepted_at < self.header_timeout_s:
                break  # oldest first: the rest are younger
            self._drop(conn)

    def _drop(self, conn: Connection) -> None:
        self._selector.unregister(conn.sock)
        del self._waiting[conn.sock]
        self._close(conn.sock)

    def _close(self, sock: socket.socket) -> None:
        try:
            sock.close()
        finally:
            with self._lock:
                self._open -= 1

    def _close_waiting(self) -> None:
        for conn in list(self._waiting.values()):
            self._drop(conn)

    def _drain_wake(self) -> None:
        try:
            while self._wake_r.recv(512):
                pass
        except (BlockingIOError, InterruptedError, OSError):
            pass

    # -- the workers ------------------------------------------------------------

    def _work_loop(self) -> None:
        while True:
            conn = self._work.get()
            if conn is None:
                return
            try:
                conn.sock.settimeout(self.body_timeout_s)  # blocking, but never forever
                deadline = time.monotonic() + self.body_timeout_s
                raw = _PrefixedReader(bytes(conn.head), conn.sock, deadline)
                reader: io.BufferedIOBase = io.BufferedReader(raw)
                self._serve(conn, reader)
            except Exception:
                logger.exception("serving a request failed", extra={"event": "http.worker_failed"})
            finally:
                with contextlib.suppress(OSError):
                    conn.sock.shutdown(socket.SHUT_WR)
                self._close(conn.sock)


def _send_quietly(sock: socket.socket, data: bytes) -> None:
    try:
        sock.setblocking(False)
        sock.send(data)
    except OSError:
        pass
