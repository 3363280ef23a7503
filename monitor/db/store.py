"""The SQL of observing: watches, their claims, and recording what was seen.

Every batch of outcomes is one transaction: snapshots, their events and the
events' outbox rows land together or not at all. A change is recorded only by
compare-and-set on the watch's `version` (and only if nothing newer was
recorded since), so any number of daemons, `poll` commands and callbacks can
observe one conference and exactly one of them records each transition; the
unique index on events is the last line behind that. Claims for one-by-one
fetches take a lease (`lease_owner`, `lease_until`) and, on PostgreSQL,
`FOR UPDATE SKIP LOCKED`.
"""

from __future__ import annotations

import functools
import random
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, TypeVar, cast

from sqlalchemy import Engine, Table, bindparam, case, delete, func, select, text, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.sql.dml import Insert, Update

from monitor.db.models import (
    ONCE_PER_CONFERENCE,
    AccountState,
    AccountSweep,
    Delivery,
    Event,
    Snapshot,
    Watch,
)
from monitor.domain import Conference
from monitor.events import NewEvent, duration_s
from monitor.lifecycle import LifecycleState

ACCOUNTS = cast(Table, AccountState.__table__)
SWEEPS = cast(Table, AccountSweep.__table__)
W, S, E, D = (cast(Table, m.__table__) for m in (Watch, Snapshot, Event, Delivery))

CHUNK = 500  # rows per IN list or executemany, well under every driver's parameter limit
ADD_CHUNK = 1000
T = TypeVar("T")


@dataclass(frozen=True)
class WatchState:
    """What detection needs to know about a watch: its state and the version it was read at."""

    sid: str
    account_sid: str
    created_at: datetime
    lifecycle: LifecycleState
    current_snapshot_id: int | None
    current_hash: str | None
    first_not_found_at: datetime | None
    version: int = 0
    observed_at: datetime | None = None
    mode: str = "fetch"
    status: str = "active"
    consecutive_errors: int = 0
    callback_sequence: int | None = None


@dataclass(frozen=True)
class Observation:
    """A conference whose resource changed, ready to record against `watch.version`.

    `observed_at` is when the state was current (the request's start, or a
    callback's receipt); `mode` is who observes the watch next (`list` hands an
    active watch to its account's sweep). A callback sets `sequence` (its
    SequenceNumber, recorded only if newer than the watch's) and `confirm_at`:
    the watch stays active and is fetched then, so a poll confirms what the
    callback said and fills the fields it lacked.
    """

    watch: WatchState
    conference: Conference
    observed_at: datetime
    detected_via: str
    lifecycle: LifecycleState
    events: tuple[NewEvent, ...]
    mode: str = "fetch"
    sequence: int | None = None
    confirm_at: datetime | None = None


@dataclass(frozen=True)
class Miss:
    """A failed poll: reschedule, record the error, maybe end the watch with an event.

    A miss that ends the watch (`new_status`) is recorded by compare-and-set on
    `version`, like an observation; other misses only annotate the watch.
    """

    sid: str
    at: datetime
    error: str
    next_poll_at: datetime
    first_not_found_at: datetime | None = None
    new_status: str | None = None  # e.g. "not_found"
    events: tuple[NewEvent, ...] = ()
    version: int | None = None


@dataclass
class Batch:
    """Outcomes to record in one transaction."""

    changes: list[Observation] = field(default_factory=list)
    misses: list[Miss] = field(default_factory=list)
    auth_failures: list[NewEvent] = field(default_factory=list)
    ok_accounts: set[str] = field(default_factory=set)
    # Unchanged observations whose watch row needs a write anyway (a lease to
    # drop, a mode to switch, errors to clear): sid -> mode to leave it in.
    seen: dict[str, str] = field(default_factory=dict)
    owner: str | None = None  # the lease holder, for `seen` rows claimed by a fetch

    def __bool__(self) -> bool:
        return bool(self.changes or self.misses or self.auth_failures or self.seen)


@dataclass
class BatchResult:
    snapshots_written: int = 0
    observations: int = 0  # changes recorded
    dropped: int = 0  # changes that lost the race to another observer, or were stale
    events: list[NewEvent] = field(default_factory=list)
    recovered_accounts: list[str] = field(default_factory=list)


