"""POST a body to a URL once and say whether to retry: the HTTP seam of every notifier.

Webhooks, Slack, Teams and PagerDuty all go through `HttpPoster`. Every outcome
becomes a 2xx status or a `DeliveryError` whose flags drive the dispatcher; nothing
here retries. A misbehaving receiver (silent, trickling, huge, redirecting) costs one
attempt at most about `timeout_s` and `max_response_bytes`. urllib3 is used directly
(pooled keep-alive connections, no redirects): `requests` costs several times more
CPU per request, which is most of the budget at a thousand deliveries a second.
`HTTP(S)_PROXY` and `NO_PROXY` are honoured as `requests` would.
"""

from __future__ import annotations

import email.utils
import math
import re
import time
import urllib.request
from base64 import b64encode
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import unquote, urljoin, urlsplit, urlunsplit

import urllib3
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

from monitor import __version__
from monitor.notify import deadline
from monitor.notify.base import DeliveryError

USER_AGENT = f"conference-monitor/{__version__}"
DEFAULT_TIMEOUT_S = 10.0
MAX_CONNECT_TIMEOUT_S = 5.0
DEFAULT_MAX_RESPONSE_BYTES = 65536
# A receiver may ask for a pause, not for the notifier to stop for good.
MAX_RETRY_AFTER_S = 86400.0
_READ_CHUNK_BYTES = 16384
_DETAIL_CHARS = 200
# A header value, password or query this long may be a credential: scrubbed from errors.
_SCRUB_MIN_CHARS = 8
_TOKEN_RE = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
_CONTROLLED_HEADERS = frozenset({"content-type", "content-length", "host", "transfer-encoding"})


