"""Keep-alive connections to one receiver, on the standard library's `http.client`.

A notifier posts to one URL, so all it needs is a small stack of open connections to
one host. `http.client` does that at half the CPU of urllib3 and a fifth of
`requests` per request, which matters at a thousand deliveries a second. TLS is
verified against certifi's roots (what `requests` used) or the system's; `HTTP(S)_PROXY`
and `NO_PROXY` are honoured (CONNECT tunnels for https).
"""

from __future__ import annotations

import contextlib
import http.client
import select
import ssl
import threading
import urllib.request
from base64 import b64encode
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit


@dataclass(frozen=True)
class Target:
    scheme: str
    host: str
    port: int
    path: str  # path and query, as sent on the request line

    @classmethod
    def parse(cls, url: str) -> Target:
        parts = urlsplit(url)
        default = 443 if parts.scheme == "https" else 80
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        return cls(parts.scheme, parts.hostname or "", parts.port or default, path)


class ConnectionPool:
    """Idle connections to `target`, most recently used first; at most `size` kept."""

    def __init__(self, url: str, size: int, connect_timeout_s: float) -> None:
        self.target = Target.parse(url)
        self.size = max(1, size)
        self.connect_timeout_s = connect_timeout_s
        self._idle: list[http.client.HTTPConnection] = []
        self._lock = threading.Lock()
        self._proxy = _proxy_for(self.target)
        self._context = _tls_context() if self.target.scheme == "https" else None
        # Through a plain-http proxy the request line names the whole URL.
        self.request_path = self.target.path
        if self._proxy is not None and self.target.scheme == "http":
            t = self.target
            self.request_path = f"http://{_netloc(t.host, t.port)}{t.path}"

    def take(self) -> tuple[http.client.HTTPConnection, bool]:
        """A connection and whether it was reused (a reused one may have gone stale)."""
        with self._lock:
            while self._idle:
                conn = self._idle.pop()
                if _usable(conn):
                    return conn, True
                conn.close()
        return self._new(), False

    def take_new(self) -> http.client.HTTPConnection:
        return self._new()

    def give_back(self, conn: http.client.HTTPConnection) -> None:
        with self._lock:
            if len(self._idle) < self.size:
                self._idle.append(conn)
                return
        conn.close()

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()

    def _new(self) -> http.client.HTTPConnection:
        t, timeout = self.target, self.connect_timeout_s
        if self._proxy is None:
            host, port = t.host, t.port
        else:
            host, port = self._proxy.hostname or "", self._proxy.port or 80
        if t.scheme == "https":
            conn: http.client.HTTPConnection = http.client.HTTPSConnection(
                host, port, timeout=timeout, context=self._context
            )
            if self._proxy is not None:
                conn.set_tunnel(t.host, t.port, headers=_proxy_auth(self._proxy))
        else:
            conn = http.client.HTTPConnection(host, port, timeout=timeout)
        return conn


def proxy_headers(pool: ConnectionPool) -> dict[str, str]:
    """Headers a plain-http request through a proxy needs (its credentials)."""
    if pool._proxy is None or pool.target.scheme != "http":
        return {}
    return _proxy_auth(pool._proxy)


def _usable(conn: http.client.HTTPConnection) -> bool:
    """An idle keep-alive connection with something to read has been closed by the peer."""
    sock = conn.sock
    if sock is None:
        return False
    try:
        readable, _, _ = select.select([sock], [], [], 0)
    except (OSError, ValueError):
        return False
    return not readable


def _proxy_for(target: Target) -> urllib.parse.SplitResult | None:
    proxy = urllib.request.getproxies_environment().get(target.scheme)
    bypass = getattr(urllib.request, "proxy_bypass_environment", None)
    if not proxy or (bypass is not None and bypass(target.host)):
        return None
    parsed = urlsplit(proxy if "://" in proxy else f"http://{proxy}")
    return parsed if parsed.hostname else None


def _proxy_auth(proxy: urllib.parse.SplitResult) -> dict[str, str]:
    if proxy.username is None:
        return {}
    pair = f"{unquote(proxy.username)}:{unquote(proxy.password or '')}".encode()
    return {"Proxy-Authorization": "Basic " + b64encode(pair).decode()}


def _tls_context() -> ssl.SSLContext:
    cafile = None
    with contextlib.suppress(ImportError):
        import certifi

        cafile = certifi.where()
    return ssl.create_default_context(cafile=cafile)


def _netloc(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
