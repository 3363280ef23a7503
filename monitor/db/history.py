"""Read-only history queries behind the API, the web view and `report`.

Listings page by keyset (newest first, a unique tie-breaker, never OFFSET), so
page 1,000 costs what page 1 costs and rows written meanwhile neither repeat
nor vanish. Every query runs in a read transaction with a deadline: a
statement timeout on PostgreSQL, a progress handler on SQLite.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import (
    Engine,
    Table,
    and_,
    func,
    literal,
    literal_column,
    or_,
    select,
    text,
    union_all,
)
from sqlalchemy.engine import Connection

from monitor.db.models import AccountState, Delivery, DeliveryAttempt, Event, Snapshot, Watch

W, S, E, D, A = (
    cast(Table, m.__table__) for m in (Watch, Snapshot, Event, Delivery, DeliveryAttempt)
)
ACCOUNTS = cast(Table, AccountState.__table__)
QUERY_TIMEOUT_S = 5.0
MAX_SNAPSHOTS_SHOWN = 1000
STARTED, ENDED = "conference.started", "conference.ended"

CONFERENCE_COLUMNS = (
    W.c.sid,
    W.c.account_sid,
    W.c.label,
    W.c.status.label("watch_status"),
    W.c.created_at.label("watched_at"),
    W.c.last_polled_at,
    W.c.last_error,
    S.c.status,
    S.c.friendly_name,
    S.c.region,
    S.c.reason_conference_ended,
    S.c.call_sid_ending_conference,
    S.c.date_created,
    S.c.date_updated,
)
DELIVERY_COLUMNS = (
    D.c.id,
    D.c.event_id,
    D.c.notifier,
    D.c.event_type,
    D.c.conference_sid,
    D.c.status,
    D.c.attempts,
    D.c.created_at,
    D.c.next_attempt_at,
    D.c.delivered_at,
    D.c.last_status_code,
    D.c.last_error,
)


@dataclass(frozen=True)
class Window:
    since: datetime | None = None
    until: datetime | None = None  # exclusive


@contextmanager
def reading(engine: Engine, timeout_s: float = QUERY_TIMEOUT_S) -> Iterator[Connection]:
    """A read-only connection whose statements are cut off after `timeout_s`."""
    with engine.connect().execution_options(readonly=True) as conn:
        if engine.dialect.name == "postgresql":
            conn.execute(text(f"SET LOCAL statement_timeout = {int(timeout_s * 1000)}"))
            yield conn
            return
        raw: Any = conn.connection.driver_connection
        deadline = time.monotonic() + timeout_s
        raw.set_progress_handler(lambda: int(time.monotonic() > deadline), 10_000)
        try:
            yield conn
        finally:
            raw.set_progress_handler(None, 0)


def _rows(conn: Connection, query: Any) -> list[dict[str, Any]]:
    return [dict(r._mapping) for r in conn.execute(query)]


def _before(columns: Sequence[Any], key: Sequence[Any]) -> Any:
    """Rows strictly after `key` in descending (first, second) order, index-friendly."""
    first, second = columns
    return and_(first <= key[0], or_(first < key[0], second < key[1]))


def _window(query: Any, column: Any, window: Window) -> Any:
    if window.since is not None:
        query = query.where(column >= window.since)
    if window.until is not None:
        query = query.where(column < window.until)
    return query


# -- conferences ----------------------------------------------------------------------


def conferences(
    conn: Connection,
    *,
    status: str | None = None,
    account: str | None = None,
    label: str | None = None,
    window: Window = Window(),
    limit: int = 50,
    after: tuple[datetime, str] | None = None,
) -> list[dict[str, Any]]:
    """Watched conferences, newest watch first; one more row than `limit` says "more"."""
    query: Any = select(*CONFERENCE_COLUMNS).select_from(
        W.outerjoin(S, S.c.id == W.c.current_snapshot_id)
    )
    for column, value in ((W.c.status, status), (W.c.account_sid, account), (W.c.label, label)):
        if value is not None:
            query = query.where(column == value)
    query = _window(query, W.c.created_at, window)
    if after is not None:
        query = query.where(_before((W.c.created_at, W.c.sid), after))
    query = query.order_by(W.c.created_at.desc(), W.c.sid.desc()).limit(limit + 1)
    rows = _rows(conn, query)
    _add_lifecycle_times(conn, rows[:limit])
    return rows


def _add_lifecycle_times(conn: Connection, rows: list[dict[str, Any]]) -> None:
    """`started_at`/`ended_at` (when the monitor saw it) for a page, in one query."""
    for row in rows:
        row["started_at"] = row["ended_at"] = None
    if not rows:
        return
    by_sid = {row["sid"]: row for row in rows}
    found = conn.execute(
        select(E.c.conference_sid, E.c.type, func.min(E.c.occurred_at))
        # coalesce() keeps planners off the (type, ...) index: for one page of conferences
        # the (conference_sid, ...) index finds a few rows, the other scans every start.
        .where(
            E.c.conference_sid.in_(list(by_sid)),
            func.coalesce(E.c.type, "").in_((STARTED, ENDED)),
        )
        .group_by(E.c.conference_sid, E.c.type)
    )
    for sid, kind, at in found:
        by_sid[sid]["started_at" if kind == STARTED else "ended_at"] = at


def conference(conn: Connection, sid: str) -> dict[str, Any] | None:
    """One conference with its snapshots, events, deliveries and their attempts; None if unknown."""
    rows = conferences_by_sid(conn, [sid])
    snapshots = _rows(
        conn,
        select(S).where(S.c.conference_sid == sid).order_by(S.c.id).limit(MAX_SNAPSHOTS_SHOWN),
    )
    events = _rows(
        conn, select(E).where(E.c.conference_sid == sid).order_by(E.c.occurred_at, E.c.id)
    )
    if not rows and not snapshots and not events:
        return None
    head = rows[0] if rows else _unwatched(sid, snapshots)
    deliveries = deliveries_of(conn, [e["id"] for e in events])
    return {**head, "snapshots": snapshots, "events": events, "deliveries": deliveries}


def conferences_by_sid(conn: Connection, sids: Sequence[str]) -> list[dict[str, Any]]:
    query = (
        select(*CONFERENCE_COLUMNS)
        .select_from(W.outerjoin(S, S.c.id == W.c.current_snapshot_id))
        .where(W.c.sid.in_(list(sids)))
    )
    rows = _rows(conn, query)
    _add_lifecycle_times(conn, rows)
    return rows


def _unwatched(sid: str, snapshots: list[dict[str, Any]]) -> dict[str, Any]:
    """A conference whose watch was removed: described by its last snapshot."""
    last = snapshots[-1] if snapshots else {}
    head = {c.name: last.get(c.name) for c in CONFERENCE_COLUMNS}
    head.update(sid=sid, watch_status=None, watched_at=None, label=None, last_error=None)
    head.update(last_polled_at=last.get("last_observed_at"), started_at=None, ended_at=None)
    return head


def deliveries_of(conn: Connection, event_ids: Sequence[str]) -> list[dict[str, Any]]:
    if not event_ids:
        return []
    rows = _rows(
        conn, select(*DELIVERY_COLUMNS).where(D.c.event_id.in_(list(event_ids))).order_by(D.c.id)
    )
    attempts: dict[int, list[dict[str, Any]]] = {row["id"]: [] for row in rows}
    if rows:
        found = select(A).where(A.c.delivery_id.in_(list(attempts))).order_by(A.c.id)
        for attempt in _rows(conn, found):
            attempts[attempt["delivery_id"]].append(attempt)
    for row in rows:
        row["attempt_log"] = attempts[row["id"]]
    return rows


def day(
    conn: Connection,
    start: datetime,
    end: datetime,
    *,
    limit: int,
    after: tuple[datetime, str] | None = None,
) -> list[dict[str, Any]]:
    """Conferences that may overlap [start, end): watched since a day before `start`
    (Twilio ends a conference within a day), oldest first, with their lifecycle times."""
    query: Any = (
        select(*CONFERENCE_COLUMNS)
        .select_from(W.outerjoin(S, S.c.id == W.c.current_snapshot_id))
        .where(W.c.created_at >= start - timedelta(days=1), W.c.created_at < end)
    )
    if after is not None:
        query = query.where(
            W.c.created_at >= after[0], or_(W.c.created_at > after[0], W.c.sid > after[1])
        )
    query = query.order_by(W.c.created_at, W.c.sid).limit(limit + 1)
    rows = _rows(conn, query)
    _add_lifecycle_times(conn, rows[:limit])
    return rows


# -- events and deliveries -------------------------------------------------------------


def events(
    conn: Connection,
    *,
    types: Sequence[str] = (),
    sid: str | None = None,
    window: Window = Window(),
    limit: int = 50,
    after: tuple[datetime, str] | None = None,
) -> list[dict[str, Any]]:
    """Events newest first (occurred_at, id); one more row than `limit` says "more"."""
    query: Any = select(E.c.id, E.c.occurred_at, E.c.body)
    if types:
        query = query.where(E.c.type.in_(list(types)))
    if sid is not None:
        query = query.where(E.c.conference_sid == sid)
    query = _window(query, E.c.occurred_at, window)
    if after is not None:
        query = query.where(_before((E.c.occurred_at, E.c.id), after))
    return _rows(conn, query.order_by(E.c.occurred_at.desc(), E.c.id.desc()).limit(limit + 1))


def deliveries(
    conn: Connection,
    *,
    status: str | None = None,
    notifier: str | None = None,
    limit: int = 50,
    after: int | None = None,
) -> list[dict[str, Any]]:
    """Outbox rows newest first (by id); one more row than `limit` says "more"."""
    query: Any = select(*DELIVERY_COLUMNS)
    if status is not None:
        query = query.where(D.c.status == status)
    if notifier is not None:
        query = query.where(D.c.notifier == notifier)
    if after is not None:
        query = query.where(D.c.id < after)
    return _rows(conn, query.order_by(D.c.id.desc()).limit(limit + 1))


# -- counts for the summary -------------------------------------------------------------


def event_counts(conn: Connection, types: Sequence[str], window: Window) -> dict[str, int]:
    """Events of each type in the window; one index range count per type."""
    parts = [
        _window(select(literal(t), func.count()).where(E.c.type == t), E.c.occurred_at, window)
        for t in types
    ]
    return {kind: int(n) for kind, n in conn.execute(union_all(*parts))}


def _ended(columns: Sequence[Any], window: Window) -> Any:
    """Ended events in the window. The type is a literal, not a bound parameter, so
    the planner can use the partial covering index `ix_events_ended_window`."""
    query = select(*columns).where(E.c.type == literal_column(f"'{ENDED}'"))
    return _window(query, E.c.occurred_at, window)


def end_reasons(conn: Connection, window: Window) -> dict[str | None, int]:
    """How many conferences ended in the window, by end reason (None: not given)."""
    reason = E.c.reason_conference_ended
    query = _ended([reason, func.count()], window).group_by(reason)
    return {r: int(n) for r, n in conn.execute(query)}


def end_durations(conn: Connection, window: Window) -> list[float]:
    """Twilio's own durations (date_updated minus date_created at the end, stored with
    each ended event), ascending; ends of unknown duration are left out."""
    duration = E.c.duration_s
    query = _ended([duration], window).where(duration.is_not(None))
    return sorted(float(d) for d in conn.scalars(query))  # faster here than SQL's sort


def longest_ends(conn: Connection, window: Window, top: int) -> list[Any]:
    """(id, sid, reason, duration_s) of the `top` longest conferences ended in the window."""
    duration = E.c.duration_s
    columns = [E.c.id, E.c.conference_sid, E.c.reason_conference_ended, duration]
    query = (
        _ended(columns, window)
        .where(duration.is_not(None))
        .order_by(duration.desc(), E.c.conference_sid)
        .limit(top)
    )
    return list(conn.execute(query).all())


def end_details(conn: Connection, event_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Friendly name and time of a few ends, by event id."""
    if not event_ids:
        return {}
    query = (
        select(E.c.id, S.c.friendly_name, E.c.occurred_at.label("ended_at"))
        .select_from(E.outerjoin(S, S.c.id == E.c.snapshot_id))
        .where(E.c.id.in_(list(event_ids)))
    )
    return {row.pop("id"): row for row in _rows(conn, query)}


def watch_counts(conn: Connection, window: Window) -> dict[str, int]:
    """Watches added in the window, by their status now."""
    query = _window(select(W.c.status, func.count()).group_by(W.c.status), W.c.created_at, window)
    return {status: int(n) for status, n in conn.execute(query)}


def outstanding_deliveries(conn: Connection) -> dict[str, int]:
    """Deliveries that need attention now: pending, failed, dead (index range counts)."""
    parts = [
        select(literal(s), func.count()).where(D.c.status == s)
        for s in ("pending", "failed", "dead")
    ]
    return {status: int(n) for status, n in conn.execute(union_all(*parts))}


def failing_accounts(conn: Connection) -> list[dict[str, Any]]:
    return _rows(
        conn,
        select(ACCOUNTS.c.account_sid, ACCOUNTS.c.auth_failed_since)
        .where(ACCOUNTS.c.auth_failed_since.is_not(None))
        .order_by(ACCOUNTS.c.account_sid),
    )
