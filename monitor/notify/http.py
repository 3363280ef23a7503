"""POST a body to a URL once and say whether to retry: the HTTP seam of every notifier.

Webhooks, Slack, Teams and PagerDuty all go through `HttpPoster`. Every outcome
becomes a 2xx status or a `DeliveryError` whose flags drive the dispatcher; nothing
here retries. A misbehaving receiver (silent, trickling, huge, redirecting) costs one
attempt at most about `timeout_s` and `max_response_bytes`. Connections are kept
alive in a small pool per notifier (`connections.py`); redirects are never followed.
"""

from __future__ import annotations

import email.utils
import http.client
import math
import re
import socket
import ssl
import time
from base64 import b64encode
from collections.abc import Callable, Mapping
from urllib.parse import unquote, urljoin, urlsplit, urlunsplit

from monitor import __version__
from monitor.notify import deadline
from monitor.notify.base import DeliveryError
from monitor.notify.connections import ConnectionPool, proxy_headers

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
        self._url = url
        self._scrub = _scrub_values(url, scrub)
        self._pool = ConnectionPool(url, pool_size, min(self.timeout_s, MAX_CONNECT_TIMEOUT_S))
        self._fixed = {
            "User-Agent": USER_AGENT,
            **_basic_auth(parts.username, parts.password),
            **proxy_headers(self._pool),
        }

    def post(self, body: bytes, headers: Mapping[str, str]) -> int:
        """POST once; the 2xx status, or `DeliveryError` saying whether to retry."""
        status, location, retry_after, head = self._exchange(body, {**self._fixed, **headers})
        return self._outcome(status, location, retry_after, head)

    def close(self) -> None:
        self._pool.close()

    def _exchange(
        self, body: bytes, headers: dict[str, str]
    ) -> tuple[int, str | None, str | None, bytes]:
        """One POST under the overall deadline: status, Location, Retry-After, start of body.

        A kept-alive connection the receiver closed while idle fails before any answer;
        that one is retried at once on a fresh connection, as browsers and urllib3 do.
        """
        with deadline.start(self.timeout_s) as limit:
            conn, _reused = self._pool.take()
            try:
                return self._over(conn, body, headers, limit)
            except _Stale:
                return self._over(self._pool.take_new(), body, headers, limit)

    def _over(
        self,
        conn: http.client.HTTPConnection,
        body: bytes,
        headers: dict[str, str],
        limit: deadline.Deadline,
        reused: bool = False,
    ) -> tuple[int, str | None, str | None, bytes]:
        phase = "connecting"
        try:
            if conn.sock is None:
                conn.connect()
            else:
                reused = True
            assert conn.sock is not None
            conn.sock.settimeout(self.timeout_s)
            limit.watch(conn.sock)
            phase = "waiting"
            conn.request("POST", self._pool.request_path, body=body, headers=headers)
            response = conn.getresponse()
        except (OSError, http.client.HTTPException) as exc:
            conn.close()
            if limit.expired:
                raise self._cut_off() from None
            if reused and isinstance(exc, _STALE_ERRORS):
                raise _Stale from None
            raise self._transport_error(exc, phase) from None
        complete = False
        try:
            if limit.expired:  # Cut off mid-headers: what was parsed may be truncated.
                raise self._cut_off()
            head, complete = _read_capped(response, self.max_response_bytes)
        finally:
            if complete and not response.will_close:
                self._pool.give_back(conn)
            else:  # unread data would poison the connection for reuse
                response.close()  # it may own the socket by now (`will_close`)
                conn.close()
        return (
            response.status,
            response.getheader("Location"),
            response.getheader("Retry-After"),
            head,
        )

    def _cut_off(self) -> DeliveryError:
        return DeliveryError(
            f"POST {self.display}: no complete response within {self.timeout_s:g}s"
        )

    def _transport_error(self, exc: BaseException, phase: str) -> DeliveryError:
        where = f"POST {self.display}"
        if isinstance(exc, TimeoutError):
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
        # Terminal escapes and other controls from a receiver never reach a log or screen.
        text = self.scrubbed("".join(c if c.isprintable() else "?" for c in text))
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
    """The OS-level reason (e.g. "Connection refused"), never the URL; else the kind."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"TLS certificate not trusted: {exc.verify_message or 'verification failed'}"
    if isinstance(exc, ssl.SSLError):
        return f"TLS failed: {exc.reason or type(exc).__name__}"
    if isinstance(exc, socket.gaierror):
        return f"cannot resolve the host: {exc.strerror or 'lookup failed'}"
    if isinstance(exc, (http.client.RemoteDisconnected, http.client.IncompleteRead)):
        return "connection closed without a complete answer"
    if isinstance(exc, http.client.HTTPException):
        return f"malformed answer ({type(exc).__name__})"
    if isinstance(exc, OSError) and isinstance(exc.strerror, str) and exc.strerror:
        return exc.strerror
    return type(exc).__name__


def _basic_auth(username: str | None, password: str | None) -> dict[str, str]:
    if username is None and password is None:
        return {}
    pair = f"{unquote(username or '')}:{unquote(password or '')}".encode()
    return {"Authorization": "Basic " + b64encode(pair).decode()}


def _scrub_values(url: str, extra: tuple[str, ...]) -> tuple[str, ...]:
    """Credentials a receiver might echo; a secret URL (in `extra`) counts its path too."""
    parts = urlsplit(url)
    if url in extra and parts.path not in ("", "/"):
        extra = (*extra, parts.path, parts.path.lstrip("/"))
    # A receiver might echo the Basic header our URL credentials turned into.
    basic = _basic_auth(parts.username, parts.password).get("Authorization", "")
    maybe = [parts.password or "", basic.removeprefix("Basic "), parts.query, *extra]
    values = {v for v in maybe if len(v) >= _SCRUB_MIN_CHARS}
    return tuple(sorted(values, key=len, reverse=True))


def _read_capped(response: http.client.HTTPResponse, limit: int) -> tuple[bytes, bool]:
    """At most `limit` bytes of the body, and whether that was all of it."""
    chunks: list[bytes] = []
    remaining = limit
    try:
        while remaining > 0:
            chunk = response.read(min(_READ_CHUNK_BYTES, remaining))
            if not chunk:
                return b"".join(chunks), True
            chunks.append(chunk)
            remaining -= len(chunk)
        # At the cap: complete only if the body ended exactly there.
        return b"".join(chunks), response.isclosed()
    except (OSError, http.client.HTTPException):
        return b"".join(chunks), False  # The status line already decided the outcome.


class _Stale(Exception):
    """A reused connection turned out closed before it carried our request."""


_STALE_ERRORS = (
    ConnectionResetError,
    BrokenPipeError,
    ConnectionAbortedError,
    http.client.RemoteDisconnected,
)
