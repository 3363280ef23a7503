"""HTTP plumbing under the Twilio client: hard deadlines and bounded bodies.

A socket timeout bounds one read, not a response: a server that drips a byte
just inside it holds a thread for ever. So every call runs under a `Deadline`
that one shared watchdog thread enforces by shutting down the call's sockets
when it passes (this covers the status line and headers, which requests reads
on its own), and bodies are read one bounded chunk at a time with the socket
timeout set to the time left, counting bytes against a cap.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import requests
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

READ_CHUNK_BYTES = 64 * 1024
POOL_HOSTS = 4  # distinct hosts whose pools are kept; one client uses one host
_local = threading.local()


class BodyTooLarge(Exception):
    """The body passed the cap; `declared` is True when Content-Length said so up front."""

    def __init__(self, declared: bool) -> None:
        super().__init__("body too large")
        self.declared = declared


class DeadlinePassed(Exception):
    """The call's deadline passed while the body was still arriving."""


class Deadline:
    """One call's deadline, and the connections it used (so they can be cut at it)."""

    __slots__ = ("at", "done", "fired", "_connections", "_lock")

    def __init__(self, at: float) -> None:
        self.at = at
        self.done = False
        self.fired = False
        self._connections: list[HTTPConnection] = []
        self._lock = threading.Lock()

    def remaining(self) -> float:
        return self.at - time.monotonic()

    def passed(self) -> bool:
        return self.fired or time.monotonic() >= self.at

    def attach(self, connection: HTTPConnection) -> None:
        with self._lock:
            if self.fired:
                _shutdown(connection)
            elif connection not in self._connections:
                self._connections.append(connection)

    def fire(self) -> None:
        """Shut down every socket of a call still running (called by the watchdog)."""
        with self._lock:
            if self.done:
                return
            self.fired = True
            for connection in self._connections:
                _shutdown(connection)

    def release(self) -> bool:
        """Stop watching (before a connection goes back to the pool); False if it fired."""
        with self._lock:
            self.done = True
            self._connections.clear()
            return not self.fired


WATCHDOG_TICK_S = 0.05


class Watchdog:
    """One daemon thread that fires each `Deadline` that is still open when it passes."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, Deadline]] = []
        self._order = itertools.count()
        self._wake = threading.Condition()
        self._thread: threading.Thread | None = None

    @contextlib.contextmanager
    def deadline(self, at: float) -> Iterator[Deadline]:
        """Run a call under `at` (a `time.monotonic()` value) on this thread."""
        deadline = Deadline(at)
        with self._wake:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="twilio-watchdog")
                self._thread.daemon = True
                self._thread.start()
            earliest = not self._heap or at < self._heap[0][0]
            heapq.heappush(self._heap, (at, next(self._order), deadline))
            if earliest:
                self._wake.notify()
        previous = getattr(_local, "deadline", None)
        _local.deadline = deadline
        try:
            yield deadline
        finally:
            _local.deadline = previous
            deadline.release()

    def _run(self) -> None:
        # Most deadlines are already done when they pass (the call returned): waking
        # for each would mean a thread switch per request. Waking at most every
        # WATCHDOG_TICK_S and taking every passed deadline at once costs a few
        # switches a second; a deadline fires at most that much late.
        while True:
            with self._wake:
                while not self._heap or self._heap[0][0] > time.monotonic():
                    timeout = self._heap[0][0] - time.monotonic() if self._heap else None
                    self._wake.wait(None if timeout is None else max(timeout, WATCHDOG_TICK_S))
                now = time.monotonic()
                passed = []
                while self._heap and self._heap[0][0] <= now:
                    passed.append(heapq.heappop(self._heap)[2])
            for deadline in passed:
                if not deadline.done:
                    deadline.fire()


WATCHDOG = Watchdog()


def _shutdown(connection: HTTPConnection) -> None:
    sock = getattr(connection, "sock", None)
    if sock is not None:
        with contextlib.suppress(OSError):
            # The plain socket's shutdown: safe while another thread reads, TLS or not.
            socket.socket.shutdown(sock, socket.SHUT_RDWR)


def _attach_current(connection: HTTPConnection) -> None:
    deadline: Deadline | None = getattr(_local, "deadline", None)
    if deadline is not None:
        deadline.attach(connection)


class _Guarded:
    """Registers the connection with the calling thread's deadline before any I/O."""

    def connect(self) -> None:
        _attach_current(self)  # type: ignore[arg-type]
        super().connect()  # type: ignore[misc]

    def request(self, *args: Any, **kwargs: Any) -> None:
        _attach_current(self)  # type: ignore[arg-type]
        super().request(*args, **kwargs)  # type: ignore[misc]


