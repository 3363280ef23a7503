"""A conference status callback's form fields, checked and typed. Pure.

Twilio posts `application/x-www-form-urlencoded` fields; this module turns
them into a `CallbackForm` or raises `FormError` saying which field is wrong
(the value is not quoted: it came from outside).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from urllib.parse import parse_qsl

from monitor.domain import ACCOUNT_SID_RE, CALL_SID_RE, CONFERENCE_SID_RE, Status

MAX_FIELDS = 100
MAX_NAME_CHARS = 256
CONFERENCE_EVENTS = {"conference-start": Status.IN_PROGRESS, "conference-end": Status.COMPLETED}
_EVENT_RE = re.compile(r"[a-z][a-z-]{0,63}")
_REASON_RE = re.compile(r"[a-z][a-z-]{0,63}")
_SEQUENCE_RE = re.compile(r"[0-9]{1,18}")


class FormError(ValueError):
    """The body is not a well-formed conference status callback."""


@dataclass(frozen=True)
class CallbackForm:
    event: str  # StatusCallbackEvent, e.g. "conference-start"
    conference_sid: str
    account_sid: str
    friendly_name: str | None
    sequence: int
    timestamp: datetime  # aware, UTC
    reason: str | None = None  # ReasonConferenceEnded
    ending_call_sid: str | None = None  # CallSidEndingConference

    @property
    def status(self) -> str | None:
        """The conference status the event reports, or None (participant events and others)."""
        found = CONFERENCE_EVENTS.get(self.event)
        return str(found) if found is not None else None


def parse_pairs(body: bytes) -> list[tuple[str, str]]:
    """The form's (name, value) pairs in order; FormError if it is not a UTF-8 form."""
    try:
        text = body.decode("utf-8")
        return parse_qsl(
            text, keep_blank_values=True, strict_parsing=bool(text), max_num_fields=MAX_FIELDS
        )
    except (UnicodeDecodeError, ValueError):
        raise FormError("body is not a UTF-8 form (application/x-www-form-urlencoded)") from None


def parse(pairs: list[tuple[str, str]]) -> CallbackForm:
    """Check and type the fields a conference callback carries."""
    fields: dict[str, str] = {}
    for key, value in pairs:
        if key in fields:
            raise FormError(f"field {key[:64]!r} is repeated")
        fields[key] = value
    event = _required(fields, "StatusCallbackEvent")
    if not _EVENT_RE.fullmatch(event):
        raise FormError("StatusCallbackEvent is not an event name")
    sid = _matching(fields, "ConferenceSid", CONFERENCE_SID_RE, "'CF' and 32 hex digits") or ""
    account = _matching(fields, "AccountSid", ACCOUNT_SID_RE, "'AC' and 32 hex digits") or ""
    name: str | None = fields.get("FriendlyName") or None
    if name is not None and len(name) > MAX_NAME_CHARS:
        raise FormError(f"FriendlyName is longer than {MAX_NAME_CHARS} characters")
    reason = fields.get("ReasonConferenceEnded") or None
    if reason is not None and not _REASON_RE.fullmatch(reason):
        raise FormError("ReasonConferenceEnded is not a reason name")
    ending = _matching(
        fields, "CallSidEndingConference", CALL_SID_RE, "'CA' and 32 hex digits", optional=True
    )
    return CallbackForm(
        event=event,
        conference_sid=sid,
        account_sid=account,
        friendly_name=name,
        sequence=_sequence(fields),
        timestamp=parse_timestamp(_required(fields, "Timestamp")),
        reason=reason if event == "conference-end" else None,
        ending_call_sid=ending if event == "conference-end" else None,
    )


def parse_timestamp(text: str) -> datetime:
    """RFC 2822 (`Tue, 01 Dec 2026 04:14:26 +0000`) as an aware UTC datetime."""
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        raise FormError("Timestamp is not an RFC 2822 date") from None
    if when.tzinfo is None:  # "-0000": UTC, origin unknown
        when = when.replace(tzinfo=UTC)
    return when.astimezone(UTC)


def _required(fields: dict[str, str], name: str) -> str:
    value = fields.get(name)
    if not value:
        raise FormError(f"{name} is missing")
    return value


def _matching(
    fields: dict[str, str],
    name: str,
    pattern: re.Pattern[str],
    what: str,
    *,
    optional: bool = False,
) -> str | None:
    value = fields.get(name) or None
    if value is None:
        if optional:
            return None
        raise FormError(f"{name} is missing")
    if not pattern.fullmatch(value):
        raise FormError(f"{name} must be {what}")
    return value


def _sequence(fields: dict[str, str]) -> int:
    text = _required(fields, "SequenceNumber")
    if not _SEQUENCE_RE.fullmatch(text):
        raise FormError("SequenceNumber must be a non-negative integer")
    return int(text)
