"""The simulator's values: one conference record, script steps, callback events.

A record caches its JSON (as Twilio would send it) until it changes, so a
list page of 1,000 conferences is a join of cached bytes, not 1,000 dicts,
2,000 date formats and a `json.dumps`.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import format_datetime
from functools import lru_cache
from typing import Any

import orjson

from monitor.domain import CALL_SID_RE, END_REASONS, Status

API_VERSION = "2010-04-01"
DEFAULT_ACCOUNT_SID = "AC" + "5" * 32
DEFAULT_REGION = "us1"
VIA_API = "conference-ended-via-api"
DEFAULT_END_REASON = "last-participant-left"
STATUSES: tuple[str, ...] = tuple(s.value for s in Status)

Clock = Callable[[], float]


class SimulatorError(Exception):
    """A request the simulator refuses; the server turns it into a Twilio error body."""

    def __init__(self, status: int, code: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


def rfc2822(epoch: float) -> str:
    """Twilio's date format: `Fri, 18 Feb 2011 19:26:50 +0000` (whole seconds, UTC)."""
    return _rfc2822_second(int(epoch))


@lru_cache(maxsize=4096)
def _rfc2822_second(second: int) -> str:
    return format_datetime(datetime.fromtimestamp(second, UTC), usegmt=False)


def new_sid(prefix: str) -> str:
    return prefix + secrets.token_hex(16)


def check_status(status: str, reason: str | None, call_sid: str | None) -> None:
    if status not in STATUSES:
        raise ValueError(f"status must be one of {STATUSES}, got {status!r}")
    if reason is not None and reason not in END_REASONS:
        raise ValueError(f"reason must be one of {END_REASONS}, got {reason!r}")
    if call_sid is not None and not CALL_SID_RE.match(call_sid):
        raise ValueError(f"call_sid must match {CALL_SID_RE.pattern}, got {call_sid!r}")


@dataclass(frozen=True)
class ScriptStep:
    """One scheduled status change, `after_s` seconds after the script was given."""

    after_s: float
    status: str
    reason: str | None = None
    call_sid: str | None = None

    @classmethod
    def from_json(cls, raw: object) -> ScriptStep:
        if not isinstance(raw, dict):
            raise ValueError(f"bad script step {raw!r}: must be an object")
        try:
            step = cls(float(raw["after_s"]), raw["status"], raw.get("reason"), raw.get("call_sid"))
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"bad script step {raw!r}: needs after_s and status") from exc
        check_status(step.status, step.reason, step.call_sid)
        return step


@dataclass(frozen=True)
class CallbackEvent:
    """A status callback Twilio would POST: `conference-start` or `conference-end`."""

    url: str
    event: str
    sequence: int
    at: float
    conference_sid: str
    account_sid: str
    friendly_name: str | None
    reason: str | None = None
    call_sid: str | None = None

    def form(self) -> dict[str, str]:
        params = {
            "ConferenceSid": self.conference_sid,
            "FriendlyName": self.friendly_name,
            "AccountSid": self.account_sid,
            "StatusCallbackEvent": self.event,
            "SequenceNumber": str(self.sequence),
            "Timestamp": rfc2822(self.at),
        }
        if self.event == "conference-end":
            params["ReasonConferenceEnded"] = self.reason
            params["CallSidEndingConference"] = self.call_sid
        return {k: v for k, v in params.items() if v is not None}


@dataclass(slots=True)
class Record:
    """One conference as the simulator keeps it; `as_bytes()` is its cached JSON."""

    sid: str
    account_sid: str
    friendly_name: str | None
    region: str | None
    created_at: float
    visible_at: float
    status_callback: str | None
    status: str = Status.INIT.value
    reason: str | None = None
    call_sid: str | None = None
    updated_at: float = 0.0
    transitions: list[dict[str, Any]] = field(default_factory=list)
    sequence: int = 0
    script_gen: int = 0
    cached: bytes | None = None

    @property
    def order_key(self) -> tuple[float, str]:
        """Newest first, then by SID: the list order and what a page token points at."""
        return (-self.created_at, self.sid)

    def as_json(self) -> dict[str, Any]:
        base = f"/2010-04-01/Accounts/{self.account_sid}/Conferences/{self.sid}"
        return {
            "account_sid": self.account_sid,
            "api_version": API_VERSION,
            "date_created": rfc2822(self.created_at),
            "date_updated": rfc2822(self.updated_at),
            "friendly_name": self.friendly_name,
            "sid": self.sid,
            "region": self.region,
            "status": self.status,
            "subresource_uris": {
                "participants": f"{base}/Participants.json",
                "recordings": f"{base}/Recordings.json",
            },
            "uri": f"{base}.json",
            "reason_conference_ended": self.reason,
            "call_sid_ending_conference": self.call_sid,
        }

    def as_bytes(self) -> bytes:
        if self.cached is None:
            self.cached = orjson.dumps(self.as_json())
        return self.cached
