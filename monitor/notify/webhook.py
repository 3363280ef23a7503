"""POST each event to a URL, signed per Standard Webhooks, and say whether to retry.

The only module that posts webhooks. Every outcome becomes a return value (2xx) or a
`DeliveryError` whose flags drive the dispatcher; nothing here retries by itself.
A misbehaving receiver (silent, trickling, huge, redirecting) costs one attempt at
most about `timeout_s` and `max_response_bytes`.
"""

from __future__ import annotations

import contextlib
import email.utils
import math
import re
import socket
import threading
import time
from base64 import b64encode
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import unquote, urljoin, urlsplit, urlunsplit

import requests
import urllib3
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

from monitor import __version__
from monitor.notify.base import DeliveryError, Message
from monitor.notify.signing import decode_secret, headers_for

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
_RESERVED_HEADERS = frozenset(
    {"webhook-id", "webhook-timestamp", "webhook-signature", "content-type", "content-length"}
    | {"host", "transfer-encoding"}
)


class WebhookNotifier:
    """Delivers `Message.body` byte for byte to `url`, signed with a `whsec_` secret.

    `webhook-id` is the event id, so every retry of one event carries the same id;
    the timestamp and signature are fresh at each attempt. Redirects are not followed.
    """

    def __init__(
        self,
        name: str,
        url: str,
        secret: str,
        *,
        headers: Mapping[str, str] | None = None,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not name:
            raise ValueError("webhook notifier needs a name")
        _check_url(name, url)
        if not (math.isfinite(timeout_s) and timeout_s > 0):
            raise ValueError(f"webhook {name!r}: timeout_s must be a positive number")
        if max_response_bytes < 0:
            raise ValueError(f"webhook {name!r}: max_response_bytes must not be negative")
        try:
            self._key = decode_secret(secret)
        except ValueError as exc:
            raise ValueError(f"webhook {name!r}: {exc}") from None
        self.name = name
        self.safe_url = display_url(url)
        self.timeout_s = float(timeout_s)
        self.max_response_bytes = max_response_bytes
        self._url = url
        self._headers = _checked_headers(name, headers or {})
        self._clock = clock
        self._scrub = _values_to_scrub(url, secret, self._headers)
        self._session = _new_session()

    def __repr__(self) -> str:
        return f"WebhookNotifier(name={self.name!r}, url={self.safe_url!r})"

    def send(self, message: Message) -> int:
        """POST once; the 2xx status, or `DeliveryError` saying whether to retry."""
        body = message.body.encode("utf-8")
        signed = headers_for(self._key, message.event_id, int(self._clock()), body)
        response, head = self._exchange(
            body, {**self._headers, "Content-Type": "application/json", **signed}
        )
        return self._outcome(response, head)

    def close(self) -> None:
        self._session.close()

    def _exchange(self, body: bytes, headers: dict[str, str]) -> tuple[requests.Response, bytes]:
        """One POST under the overall deadline: the response and the start of its body."""
        timeout = (min(self.timeout_s, MAX_CONNECT_TIMEOUT_S), self.timeout_s)
        with _Deadline(self.timeout_s) as deadline:
            try:
                response = self._session.post(
                    self._url,
                    data=body,
                    headers=headers,
                    timeout=timeout,
                    allow_redirects=False,
                    stream=True,
                )
            except requests.RequestException as exc:
                # `from None`: the library's text may carry the URL's path and query.
                raise (
                    self._cut_off() if deadline.expired else self._transport_error(exc)
                ) from None
            with response:
                if deadline.expired:  # Cut off mid-headers: what was parsed may be truncated.
                    raise self._cut_off()
                return response, _read_capped(response, self.max_response_bytes)

    def _cut_off(self) -> DeliveryError:
        return DeliveryError(
            f"POST {self.safe_url}: no complete response within {self.timeout_s:g}s"
        )

    def _transport_error(self, exc: requests.RequestException) -> DeliveryError:
        where = f"POST {self.safe_url}"
        if isinstance(exc, requests.Timeout):
            phase = "connecting" if isinstance(exc, requests.ConnectTimeout) else "waiting"
            return DeliveryError(f"{where}: timed out {phase} after {self.timeout_s:g}s")
        return DeliveryError(f"{where}: {_root_cause(exc)}")

    def _outcome(self, response: requests.Response, head: bytes) -> int:
        status = response.status_code
        if 200 <= status < 300:
            return status
        what = f"POST {self.safe_url}: HTTP {status}"
        if 300 <= status < 400:
            target = _redirect_target(self._url, response.headers.get("Location"))
            message = f"{what}: redirect to {target} not followed"
            raise DeliveryError(message, permanent=True, status_code=status)
        detail = self._detail(head)
        if status == 410:
            message = f"{what} Gone: disabling this notifier{detail}"
            raise DeliveryError(message, disable=True, status_code=status)
        if status == 429 or status >= 500:
            delay = parse_retry_after(response.headers.get("Retry-After"), now=self._clock())
            raise DeliveryError(f"{what}{detail}", status_code=status, retry_after_s=delay)
        # Other 4xx: the receiver rejects this request and would reject it again.
        # Anything else (1xx, >= 600) is unexplained: let the retry schedule decide.
        permanent = 400 <= status < 500
        raise DeliveryError(f"{what}{detail}", permanent=permanent, status_code=status)

    def _detail(self, head: bytes) -> str:
        """A short, printable start of the receiver's answer, credentials scrubbed."""
        text = " ".join(head[: _DETAIL_CHARS * 4].decode("utf-8", "replace").split())
        for value in self._scrub:
            text = text.replace(value, "***")
        if len(text) > _DETAIL_CHARS:
            text = text[:_DETAIL_CHARS] + "…"
        return f": {text}" if text else ""


def parse_retry_after(value: str | None, *, now: float) -> float | None:
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


def _redirect_target(url: str, location: str | None) -> str:
    if not location:
        return "nowhere"
    try:
        return display_url(urljoin(url, location))
    except ValueError:
        return "<unparseable URL>"


def _check_url(name: str, url: str) -> None:
    try:
        parts = urlsplit(url)
        _ = parts.port
    except (ValueError, TypeError, AttributeError):
        raise ValueError(f"webhook {name!r}: url is not a valid URL") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"webhook {name!r}: url must be an http:// or https:// URL with a host")


