"""The only module that writes SQL: watches, observations, events and the outbox.

Every observation batch is one transaction: snapshots, their events and the
events' outbox rows land together or not at all. Claims use
`FOR UPDATE SKIP LOCKED` on PostgreSQL (SQLite ignores it, and takes one
writer at a time through `BEGIN IMMEDIATE`).
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import Engine, Table, Update, bindparam, delete, func, insert, select, update
from sqlalchemy.engine import Connection

from monitor.db.models import AccountState, Delivery, Event, Snapshot, Watch
from monitor.domain import Conference
from monitor.events import NewEvent
from monitor.lifecycle import LifecycleState

ACCOUNTS = cast(Table, AccountState.__table__)
W, S, E, D = (cast(Table, m.__table__) for m in (Watch, Snapshot, Event, Delivery))


@dataclass(frozen=True)
class WatchState:
    """What a poll needs to know about a watch it has claimed."""

    sid: str
    account_sid: str
    created_at: datetime
    lifecycle: LifecycleState
    current_snapshot_id: int | None
    current_hash: str | None
    first_not_found_at: datetime | None


@dataclass(frozen=True)
class Observation:
    """A successful fetch, ready to persist: new snapshot or a bump of the current one."""

    watch: WatchState
    conference: Conference
    observed_at: datetime
    detected_via: str
    lifecycle: LifecycleState
    events: tuple[NewEvent, ...]


@dataclass(frozen=True)
class Miss:
    """A failed poll: reschedule, record the error, maybe end the watch with an event."""

    sid: str
    at: datetime
    error: str
    next_poll_at: datetime
    first_not_found_at: datetime | None = None
    new_status: str | None = None  # e.g. "not_found"
    events: tuple[NewEvent, ...] = ()


@dataclass
class BatchResult:
    snapshots_written: int = 0
    observations: int = 0
    events: list[NewEvent] = field(default_factory=list)
    recovered_accounts: list[str] = field(default_factory=list)


class Store:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.is_postgres = engine.dialect.name == "postgresql"

    def read(self) -> Connection:
        """A connection for reading; on SQLite it does not take the write lock."""
        return self.engine.connect().execution_options(readonly=True)

    # -- watches -------------------------------------------------------------------

    def add_watches(
        self, sids: Sequence[str], account_sid: str, label: str | None, now: datetime
    ) -> list[str]:
        """Insert the SIDs not yet watched (re-activating none); returns those added."""
        with self.engine.begin() as conn:
            existing = set(conn.scalars(select(W.c.sid).where(W.c.sid.in_(sids))))
            fresh = [s for s in dict.fromkeys(sids) if s not in existing]
            if fresh:
                conn.execute(insert(W), [_new_watch(s, account_sid, label, now) for s in fresh])
        return fresh

    def remove_watches(self, sids: Sequence[str]) -> list[str]:
        with self.engine.begin() as conn:
            found = list(conn.scalars(select(W.c.sid).where(W.c.sid.in_(sids))))
            conn.execute(delete(W).where(W.c.sid.in_(found)))
        return found

    def list_watches(self, status: str | None = None) -> list[dict[str, object]]:
        query = select(W).order_by(W.c.created_at, W.c.sid)
        if status:
            query = query.where(W.c.status == status)
        with self.read() as conn:
            return [dict(row._mapping) for row in conn.execute(query)]

    def watch_counts(self) -> dict[str, int]:
        with self.read() as conn:
            rows = conn.execute(select(W.c.status, func.count()).group_by(W.c.status))
            return {status: count for status, count in rows}

    def claim_due_watches(
        self, now: datetime, limit: int, interval_s: float, jitter_s: float
    ) -> list[WatchState]:
        """Take due watches and push their next_poll_at forward: the push is the lease."""
        query = (
            select(W)
            .where(W.c.status == "active", W.c.next_poll_at <= now)
            .order_by(W.c.next_poll_at)
            .limit(limit)
        )
        if self.is_postgres:
            query = query.with_for_update(skip_locked=True)
        with self.engine.begin() as conn:
            rows = conn.execute(query).all()
            if rows:
                params = [
                    {"k": r.sid, "n": _next_due(r.next_poll_at, now, interval_s, jitter_s)}
                    for r in rows
                ]
                conn.execute(_reschedule_stmt(), params)
        return [_watch_state(r) for r in rows]

    def get_watch(self, sid: str) -> WatchState | None:
        with self.read() as conn:
            row = conn.execute(select(W).where(W.c.sid == sid)).first()
        return _watch_state(row) if row else None

    # -- observations ---------------------------------------------------------------

    def record(
        self,
        observations: Sequence[Observation],
        misses: Sequence[Miss] = (),
        auth_failures: Sequence[NewEvent] = (),
        ok_accounts: Iterable[str] = (),
    ) -> BatchResult:
        """Persist a batch of poll outcomes in one transaction.

        `auth_failures` are candidate `watch.auth_failed` events, one per account;
        each is written only if it starts a new episode, in the same transaction
        that marks the episode, so the mark never exists without its event.
        Accounts in `ok_accounts` end their episode.
        """
        result = BatchResult(observations=len(observations))
        with self.engine.begin() as conn:
            touches = [o for o in observations if o.conference.content_hash == o.watch.current_hash]
            changed = [o for o in observations if o.conference.content_hash != o.watch.current_hash]
            if touches:
                _touch_snapshots(conn, touches)
            for obs in changed:
                _write_snapshot(conn, obs)
                result.events.extend(obs.events)
            result.snapshots_written = len(changed)
            for miss in misses:
                _write_miss(conn, miss)
            new_episodes = [e for e in auth_failures if _start_auth_episode(conn, e)]
            late = [*[e for m in misses for e in m.events], *new_episodes]
            _write_events(conn, late)
            result.events.extend(late)
            result.recovered_accounts = _end_auth_episodes(conn, ok_accounts)
        return result

    def failing_accounts(self) -> set[str]:
        table = ACCOUNTS
        with self.read() as conn:
            return set(
                conn.scalars(
                    select(table.c.account_sid).where(table.c.auth_failed_since.is_not(None))
                )
            )

    def write_events(self, events: Sequence[NewEvent]) -> None:
        with self.engine.begin() as conn:
            _write_events(conn, events)


def _start_auth_episode(conn: Connection, event: NewEvent) -> bool:
    """Mark the event's account as failing; False if it already was (no second event)."""
    account = event.account_sid
    row = conn.execute(select(ACCOUNTS).where(ACCOUNTS.c.account_sid == account)).first()
    if row is not None and row.auth_failed_since is not None:
        return False
    values = {"auth_failed_since": event.occurred_at, "last_error": event.data.get("detail")}
    if row is None:
        conn.execute(insert(ACCOUNTS).values(account_sid=account, **values))
    else:
        conn.execute(update(ACCOUNTS).where(ACCOUNTS.c.account_sid == account).values(**values))
    return True


