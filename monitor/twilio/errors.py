"""What can go wrong talking to Twilio, as types that say whether retrying helps.

Every message names the conference SID (or `-`) and the URL, never a credential.
"""

from __future__ import annotations


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
