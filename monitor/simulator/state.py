"""In-memory model behind the Twilio simulator: conferences, scripts, list paging.

Pure and thread-safe: no sockets here, and time comes from an injected clock so
tests can drive dates. Scripted status changes are kept in a heap and applied
lazily (on every read, or when `advance()` runs), stamped with their scheduled
time rather than the time they happened to be noticed.
"""

from __future__ import annotations

import heapq
import itertools
import secrets
import threading
import time
from bisect import bisect_left, bisect_right
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from email.utils import format_datetime
from typing import Any

from monitor.domain import (
    ACCOUNT_SID_RE,
    CALL_SID_RE,
    CONFERENCE_SID_RE,
    END_REASONS,
    Status,
)

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
    return format_datetime(datetime.fromtimestamp(int(epoch), UTC), usegmt=False)


def new_sid(prefix: str) -> str:
    return prefix + secrets.token_hex(16)


@dataclass(frozen=True)
class ScriptStep:
    """One scheduled status change, `after_s` seconds after the script was given."""

    after_s: float
    status: str
    reason: str | None = None
    call_sid: str | None = None

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> ScriptStep:
        try:
            step = cls(float(raw["after_s"]), raw["status"], raw.get("reason"), raw.get("call_sid"))
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"bad script step {raw!r}: needs after_s and status") from exc
        _check_status(step.status, step.reason, step.call_sid)
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


@dataclass
class _Record:
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


def _check_status(status: str, reason: str | None, call_sid: str | None) -> None:
    if status not in STATUSES:
        raise ValueError(f"status must be one of {STATUSES}, got {status!r}")
    if reason is not None and reason not in END_REASONS:
        raise ValueError(f"reason must be one of {END_REASONS}, got {reason!r}")
    if call_sid is not None and not CALL_SID_RE.match(call_sid):
        raise ValueError(f"call_sid must match {CALL_SID_RE.pattern}, got {call_sid!r}")


@dataclass(frozen=True)
class DateRange:
    """A Twilio date filter on one field: `X=`, `X<=` and `X>=`, all inclusive, UTC days."""

    on: date | None = None
    before: date | None = None
    after: date | None = None

    def contains(self, epoch: float) -> bool:
        day = datetime.fromtimestamp(epoch, UTC).date()
        return not (
            (self.on and day != self.on)
            or (self.before and day > self.before)
            or (self.after and day < self.after)
        )


@dataclass(frozen=True)
class ListQuery:
    status: str | None = None
    friendly_name: str | None = None
    created: DateRange = DateRange()
    updated: DateRange = DateRange()
    page_size: int = 50
    page_token: str | None = None


@dataclass(frozen=True)
class PageSlice:
    conferences: list[dict[str, Any]]
    next_token: str | None
    previous_token: str | None