def _checked_headers(name: str, headers: Mapping[str, str]) -> dict[str, str]:
    """Extra headers, refusing ones that would break the request or its signature."""
    for key, value in headers.items():
        if not _TOKEN_RE.match(key):
            raise ValueError(f"webhook {name!r}: {key!r} is not a valid header name")
        if key.lower() in _RESERVED_HEADERS:
            raise ValueError(f"webhook {name!r}: header {key!r} is set by the notifier")
        if not isinstance(value, str) or "\r" in value or "\n" in value or not value.isascii():
            # The value is not repeated: it may be a credential.
            raise ValueError(f"webhook {name!r}: header {key!r} needs a one-line ASCII value")
    return dict(headers)


def _values_to_scrub(url: str, secret: str, headers: Mapping[str, str]) -> tuple[str, ...]:
    parts = urlsplit(url)
    # requests turns URL credentials into a Basic header a receiver might echo back.
    basic = b64encode(f"{unquote(parts.username or '')}:{unquote(parts.password or '')}".encode())
    maybe = [parts.password or "", basic.decode() if parts.password else "", parts.query]
    maybe += headers.values()
    values = {secret, secret.removeprefix("whsec_")} | {
        v for v in maybe if len(v) >= _SCRUB_MIN_CHARS
    }
    return tuple(sorted(values, key=len, reverse=True))


def _read_capped(response: requests.Response, limit: int) -> bytes:
    """At most `limit` bytes of the body; a slow, broken or endless body is not our problem."""
    chunks: list[bytes] = []
    remaining = limit
    try:
        while remaining > 0:
            chunk = response.raw.read(min(_READ_CHUNK_BYTES, remaining), decode_content=False)
            if not chunk:
                break
            chunks.append(chunk)
            remaining -= len(chunk)
    except (OSError, urllib3.exceptions.HTTPError, requests.RequestException):
        pass  # The status line already decided the outcome.
    return b"".join(chunks)


def _root_cause(exc: BaseException) -> str:
    """The innermost OS-level reason (e.g. "Connection refused"), else the exception's kind."""
    seen: set[int] = set()
    current: BaseException | None = exc
    found: OSError | None = None
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and not isinstance(current, requests.RequestException):
            found = current
        reason = getattr(current, "reason", None)
        nested = reason if isinstance(reason, BaseException) else None
        current = current.__cause__ or nested or current.__context__
    if found is None:
        return type(exc).__name__
    text = found.strerror if isinstance(found.strerror, str) else str(found)
    return text or type(found).__name__


def _new_session() -> requests.Session:
    session = requests.Session()
    adapter = _DeadlineAdapter()
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    # identity: a compressed body could inflate far past max_response_bytes.
    session.headers.update({"User-Agent": USER_AGENT, "Accept-Encoding": "identity"})
    return session


# --- The overall deadline -----------------------------------------------------------
# Socket timeouts bound each read, not the sum: a receiver sending a byte every few
# seconds never trips them. A timer shuts the attempt's socket down instead, which
# unblocks whatever read (status line, headers or body) is waiting on it.

_current = threading.local()


class _Deadline:
    def __init__(self, seconds: float) -> None:
        self.expired = False
        self._lock = threading.Lock()
        self._sock: socket.socket | None = None
        self._timer = threading.Timer(seconds, self._expire)
        self._timer.daemon = True

    def __enter__(self) -> _Deadline:
        _current.deadline = self
        self._timer.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._timer.cancel()
        _current.deadline = None
        with self._lock:
            self._sock = None

    def watch(self, sock: socket.socket | None) -> None:
        with self._lock:
            self._sock = sock
            if self.expired:
                _shutdown(sock)

    def _expire(self) -> None:
        with self._lock:
            self.expired = True
            _shutdown(self._sock)


def _shutdown(sock: socket.socket | None) -> None:
    if sock is None:
        return
    with contextlib.suppress(OSError):  # Already closed: nothing left to interrupt.
        sock.shutdown(socket.SHUT_RDWR)


def _watch(sock: socket.socket | None) -> None:
    deadline: _Deadline | None = getattr(_current, "deadline", None)
    if deadline is not None:
        deadline.watch(sock)


class _WatchedHTTPConnection(HTTPConnection):
    def getresponse(self) -> Any:
        _watch(self.sock)
        return super().getresponse()


class _WatchedHTTPSConnection(HTTPSConnection):
    def getresponse(self) -> Any:
        _watch(self.sock)
        return super().getresponse()


class _DeadlineAdapter(HTTPAdapter):
    """Makes every connection report its socket to the attempt's deadline."""

    def get_connection_with_tls_context(self, *args: Any, **kwargs: Any) -> Any:
        pool = super().get_connection_with_tls_context(*args, **kwargs)
        if isinstance(pool, HTTPSConnectionPool):
            pool.ConnectionCls = _WatchedHTTPSConnection
        elif isinstance(pool, HTTPConnectionPool):
            pool.ConnectionCls = _WatchedHTTPConnection
        return pool