class _GuardedHTTPConnection(_Guarded, HTTPConnection):
    pass


class _GuardedHTTPSConnection(_Guarded, HTTPSConnection):
    pass


class _HTTPPool(HTTPConnectionPool):
    ConnectionCls = _GuardedHTTPConnection


class _HTTPSPool(HTTPSConnectionPool):
    ConnectionCls = _GuardedHTTPSConnection


_POOL_CLASSES = {"http": _HTTPPool, "https": _HTTPSPool}


class GuardedAdapter(HTTPAdapter):
    """An HTTPAdapter whose connections obey the calling thread's `Deadline`."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._pool_keys: dict[Any, Any] = {}  # see build_connection_pool_key_attributes
        super().__init__(*args, **kwargs)

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = _POOL_CLASSES

    def build_connection_pool_key_attributes(
        self, request: Any, verify: Any, cert: Any = None
    ) -> Any:
        """Computed once per host: with a CA bundle path (`REQUESTS_CA_BUNDLE`),
        requests stats it on every request, a tenth of a fetch's CPU."""
        scheme, netloc = urlsplit(request.url)[:2]
        key = (scheme, netloc, verify, cert)
        found = self._pool_keys.get(key)
        if found is None:
            found = super().build_connection_pool_key_attributes(request, verify, cert)
            if len(self._pool_keys) < 64:
                self._pool_keys[key] = found
        host_params, pool_kwargs = found
        return dict(host_params), dict(pool_kwargs)

    def proxy_manager_for(self, proxy: str, **proxy_kwargs: Any) -> Any:
        manager = super().proxy_manager_for(proxy, **proxy_kwargs)
        if not proxy.lower().startswith("socks"):  # SOCKS pools are their own classes
            manager.pool_classes_by_scheme = _POOL_CLASSES
        return manager


def read_body(
    response: requests.Response, *, cap: int, deadline: Deadline, read_timeout_s: float
) -> bytes:
    """The decoded body of a streamed response, at most `cap` bytes, before the deadline.

    Raises `BodyTooLarge` (a Content-Length over the cap is refused unread),
    `DeadlinePassed`, or the transport's own errors. The caller closes the
    response on failure; on success the connection goes back to the pool.
    """
    declared = _content_length(response)
    if declared is not None and declared > cap:
        raise BodyTooLarge(declared=True)
    raw = response.raw
    parts: list[bytes] = []
    total = 0
    while True:
        remaining = deadline.remaining()
        if remaining <= 0 or deadline.fired:
            raise DeadlinePassed
        _set_timeout(raw, min(read_timeout_s, remaining))
        chunk = raw.read1(min(READ_CHUNK_BYTES, cap + 1 - total))
        if not chunk:
            break
        total += len(chunk)
        if total > cap:
            raise BodyTooLarge(declared=False)
        parts.append(chunk)
    # Released first, so the watchdog cannot cut the pooled connection under its next user.
    if not deadline.release():  # cut just as the last byte came: the connection is gone
        raise DeadlinePassed
    raw.release_conn()
    return parts[0] if len(parts) == 1 else b"".join(parts)


def _content_length(response: requests.Response) -> int | None:
    value = response.headers.get("Content-Length")
    if value is None or not value.strip().isdigit():
        return None
    return int(value)


def _set_timeout(raw: Any, seconds: float) -> None:
    connection = getattr(raw, "connection", None)
    sock = getattr(connection, "sock", None)
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.settimeout(seconds)


def build_session(
    username: str, password: str, pool_size: int, user_agent: str
) -> requests.Session:
    session = requests.Session()
    session.auth = (username, password)
    session.headers["User-Agent"] = user_agent
    session.headers["Accept"] = "application/json"
    for prefix in ("https://", "http://"):
        adapter = GuardedAdapter(pool_connections=POOL_HOSTS, pool_maxsize=pool_size, max_retries=0)
        session.mount(prefix, adapter)
    return session


def pin_environment(session: requests.Session, base_url: str) -> None:
    """Resolve proxy and CA-bundle variables once, for the one host this client uses.

    With `trust_env` on, requests re-reads os.environ on every request, which
    costs about a quarter of the CPU of a fetch at the polling rates we run.
    """
    settings = session.merge_environment_settings(base_url, {}, None, None, None)
    session.proxies.update(settings["proxies"])
    session.verify = settings["verify"]
    session.trust_env = False