class SimulatorState:
    """Conferences by SID behind one lock; status callbacks go to `listener`, outside it."""

    def __init__(
        self,
        clock: Clock | None = None,
        listener: Callable[[list[CallbackEvent]], None] | None = None,
    ) -> None:
        self._clock = clock or time.time
        self._listener = listener
        self._lock = threading.Lock()
        self._conferences: dict[str, _Record] = {}
        self._accounts: set[str] = set()
        self._due: list[tuple[float, int, str, int, ScriptStep]] = []
        self._seq = itertools.count()
        self._events: list[CallbackEvent] = []

    def now(self) -> float:
        return self._clock()

    def create(
        self,
        *,
        account_sid: str = DEFAULT_ACCOUNT_SID,
        sid: str | None = None,
        friendly_name: str | None = None,
        region: str | None = DEFAULT_REGION,
        status: str = Status.INIT.value,
        hidden_for_s: float = 0.0,
        status_callback: str | None = None,
    ) -> dict[str, Any]:
        sid = sid or new_sid("CF")
        if not CONFERENCE_SID_RE.match(sid):
            raise ValueError(f"sid must match {CONFERENCE_SID_RE.pattern}, got {sid!r}")
        if not ACCOUNT_SID_RE.match(account_sid):
            raise ValueError(f"account_sid must match {ACCOUNT_SID_RE.pattern}")
        _check_status(status, None, None)
        with self._lock:
            if sid in self._conferences:
                raise ValueError(f"conference {sid} already exists")
            now = self._clock()
            rec = _Record(
                sid, account_sid, friendly_name, region, now, now + hidden_for_s, status_callback
            )
            self._conferences[sid] = rec
            self._accounts.add(account_sid)
            self._change(rec, status, now, None, None, force=True)
            out = rec.as_json()
        self._flush()
        return out

    def has_account(self, account_sid: str) -> bool:
        with self._lock:
            return account_sid in self._accounts

    def get(self, account_sid: str, sid: str) -> dict[str, Any] | None:
        """The API's view: None when unknown, in another account, or not visible yet."""
        with self._lock:
            self._advance_locked()
            rec = self._visible(account_sid, sid)
            out = rec.as_json() if rec else None
        self._flush()
        return out

    def peek(self, sid: str) -> dict[str, Any]:
        """The control view: any conference, hidden or not; KeyError when unknown."""
        with self._lock:
            self._advance_locked()
            out = self._find(sid).as_json()
        self._flush()
        return out

    def end_via_api(self, account_sid: str, sid: str) -> dict[str, Any] | None:
        """`Status=completed` through the API; ending a completed conference changes nothing."""
        with self._lock:
            self._advance_locked()
            rec = self._visible(account_sid, sid)
            if rec and rec.status != Status.COMPLETED:
                self._change(rec, Status.COMPLETED.value, self._clock(), VIA_API, None)
            out = rec.as_json() if rec else None
        self._flush()
        return out

    def set_status(
        self, sid: str, status: str, reason: str | None = None, call_sid: str | None = None
    ) -> dict[str, Any]:
        """Any status now, backwards included, so regressions can be simulated."""
        _check_status(status, reason, call_sid)
        with self._lock:
            self._advance_locked()
            rec = self._find(sid)
            self._change(rec, status, self._clock(), reason, call_sid)
            out = rec.as_json()
        self._flush()
        return out

    def script(self, sid: str, steps: Sequence[ScriptStep]) -> int:
        """Schedule steps relative to now, replacing any steps still pending."""
        with self._lock:
            rec = self._find(sid)
            rec.script_gen += 1
            start = self._clock()
            for step in steps:
                entry = (start + step.after_s, next(self._seq), sid, rec.script_gen, step)
                heapq.heappush(self._due, entry)
            self._advance_locked()
        self._flush()
        return len(steps)

    def transitions(self, sid: str) -> list[dict[str, Any]]:
        with self._lock:
            self._advance_locked()
            out = [dict(t) for t in self._find(sid).transitions]
        self._flush()
        return out

    def advance(self) -> int:
        """Apply every scripted step that is due; returns how many were applied."""
        with self._lock:
            applied = self._advance_locked()
        self._flush()
        return applied

    def list_page(self, account_sid: str, query: ListQuery) -> PageSlice:
        """One page, newest first; tokens are `PA`/`PB` + the SID a page starts after/before."""
        with self._lock:
            self._advance_locked()
            matches = sorted(
                (r for r in self._conferences.values() if self._matches(r, account_sid, query)),
                key=lambda r: r.order_key,
            )
            start, stop = self._window(account_sid, query, [r.order_key for r in matches])
            page = matches[start:stop]
            out = PageSlice(
                [r.as_json() for r in page],
                f"PA{page[-1].sid}" if page and stop < len(matches) else None,
                f"PB{page[0].sid}" if page and start > 0 else None,
            )
        self._flush()
        return out

    def reset(self) -> None:
        with self._lock:
            self._conferences.clear()
            self._accounts.clear()
            self._due.clear()
            self._events.clear()

    def __len__(self) -> int:
        with self._lock:
            return len(self._conferences)

    # -- internals, called with the lock held ---------------------------------

    def _find(self, sid: str) -> _Record:
        rec = self._conferences.get(sid)
        if rec is None:
            raise KeyError(f"no conference {sid}")
        return rec

    def _visible(self, account_sid: str, sid: str) -> _Record | None:
        rec = self._conferences.get(sid)
        if rec is None or rec.account_sid != account_sid or rec.visible_at > self._clock():
            return None
        return rec

    def _matches(self, rec: _Record, account_sid: str, q: ListQuery) -> bool:
        return (
            rec.account_sid == account_sid
            and rec.visible_at <= self._clock()
            and (q.status is None or rec.status == q.status)
            and (q.friendly_name is None or rec.friendly_name == q.friendly_name)
            and q.created.contains(rec.created_at)
            and q.updated.contains(rec.updated_at)
        )

    def _window(
        self, account_sid: str, query: ListQuery, keys: list[tuple[float, str]]
    ) -> tuple[int, int]:
        token = query.page_token
        if token is None:
            return 0, query.page_size
        anchor = self._conferences.get(token[2:])
        if token[:2] not in ("PA", "PB") or anchor is None or anchor.account_sid != account_sid:
            raise SimulatorError(400, 21481, f"Invalid PageToken: {token}")
        if token.startswith("PA"):
            start = bisect_right(keys, anchor.order_key)
            return start, start + query.page_size
        stop = bisect_left(keys, anchor.order_key)
        return max(0, stop - query.page_size), stop

    def _advance_locked(self) -> int:
        now = self._clock()
        applied = 0
        while self._due and self._due[0][0] <= now:
            due_at, _, sid, gen, step = heapq.heappop(self._due)
            rec = self._conferences.get(sid)
            if rec is not None and rec.script_gen == gen:
                self._change(rec, step.status, due_at, step.reason, step.call_sid)
                applied += 1
        return applied

    def _change(
        self,
        rec: _Record,
        status: str,
        at: float,
        reason: str | None,
        call_sid: str | None,
        force: bool = False,
    ) -> None:
        if status == Status.COMPLETED:
            reason = reason or DEFAULT_END_REASON
            call_sid = None if reason == VIA_API else call_sid or new_sid("CA")
        else:
            reason = call_sid = None
        entered = status != rec.status
        if not (force or entered or (reason, call_sid) != (rec.reason, rec.call_sid)):
            return
        rec.status, rec.reason, rec.call_sid, rec.updated_at = status, reason, call_sid, at
        rec.transitions.append({"status": status, "at": at, "reason": reason, "call_sid": call_sid})
        if (entered or force) and rec.status_callback and status != Status.INIT:
            rec.sequence += 1
            event = "conference-start" if status == Status.IN_PROGRESS else "conference-end"
            self._events.append(
                CallbackEvent(
                    rec.status_callback, event, rec.sequence, at, rec.sid, rec.account_sid,
                    rec.friendly_name, reason, call_sid,
                )
            )  # fmt: skip

    def _flush(self) -> None:
        """Hand callback events to the listener outside the lock."""
        if not self._events:
            return
        with self._lock:
            events, self._events = self._events, []
        if events and self._listener is not None:
            self._listener(events)


def parse_steps(raw: Iterable[dict[str, Any]]) -> list[ScriptStep]:
    return [ScriptStep.from_json(step) for step in raw]