def _end_auth_episodes(conn: Connection, accounts: Iterable[str]) -> list[str]:
    wanted = list(accounts)
    if not wanted:
        return []
    failing = ACCOUNTS.c.account_sid.in_(wanted) & ACCOUNTS.c.auth_failed_since.is_not(None)
    ended = list(conn.scalars(select(ACCOUNTS.c.account_sid).where(failing)))
    if ended:
        conn.execute(
            update(ACCOUNTS)
            .where(ACCOUNTS.c.account_sid.in_(ended))
            .values(auth_failed_since=None, last_error=None)
        )
    return ended


def _next_due(due: datetime, now: datetime, interval_s: float, jitter_s: float) -> datetime:
    """One interval after the time it was due (not after the tick that took it),
    so the tick's granularity does not stretch the interval; never in the past."""
    jitter = random.uniform(-jitter_s, jitter_s) if jitter_s > 0 else 0.0
    step = timedelta(seconds=interval_s + jitter)
    return due + step if due + step > now else now + step


def _reschedule_stmt() -> Update:
    return update(W).where(W.c.sid == bindparam("k")).values(next_poll_at=bindparam("n"))


def _new_watch(sid: str, account_sid: str, label: str | None, now: datetime) -> dict[str, object]:
    return {
        "sid": sid,
        "account_sid": account_sid,
        "label": label,
        "status": "active",
        "created_at": now,
        "next_poll_at": now,
        "consecutive_errors": 0,
    }


