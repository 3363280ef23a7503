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
from urllib.parse import urlencode, urlsplit

import requests
from requests.utils import DEFAULT_CA_BUNDLE_PATH, get_auth_from_url, select_proxy
from urllib3 import BaseHTTPResponse, PoolManager, ProxyManager, Timeout
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.util import make_headers

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


class Pool:
    """Pooled, guarded connections to the one Twilio host a client uses.

    urllib3 directly, not a requests session: per request, requests merges
    settings, hooks, cookies and environment, about a third of a fetch's CPU.
    What requests would read from the environment on every request (proxy
    variables, `REQUESTS_CA_BUNDLE`) is read here, once.
    """

    def __init__(self, base_url: str, pool_size: int, headers: dict[str, str]) -> None:
        self.headers = dict(headers)
        with requests.Session() as session:
            settings = session.merge_environment_settings(base_url, {}, None, None, None)
        kwargs: dict[str, Any] = {"maxsize": pool_size, "block": False, "retries": False}
        verify = settings["verify"]
        if verify is False:
            kwargs["cert_reqs"] = "CERT_NONE"
        else:
            kwargs["cert_reqs"] = "CERT_REQUIRED"
            kwargs["ca_certs"] = verify if isinstance(verify, str) else DEFAULT_CA_BUNDLE_PATH
        proxy = select_proxy(base_url, settings["proxies"])
        self.manager = _manager(proxy, kwargs)
        # Without a proxy, every request goes to one pool: found once, not per request.
        self._direct: HTTPConnectionPool | None = None
        if proxy is None:
            self._direct = self.manager.connection_from_url(base_url)
        self._origin = _origin(base_url)

    def request(
        self,
        method: str,
        url: str,
        *,
        params: dict[str, str] | None,
        data: dict[str, str] | None,
        timeout: tuple[float, float],
    ) -> BaseHTTPResponse:
        """Send one request and return once the headers are in; the body is the caller's."""
        if params:
            url += ("&" if "?" in url else "?") + urlencode(params)
        headers = self.headers
        body = None
        if data is not None:
            headers = {**headers, "Content-Type": "application/x-www-form-urlencoded"}
            body = urlencode(data)
        options: dict[str, Any] = {
            "body": body,
            "headers": headers,
            "retries": False,
            "redirect": False,
            "preload_content": False,
            "decode_content": False,
            "timeout": Timeout(connect=timeout[0], read=timeout[1]),
        }
        if self._direct is not None and url.startswith(self._origin):
            path = url[len(self._origin) :] or "/"
            return self._direct.urlopen(method, path, assert_same_host=False, **options)
        return self.manager.urlopen(method, url, **options)

    def close(self) -> None:
        """Close every pooled connection now: urllib3 2.x leaves a pool open until it
        is garbage collected, and a response kept alive (in a traceback) keeps it."""
        pools = self.manager.pools
        for key in pools.keys():  # noqa: SIM118 (the container cannot be iterated)
            pool = pools.get(key)
            if pool is not None:
                pool.close()
        self.manager.clear()


def _manager(proxy: str | None, kwargs: dict[str, Any]) -> PoolManager:
    if proxy is None:
        manager = PoolManager(num_pools=POOL_HOSTS, **kwargs)
    elif proxy.lower().startswith("socks"):
        from urllib3.contrib.socks import SOCKSProxyManager

        return SOCKSProxyManager(proxy, num_pools=POOL_HOSTS, **kwargs)  # its own pool classes
    else:
        user, password = get_auth_from_url(proxy)
        proxy_headers = make_headers(proxy_basic_auth=f"{user}:{password}") if user else None
        manager = ProxyManager(proxy, num_pools=POOL_HOSTS, proxy_headers=proxy_headers, **kwargs)
    manager.pool_classes_by_scheme = _POOL_CLASSES
    return manager


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


def read_body(
    response: BaseHTTPResponse, *, cap: int, deadline: Deadline, read_timeout_s: float
) -> bytes:
    """The body of a streamed response, at most `cap` bytes, before the deadline.

    Raises `BodyTooLarge` (a Content-Length over the cap is refused unread),
    `DeadlinePassed`, or the transport's own errors. The caller closes the
    response on failure; on success the connection goes back to the pool.
    """
    declared = _content_length(response)
    if declared is not None and declared > cap:
        raise BodyTooLarge(declared=True)
    raw: Any = response
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


def _content_length(response: BaseHTTPResponse) -> int | None:
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