class HttpPoster:
    """One URL, pooled connections to it, and the rules that turn answers into outcomes.

    `display` is what logs and errors call the URL: without credentials or query,
    and for a URL that is itself the secret (Slack, Teams) just scheme and host.
    """

    def __init__(
        self,
        name: str,
        url: str,
        *,
        display: str,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
        pool_size: int = 4,
        scrub: tuple[str, ...] = (),
        clock: Callable[[], float] | None = None,
    ) -> None:
        check_url(name, url)
        if not (math.isfinite(timeout_s) and timeout_s > 0):
            raise ValueError(f"notifier {name!r}: timeout_s must be a positive number")
        if max_response_bytes < 0:
            raise ValueError(f"notifier {name!r}: max_response_bytes must not be negative")
        self.name = name
        self.display = display
        self.timeout_s = float(timeout_s)
        self.max_response_bytes = max_response_bytes
        self._clock = clock
        parts = urlsplit(url)
        netloc = parts.hostname or ""
        netloc = f"[{netloc}]" if ":" in netloc else netloc
        netloc += f":{parts.port}" if parts.port is not None else ""
        self._url = urlunsplit((parts.scheme, netloc, parts.path or "/", parts.query, ""))
        self._auth = _basic_auth(parts.username, parts.password)
        self._scrub = _scrub_values(url, scrub)
        self._manager = _manager_for(self._url, max(1, pool_size))

    def post(self, body: bytes, headers: Mapping[str, str]) -> int:
        """POST once; the 2xx status, or `DeliveryError` saying whether to retry."""
        sent = {"User-Agent": USER_AGENT, "Accept-Encoding": "identity", **self._auth, **headers}
        status, location, retry_after, head = self._exchange(body, sent)
        return self._outcome(status, location, retry_after, head)

    def close(self) -> None:
        self._manager.clear()

    def _exchange(
        self, body: bytes, headers: dict[str, str]
    ) -> tuple[int, str | None, str | None, bytes]:
        """One POST under the overall deadline: status, Location, Retry-After, start of body."""
        timeout = urllib3.Timeout(
            connect=min(self.timeout_s, MAX_CONNECT_TIMEOUT_S), read=self.timeout_s
        )
        with deadline.start(self.timeout_s) as limit:
            try:
                response = self._manager.urlopen(
                    "POST",
                    self._url,
                    body=body,
                    headers=headers,
                    retries=False,
                    redirect=False,
                    preload_content=False,
                    timeout=timeout,
                )
            except (urllib3.exceptions.HTTPError, OSError) as exc:
                # `from None`: the library's text may carry the URL's path and query.
                raise (self._cut_off() if limit.expired else self._transport_error(exc)) from None
            complete = False
            try:
                if limit.expired:  # Cut off mid-headers: what was parsed may be truncated.
                    raise self._cut_off()
                head, complete = _read_capped(response, self.max_response_bytes)
            finally:
                if not complete:
                    response.close()  # unread data would poison the connection for reuse
                response.release_conn()
        return (
            response.status,
            response.headers.get("Location"),
            response.headers.get("Retry-After"),
            head,
        )

    def _cut_off(self) -> DeliveryError:
        return DeliveryError(
            f"POST {self.display}: no complete response within {self.timeout_s:g}s"
        )

    def _transport_error(self, exc: BaseException) -> DeliveryError:
        where = f"POST {self.display}"
        # urllib3's NewConnectionError (refused, unreachable) subclasses ConnectTimeoutError.
        timed_out = isinstance(exc, urllib3.exceptions.TimeoutError)
        if timed_out and not isinstance(exc, urllib3.exceptions.NewConnectionError):
            phase = (
                "connecting"
                if isinstance(exc, urllib3.exceptions.ConnectTimeoutError)
                else "waiting"
            )
            return DeliveryError(f"{where}: timed out {phase} after {self.timeout_s:g}s")
        return DeliveryError(f"{where}: {root_cause(exc)}")

    def _outcome(
        self, status: int, location: str | None, retry_after: str | None, head: bytes
    ) -> int:
        if 200 <= status < 300:
            return status
        what = f"POST {self.display}: HTTP {status}"
        if 300 <= status < 400:
            target = self._redirect_target(location)
            message = f"{what}: redirect to {target} not followed"
            raise DeliveryError(message, permanent=True, status_code=status)
        detail = self.detail(head)
        if status == 410:
            message = f"{what} Gone: disabling this notifier{detail}"
            raise DeliveryError(message, disable=True, status_code=status)
        if status == 429 or status >= 500:
            now = self._clock() if self._clock is not None else None
            delay = parse_retry_after(retry_after, now=now)
            raise DeliveryError(f"{what}{detail}", status_code=status, retry_after_s=delay)
        # Other 4xx: the receiver rejects this request and would reject it again.
        # Anything else (1xx, >= 600) is unexplained: let the retry schedule decide.
        permanent = 400 <= status < 500
        raise DeliveryError(f"{what}{detail}", permanent=permanent, status_code=status)

    def _redirect_target(self, location: str | None) -> str:
        if not location:
            return "nowhere"
        try:
            target = display_url(urljoin(self._url, location))
        except ValueError:
            return "<unparseable URL>"
        return self.scrubbed(target)

    def detail(self, head: bytes) -> str:
        """A short, printable start of the receiver's answer, credentials scrubbed."""
        text = " ".join(head[: _DETAIL_CHARS * 4].decode("utf-8", "replace").split())
        text = self.scrubbed(text)
        if len(text) > _DETAIL_CHARS:
            text = text[:_DETAIL_CHARS] + "…"
        return f": {text}" if text else ""

    def scrubbed(self, text: str) -> str:
        for value in self._scrub:
            text = text.replace(value, "***")
        return text


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds to wait from a `Retry-After` value (delta-seconds or HTTP-date); None if unusable."""
    if value is None:
        return None
    text = value.strip()
    if text.isascii() and text.isdigit():
        return min(float(text), MAX_RETRY_AFTER_S)
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if now is None:
        now = time.time()
    return min(max(when.timestamp() - now, 0.0), MAX_RETRY_AFTER_S)


def display_url(url: str) -> str:
    """`url` without user, password, query or fragment: fit for logs and error messages."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = parts.port
    except ValueError:
        return "<unparseable URL>"
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{host}:{port}" if port is not None else host
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def secret_display_url(url: str) -> str:
    """Scheme and host only, for URLs whose path is the credential (Slack, Teams)."""
    shown = display_url(url)
    parts = urlsplit(shown)
    return urlunsplit(
        (parts.scheme, parts.netloc, "/…" if parts.path not in ("", "/") else "", "", "")
    )


def check_url(name: str, url: str) -> None:
    try:
        parts = urlsplit(url)
        _ = parts.port
    except (ValueError, TypeError, AttributeError):
        raise ValueError(f"notifier {name!r}: url is not a valid URL") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"notifier {name!r}: url must be an http:// or https:// URL with a host")