def _watch_state(r: Any) -> WatchState:
    """A watches row as the value a poll works with."""
    return WatchState(
        sid=r.sid,
        account_sid=r.account_sid,
        created_at=r.created_at,
        lifecycle=LifecycleState(r.last_status, r.high_status, r.current_snapshot_id is not None),
        current_snapshot_id=r.current_snapshot_id,
        current_hash=r.current_hash,
        first_not_found_at=r.first_not_found_at,
    )


def _touch_snapshots(conn: Connection, touches: Sequence[Observation]) -> None:
    conn.execute(
        update(S)
        .where(S.c.id == bindparam("k"))
        .values(last_observed_at=bindparam("t"), observation_count=S.c.observation_count + 1),
        [{"k": o.watch.current_snapshot_id, "t": o.observed_at} for o in touches],
    )
    conn.execute(
        update(W)
        .where(W.c.sid == bindparam("k"))
        .values(
            last_polled_at=bindparam("t"),
            last_error=None,
            consecutive_errors=0,
            first_not_found_at=None,
        ),
        [{"k": o.watch.sid, "t": o.observed_at} for o in touches],
    )


def _write_snapshot(conn: Connection, obs: Observation) -> None:
    c = obs.conference
    snapshot_id = conn.execute(
        insert(S)
        .values(
            conference_sid=c.sid,
            account_sid=c.account_sid,
            status=c.status,
            friendly_name=c.friendly_name,
            region=c.region,
            reason_conference_ended=c.reason_conference_ended,
            call_sid_ending_conference=c.call_sid_ending_conference,
            date_created=c.date_created,
            date_updated=c.date_updated,
            content_hash=c.content_hash,
            raw_json=c.raw_json(),
            detected_via=obs.detected_via,
            first_observed_at=obs.observed_at,
            last_observed_at=obs.observed_at,
            observation_count=1,
        )
        .returning(S.c.id)
    ).scalar_one()
    state = obs.lifecycle
    conn.execute(
        update(W)
        .where(W.c.sid == c.sid)
        .values(
            last_polled_at=obs.observed_at,
            last_status=state.last_status,
            high_status=state.high_status,
            current_snapshot_id=snapshot_id,
            current_hash=c.content_hash,
            first_not_found_at=None,
            last_error=None,
            consecutive_errors=0,
            status="completed" if state.terminal else "active",
        )
    )
    _write_events(conn, obs.events, snapshot_id)


def _write_miss(conn: Connection, miss: Miss) -> None:
    values: dict[str, object] = {
        "next_poll_at": miss.next_poll_at,
        "last_error": miss.error,
        "consecutive_errors": W.c.consecutive_errors + 1,
        "first_not_found_at": miss.first_not_found_at,
    }
    if miss.new_status:
        values["status"] = miss.new_status
    conn.execute(update(W).where(W.c.sid == miss.sid).values(**values))


def _write_events(
    conn: Connection, events: Sequence[NewEvent], snapshot_id: int | None = None
) -> None:
    if not events:
        return
    conn.execute(insert(E), [_event_row(e, snapshot_id) for e in events])
    outbox = [_delivery_row(e, name) for e in events for name in e.notifiers]
    if outbox:
        conn.execute(insert(D), outbox)


def _event_row(e: NewEvent, snapshot_id: int | None) -> dict[str, object]:
    return {
        "id": e.id,
        "type": e.type,
        "conference_sid": e.conference_sid,
        "account_sid": e.account_sid,
        "snapshot_id": snapshot_id,
        "from_status": e.from_status,
        "to_status": e.to_status,
        "skipped": ",".join(e.skipped),
        "reason_conference_ended": e.reason_conference_ended,
        "call_sid_ending_conference": e.call_sid_ending_conference,
        "occurred_at": e.occurred_at,
        "body": e.body,
    }


def _delivery_row(e: NewEvent, notifier: str) -> dict[str, object]:
    return {
        "event_id": e.id,
        "notifier": notifier,
        "event_type": e.type,
        "conference_sid": e.conference_sid,
        "status": "pending",
        "attempts": 0,
        "created_at": e.occurred_at,
        "next_attempt_at": e.occurred_at,
    }