@dataclass
class AddResult:
    added: set[str] = field(default_factory=set)
    relabelled: set[str] = field(default_factory=set)
    unchanged: set[str] = field(default_factory=set)


@dataclass(frozen=True)
class Touch:
    """Unchanged observations of one snapshot, written together (see `TouchBuffer`)."""

    snapshot_id: int
    last_seen: datetime
    count: int


def chunks(items: Sequence[T], size: int = CHUNK) -> Iterator[Sequence[T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


class WriteHealth:
    """Whether the last write transaction succeeded: readiness tells the truth with it.

    A full disk, a read-only file or a lock held too long fail writes while
    reads (and `SELECT 1`) still work; the daemon must not look healthy then.
    """

    def __init__(self, on_change: Callable[[bool], None] | None = None) -> None:
        self._lock = threading.Lock()
        self.on_change = on_change
        self.failing_since: float | None = None  # time.time() of the first failure in a row
        self.reason = ""

    def ok(self) -> None:
        if self.failing_since is None:
            return
        with self._lock:
            self.failing_since, self.reason = None, ""
        if self.on_change:
            self.on_change(True)

    def failed(self, exc: BaseException) -> None:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        with self._lock:
            if self.failing_since is None:
                self.failing_since = time.time()
            self.reason = first[:200]
        if self.on_change:
            self.on_change(False)

    def problem(self) -> str | None:
        with self._lock:
            if self.failing_since is None:
                return None
            since = time.strftime("%H:%M:%S", time.gmtime(self.failing_since))
            return f"observations cannot be written (since {since} UTC): {self.reason}"


class Store:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.is_postgres = engine.dialect.name == "postgresql"
        self.health = WriteHealth()
        self._insert_event = self.insert_ignoring_conflicts(E).returning(E.c.id)

    @contextmanager
    def writing(self) -> Iterator[Connection]:
        """A write transaction whose success or failure `health` remembers."""
        try:
            with self.engine.begin() as conn:
                yield conn
        except IntegrityError:
            raise  # a constraint refused a write: the database itself is fine
        except DBAPIError as exc:
            self.health.failed(exc)
            raise
        self.health.ok()

    def read(self) -> Connection:
        """A connection for reading; on SQLite it does not take the write lock."""
        return self.engine.connect().execution_options(readonly=True)

    def insert_ignoring_conflicts(self, table: Table) -> Insert:
        """INSERT ... ON CONFLICT DO NOTHING, which both dialects spell alike."""
        dialect = postgresql if self.is_postgres else sqlite
        return dialect.insert(table).on_conflict_do_nothing()

    # -- watches -------------------------------------------------------------------

    def add_watches(
        self,
        sids: Sequence[str],
        account_sid: str,
        label: str | None,
        now: datetime,
        *,
        mode: str = "fetch",
    ) -> list[str]:
        """Insert the SIDs not yet watched; returns those added, in the order given."""
        added = self.add_many(sids, account_sid, label, now, mode=mode).added
        return [s for s in dict.fromkeys(sids) if s in added]

    def add_many(
        self,
        sids: Sequence[str],
        account_sid: str,
        label: str | None,
        now: datetime,
        *,
        mode: str = "fetch",
        relabel: bool = False,
        progress: Callable[[int, int], None] | None = None,
    ) -> AddResult:
        """Watch the SIDs not yet watched; with `relabel`, set the label of those that are.

        Linear in the number of SIDs, written in chunks inside one transaction (a
        failure adds nothing), and safe against a concurrent add of the same SID:
        the primary key decides, and the loser counts it as already watched.
        """
        unique = list(dict.fromkeys(sids))
        result = AddResult()
        with self.writing() as conn:
            for done, part in enumerate(chunks(unique, ADD_CHUNK), start=1):
                rows = [_new_watch(s, account_sid, label, now, mode) for s in part]
                stmt = self.insert_ignoring_conflicts(W).returning(W.c.sid)
                fresh = set(conn.execute(stmt, rows).scalars())
                result.added |= fresh
                existing = [s for s in part if s not in fresh]
                if relabel and existing:
                    result.relabelled |= set(
                        conn.scalars(
                            update(W)
                            .where(W.c.sid.in_(existing), _differs(W.c.label, label))
                            .values(label=label)
                            .returning(W.c.sid)
                        )
                    )
                result.unchanged |= {s for s in existing if s not in result.relabelled}
                if progress is not None:
                    progress(min(done * ADD_CHUNK, len(unique)), len(unique))
            if result.added:
                self._ensure_sweep_row(conn, account_sid, now)
        return result

    def _ensure_sweep_row(self, conn: Connection, account_sid: str, now: datetime) -> None:
        row = {"account_sid": account_sid, "next_sweep_at": now}
        conn.execute(self.insert_ignoring_conflicts(SWEEPS), [row])

    def remove_watches(self, sids: Sequence[str]) -> list[str]:
        found: list[str] = []
        with self.writing() as conn:
            for part in chunks(list(dict.fromkeys(sids))):
                hit = list(conn.scalars(select(W.c.sid).where(W.c.sid.in_(part))))
                conn.execute(delete(W).where(W.c.sid.in_(hit)))
                found += hit
        return found

    def list_watches(self, status: str | None = None) -> list[dict[str, object]]:
        """Watches, with `last_polled_at` brought up to the account's last sweep for
        watches the sweep observes (their own row is written at most once a minute)."""
        query = (
            select(W, SWEEPS.c.completed_at.label("sweep_completed_at"))
            .outerjoin(SWEEPS, SWEEPS.c.account_sid == W.c.account_sid)
            .order_by(W.c.created_at, W.c.sid)
        )
        if status:
            query = query.where(W.c.status == status)
        with self.read() as conn:
            rows = [dict(row._mapping) for row in conn.execute(query)]
        for row in rows:
            swept = row.pop("sweep_completed_at")
            last = row["last_polled_at"]
            if row["mode"] == "list" and row["status"] == "active" and swept is not None:
                row["last_polled_at"] = swept if last is None else max(last, swept)
            for private in (
                "lease_owner",
                "lease_until",
                "version",
                "observed_at",
                "callback_sequence",
            ):
                row.pop(private, None)
        return rows

    def watch_counts(self) -> dict[str, int]:
        with self.read() as conn:
            rows = conn.execute(select(W.c.status, func.count()).group_by(W.c.status))
            return {status: count for status, count in rows}

    def get_watch(self, sid: str) -> WatchState | None:
        return self.watch_states([sid]).get(sid)

    def watch_states(self, sids: Sequence[str]) -> dict[str, WatchState]:
        found: dict[str, WatchState] = {}
        with self.read() as conn:
            for part in chunks(list(sids)):
                for row in conn.execute(select(W).where(W.c.sid.in_(part))):
                    found[row.sid] = watch_state(row)
        return found

    def next_due(self, *, fetch_mode_only: bool = False) -> datetime | None:
        """The earliest `next_poll_at` of the active watches (fetch-mode ones only)."""
        query = select(func.min(W.c.next_poll_at)).where(W.c.status == "active")
        if fetch_mode_only:
            query = query.where(W.c.mode == "fetch")
        with self.read() as conn:
            due: datetime | None = conn.execute(query).scalar_one_or_none()
        return due

    def claim_due_watches(
        self,
        now: datetime,
        limit: int,
        interval_s: float,
        jitter_s: float,
        *,
        owner: str = "",
        lease_s: float = 30.0,
        fetch_mode_only: bool = False,
    ) -> list[WatchState]:
        """Take due watches for one-by-one fetching: a lease, and the next due time.

        A watch is due when `next_poll_at` has come and nobody holds a live lease
        on it; with `fetch_mode_only`, watches the list sweep observes are left alone.
        """
        query = (
            select(W)
            .where(
                W.c.status == "active",
                W.c.next_poll_at <= now,
                (W.c.lease_until.is_(None)) | (W.c.lease_until < now),
            )
            .order_by(W.c.next_poll_at)
            .limit(limit)
        )
        if fetch_mode_only:
            query = query.where(W.c.mode == "fetch")
        if self.is_postgres:
            query = query.with_for_update(skip_locked=True)
        lease_until = now + timedelta(seconds=lease_s)
        with self.writing() as conn:
            rows = conn.execute(query).all()
            if rows:
                conn.execute(
                    update(W)
                    .where(W.c.sid == bindparam("k"))
                    .values(
                        next_poll_at=bindparam("n"), lease_owner=owner, lease_until=lease_until
                    ),
                    [
                        {"k": r.sid, "n": _next_due(r.next_poll_at, now, interval_s, jitter_s)}
                        for r in rows
                    ],
                )
        return [watch_state(r) for r in rows]

    def release(self, sids: Sequence[str], owner: str) -> None:
        """Drop our lease on watches we claimed but will not fetch (stopping)."""
        with self.writing() as conn:
            for part in chunks(list(sids)):
                conn.execute(
                    update(W)
                    .where(W.c.sid.in_(part), W.c.lease_owner == owner)
                    .values(lease_owner=None, lease_until=None)
                )

    # -- recording -----------------------------------------------------------------

    def record(self, batch: Batch, now: datetime) -> BatchResult:
        """Persist a batch of outcomes in one transaction.

        Changes that lose the compare-and-set are dropped and counted. Candidate
        `watch.auth_failed` events are written only if they start a new episode
        for their account, in the transaction that marks the episode.

        The changes are first written together (`write_changes`, a few statements
        for the lot); if any of them finds its watch changed under it, that
        transaction is rolled back and the batch recorded again change by change,
        each winning or losing its own compare-and-set.
        """
        if len(batch.changes) > 1 and self.engine.dialect.supports_sane_multi_rowcount:
            try:
                return self._record(batch, now, batched=True)
            except (LostRace, IntegrityError):
                pass  # another observer got in: row by row, each by its own CAS
        return self._record(batch, now, batched=False)

    def _record(self, batch: Batch, now: datetime, *, batched: bool) -> BatchResult:
        result = BatchResult()
        with self.writing() as conn:
            self._lock_in_order(conn, batch)
            if batched:
                self.write_changes(conn, batch.changes, now, result)
            else:
                for obs in batch.changes:
                    self.write_change(conn, obs, now, result)
            self._write_seen(conn, batch.seen, batch.owner, now)
            for miss in batch.misses:
                if _write_miss(conn, miss, batch.owner):
                    result.events.extend(self._write_events(conn, miss.events))
            for event in batch.auth_failures:
                if _start_auth_episode(conn, event):
                    result.events.extend(self._write_events(conn, [event]))
            result.recovered_accounts = _end_auth_episodes(conn, batch.ok_accounts)
        return result

    def _lock_in_order(self, conn: Connection, batch: Batch) -> None:
        """On PostgreSQL, lock the batch's watch rows in SID order before writing them.

        Every writer that holds several watch rows (a batch, a group of status
        callbacks) takes them in SID order, so two never wait on each other in a
        cycle (a deadlock that would abort one). SQLite has one writer at a time.
        """
        if not self.is_postgres:
            return
        sids = sorted(
            {o.watch.sid for o in batch.changes} | {m.sid for m in batch.misses} | set(batch.seen)
        )
        for part in chunks(sids):
            conn.execute(
                select(W.c.sid).where(W.c.sid.in_(part)).order_by(W.c.sid).with_for_update()
            )

    def lock_watch(self, conn: Connection, sid: str) -> WatchState | None:
        """The watch as it is inside this write transaction (row-locked on PostgreSQL;
        SQLite's `BEGIN IMMEDIATE` already excludes other writers), so a
        compare-and-set made from it rarely loses."""
        query = select(W).where(W.c.sid == sid)
        if self.is_postgres:
            query = query.with_for_update()
        row = conn.execute(query).first()
        return watch_state(row) if row is not None else None

    def lock_watches(self, conn: Connection, sids: Iterable[str]) -> dict[str, WatchState]:
        """`lock_watch` for many, in one statement (rows locked in SID order)."""
        found: dict[str, WatchState] = {}
        for part in chunks(sorted(set(sids))):
            query = select(W).where(W.c.sid.in_(part)).order_by(W.c.sid)
            if self.is_postgres:
                query = query.with_for_update()
            found.update((r.sid, watch_state(r)) for r in conn.execute(query))
        return found

    def write_changes(
        self, conn: Connection, changes: Sequence[Observation], now: datetime, result: BatchResult
    ) -> None:
        """Record many changes in a few statements instead of several per change.

        Every change must win its compare-and-set: else `LostRace` is raised and
        the caller's transaction must be rolled back and retried row by row. A
        change older than what its watch already holds (by time, or by callback
        sequence) is dropped here, as `write_change` would drop it: the version
        check guarantees the row still holds what the watch state says.
        """
        if not changes:
            return
        if not self.engine.dialect.supports_sane_multi_rowcount:
            raise LostRace("this driver cannot count an executemany's rows")
        kept = [o for o in changes if _newer(o)]
        result.dropped += len(changes) - len(kept)
        if not kept:
            return
        rows = [_snapshot_row(o) for o in kept]
        stmt = S.insert().returning(S.c.id, sort_by_parameter_order=True)
        ids = [int(i) for i in conn.execute(stmt, rows).scalars()]
        claimed = 0
        for confirming in (False, True):
            params = [
                _cas_params(o, i, now)
                for o, i in zip(kept, ids, strict=True)
                if (o.confirm_at is not None) == confirming
            ]
            if params:
                claimed += conn.execute(_cas_update(confirming), params).rowcount
        if claimed != len(kept):
            raise LostRace(f"{len(kept) - claimed} of {len(kept)} changes lost their CAS")
        result.snapshots_written += len(kept)
        result.observations += len(kept)
        events = [(e, i) for o, i in zip(kept, ids, strict=True) for e in o.events]
        result.events.extend(self._write_events_many(conn, events))

    def _write_events_many(
        self, conn: Connection, events: Sequence[tuple[NewEvent, int]]
    ) -> list[NewEvent]:
        """Insert events in one statement, skipping a started/ended already recorded."""
        once = ("conference.started", "conference.ended")
        sids = sorted({e.conference_sid for e, _ in events if e.type in once and e.conference_sid})
        taken: set[tuple[str, str]] = set()
        for part in chunks(sids):
            # The unique index's own condition, spelled as in the index: SQLite uses a
            # partial index only for a query whose terms imply its WHERE literally; with
            # `type IN (?, ?)` it would walk every started and ended event instead.
            query = select(E.c.conference_sid, E.c.type).where(
                E.c.conference_sid.in_(part), text(ONCE_PER_CONFERENCE)
            )
            taken |= {(r.conference_sid, r.type) for r in conn.execute(query)}
        written = [e for e, _ in events if (e.conference_sid, e.type) not in taken]
        if written:
            snapshot_of = {e.id: i for e, i in events}
            rows = [_event_row(e, snapshot_of[e.id]) for e in written]
            conn.execute(E.insert(), rows)  # a conflict now is a bug: it fails the batch
        outbox = [_delivery_row(e, name) for e in written for name in e.notifiers]
        if outbox:
            conn.execute(D.insert(), outbox)
        return written

    def insert_watch(self, conn: Connection, sid: str, account_sid: str, now: datetime) -> bool:
        """Watch `sid` unless it already is (a concurrent insert wins quietly)."""
        stmt = self.insert_ignoring_conflicts(W).returning(W.c.sid)
        added = conn.execute(stmt, [_new_watch(sid, account_sid, None, now, "fetch")]).first()
        if added is not None:
            self._ensure_sweep_row(conn, account_sid, now)
        return added is not None

    def write_change(
        self, conn: Connection, obs: Observation, now: datetime, result: BatchResult
    ) -> bool:
        """Record one observation inside the caller's transaction; False if the CAS lost."""
        if self._write_change(conn, obs, now, result):
            result.observations += 1
            return True
        result.dropped += 1
        return False

    def _write_change(
        self, conn: Connection, obs: Observation, now: datetime, result: BatchResult
    ) -> bool:
        """The snapshot first, then the watch's compare-and-set pointing at it; a
        lost race deletes the snapshot again (rare, and cheaper than a third
        statement on every win)."""
        if not _newer(obs):
            return False
        snapshot_id = _insert_snapshot(conn, obs)
        cas = _cas_update(obs.confirm_at is not None)
        if not conn.execute(cas, _cas_params(obs, snapshot_id, now)).rowcount:
            conn.execute(_DELETE_SNAPSHOT, {"b_id": snapshot_id})
            return False
        result.snapshots_written += 1
        result.events.extend(self._write_events(conn, obs.events, snapshot_id))
        return True

    def _write_seen(
        self, conn: Connection, seen: dict[str, str], owner: str | None, now: datetime
    ) -> None:
        """One statement per mode: clear errors, set the mode, drop our lease if held."""
        by_mode: dict[str, list[str]] = {}
        for sid, mode in seen.items():
            by_mode.setdefault(mode, []).append(sid)
        ours = W.c.lease_owner == (owner or "")
        for mode, sids in by_mode.items():
            for part in chunks(sids):
                conn.execute(
                    update(W)
                    .where(W.c.sid.in_(part), W.c.status == "active")
                    .values(
                        mode=mode,
                        last_polled_at=now,
                        last_error=None,
                        consecutive_errors=0,
                        first_not_found_at=None,
                        lease_owner=case((ours, None), else_=W.c.lease_owner),
                        lease_until=case((ours, None), else_=W.c.lease_until),
                    )
                )

    def _write_events(
        self, conn: Connection, events: Iterable[NewEvent], snapshot_id: int | None = None
    ) -> list[NewEvent]:
        """Insert events (a second started/ended of a conference is refused by the
        unique index and skipped) and the outbox rows of those written."""
        written: list[NewEvent] = []
        for event in events:
            if conn.execute(self._insert_event, _event_row(event, snapshot_id)).first() is not None:
                written.append(event)
        outbox = [_delivery_row(e, name) for e in written for name in e.notifiers]
        if outbox:
            conn.execute(D.insert(), outbox)
        return written

    def write_events(self, events: Sequence[NewEvent]) -> list[NewEvent]:
        with self.writing() as conn:
            return self._write_events(conn, events)

    def flush_touches(self, touches: Sequence[Touch]) -> None:
        """Move last-seen times and observation counts of unchanged snapshots forward.

        Touches come in large groups sharing one time and count (one list page,
        a minute of sweeps), so each group is a few `WHERE id IN (...)` updates
        rather than a statement per row. Short transactions: SQLite's write lock
        is never held long.
        """
        groups: dict[tuple[datetime, int], list[int]] = {}
        for t in touches:
            groups.setdefault((t.last_seen, t.count), []).append(t.snapshot_id)
        later = case(
            (S.c.last_observed_at < bindparam("t"), bindparam("t")), else_=S.c.last_observed_at
        )
        statements = [
            (seen, count, part) for (seen, count), ids in groups.items() for part in chunks(ids)
        ]
        for batch in chunks(statements, 8):
            with self.writing() as conn:
                for seen, count, part in batch:
                    conn.execute(
                        update(S)
                        .where(S.c.id.in_(part))
                        .values(
                            last_observed_at=later, observation_count=S.c.observation_count + count
                        ),
                        {"t": seen},
                    )

    def failing_accounts(self) -> set[str]:
        with self.read() as conn:
            failing = ACCOUNTS.c.auth_failed_since.is_not(None)
            return set(conn.scalars(select(ACCOUNTS.c.account_sid).where(failing)))


def watch_state(r: Any) -> WatchState:
    """A watches row as the value detection works with."""
    return WatchState(
        sid=r.sid,
        account_sid=r.account_sid,
        created_at=r.created_at,
        lifecycle=LifecycleState(r.last_status, r.high_status, r.current_snapshot_id is not None),
        current_snapshot_id=r.current_snapshot_id,
        current_hash=r.current_hash,
        first_not_found_at=r.first_not_found_at,
        version=r.version,
        observed_at=r.observed_at,
        mode=r.mode,
        status=r.status,
        consecutive_errors=r.consecutive_errors,
        callback_sequence=r.callback_sequence,
    )


class LostRace(RuntimeError):
    """A batched write found a row changed under it; roll back and retry row by row."""


def _newer(obs: Observation) -> bool:
    """Whether `obs` is newer than what its watch holds (`_write_change`'s SQL test)."""
    w = obs.watch
    if w.observed_at is not None and w.observed_at > obs.observed_at:
        return False
    return obs.sequence is None or w.callback_sequence is None or w.callback_sequence < obs.sequence


@functools.cache
def _cas_update(confirming: bool) -> Update:
    """`write_changes`' compare-and-set, built once: SQLAlchemy then reuses its
    compiled form instead of rebuilding a statement per call.

    A confirming change (a callback's) keeps the watch active and sets when the
    confirming poll is due; the others leave `next_poll_at` as the claim set it.
    """
    values: dict[str, Any] = dict(
        version=bindparam("b_new_version"),
        observed_at=bindparam("b_observed_at"),
        last_polled_at=bindparam("b_now"),
        last_status=bindparam("b_last_status"),
        high_status=bindparam("b_high_status"),
        current_hash=bindparam("b_hash"),
        current_snapshot_id=bindparam("b_snapshot"),
        first_not_found_at=None,
        last_error=None,
        consecutive_errors=0,
        status=bindparam("b_status"),
        mode=bindparam("b_mode"),
        lease_owner=None,
        lease_until=None,
        callback_sequence=bindparam("b_sequence"),
    )
    if confirming:
        values["next_poll_at"] = bindparam("b_confirm_at")
    return (
        update(W)
        .where(W.c.sid == bindparam("b_sid"), W.c.version == bindparam("b_version"))
        .values(**values)
    )


def _cas_params(obs: Observation, snapshot_id: int, now: datetime) -> dict[str, object]:
    w, state = obs.watch, obs.lifecycle
    confirming = obs.confirm_at is not None
    params: dict[str, object] = {
        "b_sid": w.sid,
        "b_version": w.version,
        "b_new_version": w.version + 1,
        "b_observed_at": obs.observed_at,
        "b_now": now,
        "b_last_status": state.last_status,
        "b_high_status": state.high_status,
        "b_hash": obs.conference.content_hash,
        "b_snapshot": snapshot_id,
        "b_status": "completed" if state.terminal and not confirming else "active",
        "b_mode": obs.mode,
        "b_sequence": obs.sequence if obs.sequence is not None else w.callback_sequence,
    }
    if confirming:
        params["b_confirm_at"] = obs.confirm_at
    return params


def _differs(column: Any, value: str | None) -> Any:
    """`column IS DISTINCT FROM value`, in a form both dialects accept."""
    if value is None:
        return column.is_not(None)
    return column.is_(None) | (column != value)


def _start_auth_episode(conn: Connection, event: NewEvent) -> bool:
    """Mark the event's account as failing; False if it already was (no second event)."""
    account = event.account_sid
    row = conn.execute(select(ACCOUNTS).where(ACCOUNTS.c.account_sid == account)).first()
    if row is not None and row.auth_failed_since is not None:
        return False
    values = {"auth_failed_since": event.occurred_at, "last_error": event.data.get("detail")}
    if row is None:
        conn.execute(ACCOUNTS.insert().values(account_sid=account, **values))
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


def _new_watch(
    sid: str, account_sid: str, label: str | None, now: datetime, mode: str
) -> dict[str, object]:
    return {
        "sid": sid,
        "account_sid": account_sid,
        "label": label,
        "status": "active",
        "created_at": now,
        "next_poll_at": now,
        "consecutive_errors": 0,
        "version": 0,
        "mode": mode,
    }


_INSERT_SNAPSHOT = S.insert().returning(S.c.id)
_DELETE_SNAPSHOT = delete(S).where(S.c.id == bindparam("b_id"))


def _insert_snapshot(conn: Connection, obs: Observation) -> int:
    return int(conn.execute(_INSERT_SNAPSHOT, _snapshot_row(obs)).scalar_one())


def _snapshot_row(obs: Observation) -> dict[str, object]:
    c = obs.conference
    return dict(
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


def _write_miss(conn: Connection, miss: Miss, owner: str | None) -> bool:
    """Annotate the watch; a miss that ends it must win the compare-and-set."""
    values: dict[str, object] = {
        "next_poll_at": miss.next_poll_at,
        "last_error": miss.error,
        "consecutive_errors": W.c.consecutive_errors + 1,
        "first_not_found_at": miss.first_not_found_at,
    }
    where = [W.c.sid == miss.sid]
    if miss.new_status:
        values["status"] = miss.new_status
        if miss.version is not None:
            values["version"] = miss.version + 1
            where.append(W.c.version == miss.version)
    if owner is not None:
        where.append(W.c.lease_owner == owner)
        values.update(lease_owner=None, lease_until=None)
    return bool(conn.execute(update(W).where(*where).values(**values)).rowcount)


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
        "duration_s": duration_s(e),
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