def checked_headers(
    name: str, headers: Mapping[str, str], reserved: frozenset[str] = frozenset()
) -> dict[str, str]:
    """Extra headers, refusing ones that would break the request (or its signature)."""
    for key, value in headers.items():
        if not _TOKEN_RE.match(key):
            raise ValueError(f"notifier {name!r}: {key!r} is not a valid header name")
        if key.lower() in reserved | _CONTROLLED_HEADERS:
            raise ValueError(f"notifier {name!r}: header {key!r} is set by the notifier")
        if not isinstance(value, str) or "\r" in value or "\n" in value or not value.isascii():
            # The value is not repeated: it may be a credential.
            raise ValueError(f"notifier {name!r}: header {key!r} needs a one-line ASCII value")
    return dict(headers)


def root_cause(exc: BaseException) -> str:
    """The innermost OS-level reason (e.g. "Connection refused"), else the exception's kind."""
    seen: set[int] = set()
    current: BaseException | None = exc
    found: OSError | None = None
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and not isinstance(current, urllib3.exceptions.HTTPError):
            found = current
        reason = getattr(current, "reason", None)
        nested = reason if isinstance(reason, BaseException) else None
        current = current.__cause__ or nested or current.__context__
    if found is None:
        return _kind(exc)
    text = found.strerror if isinstance(found.strerror, str) else ""
    return text or _kind(found)


def _kind(exc: BaseException) -> str:
    if isinstance(exc, urllib3.exceptions.SSLError):
        return "TLS handshake failed"
    if isinstance(exc, urllib3.exceptions.ProtocolError):
        return "connection closed without a complete answer"
    return type(exc).__name__


def _basic_auth(username: str | None, password: str | None) -> dict[str, str]:
    if username is None and password is None:
        return {}
    pair = f"{unquote(username or '')}:{unquote(password or '')}".encode()
    return {"Authorization": "Basic " + b64encode(pair).decode()}


def _scrub_values(url: str, extra: tuple[str, ...]) -> tuple[str, ...]:
    parts = urlsplit(url)
    # A receiver might echo the Basic header our URL credentials turned into.
    basic = _basic_auth(parts.username, parts.password).get("Authorization", "")
    maybe = [parts.password or "", basic.removeprefix("Basic "), parts.query, *extra]
    values = {v for v in maybe if len(v) >= _SCRUB_MIN_CHARS}
    return tuple(sorted(values, key=len, reverse=True))


def _read_capped(response: Any, limit: int) -> tuple[bytes, bool]:
    """At most `limit` bytes of the body, and whether that was all of it."""
    chunks: list[bytes] = []
    remaining = limit
    try:
        while remaining > 0:
            chunk = response.read(min(_READ_CHUNK_BYTES, remaining), decode_content=False)
            if not chunk:
                return b"".join(chunks), True
            chunks.append(chunk)
            remaining -= len(chunk)
        # At the cap: the body may or may not go on; a zero-length read tells.
        return b"".join(chunks), response.length_remaining == 0
    except (OSError, urllib3.exceptions.HTTPError):
        return b"".join(chunks), False  # The status line already decided the outcome.


# --- Connections that report their socket to the attempt's deadline ---------------------


class _WatchedHTTPConnection(HTTPConnection):
    def getresponse(self) -> Any:
        deadline.watch_current(self.sock)
        return super().getresponse()


class _WatchedHTTPSConnection(HTTPSConnection):
    def getresponse(self) -> Any:
        deadline.watch_current(self.sock)
        return super().getresponse()


class _WatchedHTTPPool(HTTPConnectionPool):
    ConnectionCls = _WatchedHTTPConnection


class _WatchedHTTPSPool(HTTPSConnectionPool):
    ConnectionCls = _WatchedHTTPSConnection


def _bypass(host: str) -> bool:
    """`NO_PROXY` applies to `host` (the stdlib helper is undocumented, hence the lookup)."""
    check = getattr(urllib.request, "proxy_bypass_environment", None)
    return bool(check(host)) if check is not None else False


def _manager_for(url: str, pool_size: int) -> urllib3.PoolManager:
    kwargs: dict[str, Any] = {"num_pools": 2, "maxsize": pool_size, "block": False}
    try:
        import certifi

        kwargs["ca_certs"] = certifi.where()  # the same trust store `requests` uses
    except ImportError:  # pragma: no cover - certifi comes with requests
        pass
    scheme = urlsplit(url).scheme
    host = urlsplit(url).hostname or ""
    proxy = urllib.request.getproxies_environment().get(scheme)
    if proxy and not _bypass(host):
        manager: urllib3.PoolManager = urllib3.ProxyManager(proxy, **kwargs)
    else:
        manager = urllib3.PoolManager(**kwargs)
    manager.pool_classes_by_scheme = {"http": _WatchedHTTPPool, "https": _WatchedHTTPSPool}
    return manager
