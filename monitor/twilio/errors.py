"""What can go wrong talking to Twilio, as types that say whether retrying helps.

Also the mapping from an HTTP outcome (status and body, or a transport
exception) to those types. Every message names the conference SID (or `-`)
and the URL, never a credential.
"""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

from urllib3.exceptions import ConnectTimeoutError, ReadTimeoutError


class TwilioError(Exception):
    """A Twilio request that did not produce a usable answer.

    `status_code` is the HTTP status (None when no response arrived), `code` and
    `twilio_message` come from Twilio's error body when it had one, `attempts`
    counts the HTTP requests made before giving up.
    """

    def __init__(
        self,
        reason: str,
        *,
        url: str,
        sid: str | None = None,
        status_code: int | None = None,
        code: int | None = None,
        twilio_message: str | None = None,
    ) -> None:
        details = [f"HTTP {status_code}"] if status_code is not None else []
        if code is not None:
            details.append(f"Twilio code {code}")
        if twilio_message:
            details.append(repr(twilio_message))
        suffix = f" ({', '.join(details)})" if details else ""
        super().__init__(f"{reason}{suffix} [sid={sid or '-'} url={url}]")
        self.reason = reason
        self.url = url
        self.sid = sid
        self.status_code = status_code
        self.code = code
        self.twilio_message = twilio_message
        self.attempts = 1


class ConferenceNotFound(TwilioError):
    """404: unknown SID, wrong account or wrong host. Callers apply their own grace period."""


class CredentialsRejected(TwilioError):
    """401/403: bad or foreign-region credentials, or a suspended account. Not retried."""


class RateLimited(TwilioError):
    """429: the request was not processed. `retry_after_s` is the server's asked delay, if sent."""

    def __init__(
        self,
        reason: str,
        *,
        url: str,
        sid: str | None = None,
        status_code: int | None = None,
        code: int | None = None,
        twilio_message: str | None = None,
        retry_after_s: float | None = None,
    ) -> None:
        super().__init__(
            reason,
            url=url,
            sid=sid,
            status_code=status_code,
            code=code,
            twilio_message=twilio_message,
        )
        self.retry_after_s = retry_after_s


class TransientError(TwilioError):
    """No response, a timeout or a 5xx: worth retrying later.

    `request_sent` is False only when the connection was never established, so
    even a non-idempotent request can safely be repeated.
    """

    def __init__(
        self,
        reason: str,
        *,
        url: str,
        sid: str | None = None,
        status_code: int | None = None,
        code: int | None = None,
        twilio_message: str | None = None,
        request_sent: bool = True,
    ) -> None:
        super().__init__(
            reason,
            url=url,
            sid=sid,
            status_code=status_code,
            code=code,
            twilio_message=twilio_message,
        )
        self.request_sent = request_sent


class BadPayload(TransientError):
    """A 2xx whose body is not JSON or not the documented resource."""


class RequestRejected(TwilioError):
    """Any other 4xx (e.g. 400, a bad filter): permanent, retrying cannot help."""


class DeadlineExceeded(TransientError):
    """The call (every attempt, its body and the waits between) outran its deadline."""


class ResponseTooLarge(TwilioError):
    """A body over the size cap: refused unread, and not retried (it would be as large again).

    `cap_bytes` is the cap that was exceeded.
    """

    def __init__(self, reason: str, *, url: str, sid: str | None = None, cap_bytes: int) -> None:
        super().__init__(reason, url=url, sid=sid)
        self.cap_bytes = cap_bytes


class ResourceMismatch(TwilioError):
    """A 2xx for a different conference or account than the one asked for: never retried."""


class PagingError(TwilioError):
    """A listing that does not end: a `next_page_uri` seen before, or too many pages."""


def error_for_response(
    status: int,
    body: bytes,
    retry_after: str | None,
    *,
    url: str,
    sid: str | None,
    redact: str | None = None,
) -> TwilioError:
    """The error for a non-2xx response; `redact` is a secret to blank out of Twilio's text."""
    code, message = _error_body(body)
    if message and redact and redact in message:
        message = message.replace(redact, "***")
    if status == 429:
        return RateLimited(
            "rate limited by Twilio",
            url=url,
            sid=sid,
            status_code=status,
            code=code,
            twilio_message=message,
            retry_after_s=parse_retry_after(retry_after),
        )
    cls, reason = _classify(status, sid)
    return cls(reason, url=url, sid=sid, status_code=status, code=code, twilio_message=message)


def error_for_transport(exc: Exception, url: str, sid: str | None) -> TransientError:
    """No usable response; `request_sent` is False only if no connection was made."""
    name = type(exc).__name__
    if isinstance(exc, ConnectTimeoutError):  # NewConnectionError too: refused, unresolvable
        return TransientError(
            f"could not connect to Twilio ({name})", url=url, sid=sid, request_sent=False
        )
    if isinstance(exc, ReadTimeoutError | TimeoutError):
        return TransientError(f"no response from Twilio in time ({name})", url=url, sid=sid)
    return TransientError(f"connection to Twilio broken ({name})", url=url, sid=sid)


def parse_retry_after(value: str | None) -> float | None:
    """`Retry-After` as seconds (delta-seconds or an HTTP date); None if absent or bad."""
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = parsedate_to_datetime(value)
        except (ValueError, TypeError, IndexError):
            return None
        if when.tzinfo is None:
            return None
        seconds = (when - datetime.now(UTC)).total_seconds()
    return max(seconds, 0.0) if math.isfinite(seconds) else None


def _classify(status: int, sid: str | None) -> tuple[type[TwilioError], str]:
    if status == 404:
        return ConferenceNotFound, "conference not found" if sid else "resource not found"
    if status in (401, 403):
        return CredentialsRejected, "Twilio rejected the credentials"
    if status >= 500:
        return TransientError, "Twilio server error"
    return RequestRejected, "Twilio rejected the request"


def _error_body(body: bytes) -> tuple[int | None, str | None]:
    """Twilio's `{"code", "message"}`, tolerating any other body."""
    try:
        doc = json.loads(body)
    except (ValueError, RecursionError):
        return None, None
    if not isinstance(doc, dict):
        return None, None
    code = doc.get("code")
    message = doc.get("message")
    return (
        code if isinstance(code, int) and not isinstance(code, bool) else None,
        message[:300] if isinstance(message, str) else None,
    )
