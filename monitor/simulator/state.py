"""In-memory model behind the Twilio simulator: conferences, scripts, list paging.

Pure and thread-safe: no sockets here, and time comes from an injected clock so
tests can drive dates. Scripted status changes are kept in a heap and applied
lazily (on every read, or when `advance()` runs), stamped with their scheduled
time rather than the time they happened to be noticed. Conferences can be made
and scripted in bulk, and listing stays about a page's work at 100,000.
"""

from __future__ import annotations

import heapq
import itertools
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from monitor.domain import ACCOUNT_SID_RE, CONFERENCE_SID_RE, Status
from monitor.simulator.listing import DateRange, ListIndex, ListQuery, PageSlice
from monitor.simulator.records import (
    DEFAULT_ACCOUNT_SID,
    DEFAULT_END_REASON,
    DEFAULT_REGION,
    STATUSES,
    VIA_API,
    CallbackEvent,
    Clock,
    Record,
    ScriptStep,
    SimulatorError,
    check_status,
    new_sid,
    rfc2822,
)

__all__ = [
    "DEFAULT_ACCOUNT_SID",
    "STATUSES",
    "CallbackEvent",
    "Clock",
    "DateRange",
    "ListQuery",
    "PageSlice",
    "ScriptStep",
    "SimulatorError",
    "SimulatorState",
    "new_sid",
    "parse_steps",
    "rfc2822",
]

MAX_BULK = 1_000_000


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
        # When each conference was last answered (fetched or listed), on the real
        # clock: lets a benchmark tell how many were observed within an interval.
        self._served: dict[str, float] = {}
        self._conferences: dict[str, Record] = {}
        self._index = ListIndex()
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
        if not CONFERENCE_SID_RE.fullmatch(sid):
            raise ValueError(f"sid must match {CONFERENCE_SID_RE.pattern}, got {sid!r}")
        _check_new(account_sid, status)
        with self._lock:
            if sid in self._conferences:
                raise ValueError(f"conference {sid} already exists")
            rec = self._new(sid, account_sid, friendly_name, region, hidden_for_s, status_callback)
            self._change(rec, status, rec.created_at, None, None, force=True)
            self._index.add(rec)
            out = rec.as_json()
        self._flush()
        return out

    def create_many(
        self,
        count: int,
        *,
        account_sid: str = DEFAULT_ACCOUNT_SID,
        friendly_name: str | None = None,
        region: str | None = DEFAULT_REGION,
        status: str = Status.INIT.value,
        hidden_for_s: float = 0.0,
        status_callback: str | None = None,
    ) -> list[str]:
        """`count` new conferences at once; `{n}` in `friendly_name` becomes 0, 1, 2, ..."""
        if not isinstance(count, int) or isinstance(count, bool) or not 1 <= count <= MAX_BULK:
            raise ValueError(f"count must be a whole number from 1 to {MAX_BULK}, got {count!r}")
        _check_new(account_sid, status)
        names = _names(friendly_name, count)
        with self._lock:
            made = []
            for name in names:
                sid = new_sid("CF")
                rec = self._new(sid, account_sid, name, region, hidden_for_s, status_callback)
                self._change(rec, status, rec.created_at, None, None, force=True)
                made.append(rec)
            self._index.add_many(made)
        self._flush()
        return [rec.sid for rec in made]

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

    def fetch(self, account_sid: str, sid: str) -> bytes | None:
        """`get` as the JSON bytes the API sends (cached until the conference changes)."""
        with self._lock:
            self._advance_locked()
            rec = self._visible(account_sid, sid)
            out = rec.as_bytes() if rec else None
            if rec is not None:
                self._served[sid] = time.monotonic()
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
        check_status(status, reason, call_sid)
        with self._lock:
            self._advance_locked()
            rec = self._find(sid)
            self._change(rec, status, self._clock(), reason, call_sid)
            out = rec.as_json()
        self._flush()
        return out

    def script(self, sid: str, steps: Sequence[ScriptStep]) -> int:
        """Schedule steps relative to now, replacing any steps still pending."""
        return self.script_many({sid: steps})

    def script_many(self, scripts: Mapping[str, Sequence[ScriptStep]]) -> int:
        """Scripts for many conferences at once (all or none: every SID must exist)."""
        with self._lock:
            records = [self._find(sid) for sid in scripts]
            start = self._clock()
            for rec in records:
                rec.script_gen += 1
                for step in scripts[rec.sid]:
                    entry = (start + step.after_s, next(self._seq), rec.sid, rec.script_gen, step)
                    heapq.heappush(self._due, entry)
            self._advance_locked()
        self._flush()
        return sum(len(steps) for steps in scripts.values())

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
        """One page, newest first, as JSON bytes per conference."""
        with self._lock:
            self._advance_locked()
            now = self._clock()
            page = self._index.page(
                account_sid, query, self._conferences, lambda rec: rec.visible_at <= now
            )
            served = time.monotonic()
            self._served.update(dict.fromkeys(page.sids, served))
        self._flush()
        return page

    def served_within(self, seconds: float) -> int:
        """How many conferences the API answered (fetched or listed) in the last `seconds`."""
        since = time.monotonic() - seconds
        with self._lock:
            return sum(1 for at in self._served.values() if at >= since)

    def reset(self) -> None:
        with self._lock:
            self._conferences.clear()
            self._served.clear()
            self._index.clear()
            self._accounts.clear()
            self._due.clear()
            self._events.clear()

    def __len__(self) -> int:
        with self._lock:
            return len(self._conferences)

    # -- internals, called with the lock held ---------------------------------

    def _new(
        self,
        sid: str,
        account_sid: str,
        friendly_name: str | None,
        region: str | None,
        hidden_for_s: float,
        status_callback: str | None,
    ) -> Record:
        now = self._clock()
        rec = Record(
            sid, account_sid, friendly_name, region, now, now + hidden_for_s, status_callback
        )
        self._conferences[sid] = rec
        self._accounts.add(account_sid)
        return rec

    def _find(self, sid: str) -> Record:
        rec = self._conferences.get(sid)
        if rec is None:
            raise KeyError(f"no conference {sid}")
        return rec

    def _visible(self, account_sid: str, sid: str) -> Record | None:
        rec = self._conferences.get(sid)
        if rec is None or rec.account_sid != account_sid or rec.visible_at > self._clock():
            return None
        return rec

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
        rec: Record,
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
        if entered and not force:
            self._index.move(rec, rec.status, status)
        rec.status, rec.reason, rec.call_sid, rec.updated_at = status, reason, call_sid, at
        rec.cached = None
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


def _check_new(account_sid: str, status: str) -> None:
    if not isinstance(account_sid, str) or not ACCOUNT_SID_RE.fullmatch(account_sid):
        raise ValueError(f"account_sid must match {ACCOUNT_SID_RE.pattern}")
    check_status(status, None, None)


def _names(template: str | None, count: int) -> Iterable[str | None]:
    if template is None or "{n}" not in template:
        return itertools.repeat(template, count)
    return (template.replace("{n}", str(n)) for n in range(count))


def parse_steps(raw: Iterable[Any]) -> list[ScriptStep]:
    return [ScriptStep.from_json(step) for step in raw]
