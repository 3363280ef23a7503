"""Retention: prune old history in small batches, never holding the database for long.

What is kept, per `[retention]` (an age of 0 keeps that kind forever):
- `deliveries`: finished deliveries (delivered, failed, dead) and their attempts
  go once older than this; pending ones are never touched.
- `observations`: snapshots that recorded no status change (no event points at
  them: only a detail such as the friendly name changed) go once last seen
  longer ago than this.
- `snapshots`: a finished conference's snapshots between its first and its last
  go (events that pointed at them keep their full document).
- `events`: events go (with their finished deliveries; an event with a pending
  delivery stays); once a finished conference has no event left, its first and
  last snapshot and its watch go too. An active watch's events are never pruned.
So a finished conference keeps its first and last snapshot and all its events
until its events age out.

Each batch is one short transaction (on SQLite, a few milliseconds of the write
lock, then a pause so polls get it); a run stops at its time budget and the
next run carries on. On PostgreSQL an advisory lock lets one instance prune.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, cast

from sqlalchemy import Engine, Table, and_, delete, exists, func, or_, select, text, update
from sqlalchemy.engine import Connection

from monitor.config_schema import RetentionSettings
from monitor.db.models import Delivery, DeliveryAttempt, Event, Snapshot, Watch

if TYPE_CHECKING:
    from monitor.app import App

log = logging.getLogger("monitor.retention")

W, S, E, D, A = (
    cast(Table, m.__table__) for m in (Watch, Snapshot, Event, Delivery, DeliveryAttempt)
)
FINISHED = ("delivered", "failed", "dead")
PAUSE_S = 0.02  # between batches: lets a waiting poll take SQLite's write lock
RUN_BUDGET_S = 30.0
RESCAN_EVERY_S = 86400.0
ADVISORY_LOCK_KEY = 0x636D5F72  # "cm_r"


@dataclass
class Pruned:
    deliveries: int = 0
    attempts: int = 0
    events: int = 0
    snapshots: int = 0
    watches: int = 0
    complete: bool = True  # False when the budget or a stop cut the run short

    def total(self) -> int:
        return self.deliveries + self.attempts + self.events + self.snapshots + self.watches


@dataclass(frozen=True)
class SnapshotRow:
    id: int
    conference_sid: str
    last_observed_at: datetime


@dataclass(frozen=True)
class Conference:
    """What the snapshot planner needs to know about a snapshot's conference."""

    first_id: int
    last_id: int
    current_id: int | None
    finished: bool  # its watch is completed or not_found, or was removed
    referenced: frozenset[int] = field(default=frozenset())  # snapshot ids events point at


def snapshots_to_delete(
    rows: Sequence[SnapshotRow], conferences: dict[str, Conference], cut: datetime, kind: str
) -> list[int]:
    """Pure: which of `rows` to delete at cutoff `cut` for `kind` ("observations" or
    "snapshots"). A conference's first, last and current snapshot are always kept."""
    doomed = []
    for row in rows:
        c = conferences.get(row.conference_sid)
        if c is None or row.last_observed_at >= cut:
            continue
        if row.id in (c.first_id, c.last_id, c.current_id):
            continue
        if (kind == "snapshots" and c.finished) or (
            kind == "observations" and row.id not in c.referenced
        ):
            doomed.append(row.id)
    return doomed


class Retention:
    """Runs the pruning stages; `run_once` is the maintenance job's body."""

    def __init__(
        self,
        engine: Engine,
        settings: Callable[[], RetentionSettings],
        *,
        should_stop: Callable[[], bool] = lambda: False,
        pause_s: float = PAUSE_S,
        budget_s: float = RUN_BUDGET_S,
    ) -> None:
        self.engine = engine
        self.settings = settings
        self.should_stop = should_stop
        self.pause_s = pause_s
        self.budget_s = budget_s
        # Where each scan got to, so a run cut short carries on. The delivery and event
        # scans start over once they reach the end (what they skipped may be due by
        # then); what a snapshot scan passed is decided, except a snapshot still current
        # then (a long-running watch), which the daily rescan looks at again.
        self._cursors: dict[str, tuple[datetime, Any]] = {}
        self._finished: set[str] = set()  # stages done in this pass, when runs are cut short
        self._last_write_s = 0.0
        self._rescanned_at = time.monotonic()

    def run_once(self, now: datetime | None = None) -> Pruned:
        settings = self.settings()
        pruned = Pruned()
        if not settings.enabled:
            return pruned
        now = now or datetime.now(UTC)
        if time.monotonic() - self._rescanned_at > RESCAN_EVERY_S:
            self._cursors.clear()
            self._rescanned_at = time.monotonic()
        deadline = time.monotonic() + self.budget_s
        with self._exclusive() as mine:
            if not mine:
                return pruned
            stages: list[tuple[str, float, Callable[[datetime, float, Pruned], bool]]] = [
                ("deliveries", settings.deliveries_s, self._deliveries),
                ("events", settings.events_s, self._events),
                ("snapshots", settings.snapshots_s, self._snapshots),
                ("observations", settings.observations_s, self._observations),
            ]
            for name, age_s, stage in stages:
                if name in self._finished or age_s <= 0:
                    continue
                if not stage(now - timedelta(seconds=age_s), deadline, pruned):
                    pruned.complete = False
                    break
                self._finished.add(name)
            if pruned.complete:  # a whole pass: the next starts over where rows were skipped
                self._finished.clear()
                self._cursors.pop("deliveries", None)
                self._cursors.pop("events", None)
        if pruned.total():
            log.info(
                "retention pruned %d deliveries, %d attempts, %d events, %d snapshots, %d watches",
                pruned.deliveries,
                pruned.attempts,
                pruned.events,
                pruned.snapshots,
                pruned.watches,
                extra={"event": "retention.pruned"},
            )
        return pruned

    # -- plumbing ---------------------------------------------------------------------

    @contextmanager
    def _exclusive(self) -> Iterator[bool]:
        """One pruner per PostgreSQL database (a session advisory lock); SQLite: always."""
        if self.engine.dialect.name != "postgresql":
            yield True
            return
        with self.engine.connect() as conn:
            key = {"k": ADVISORY_LOCK_KEY}
            got = bool(conn.execute(text("SELECT pg_try_advisory_lock(:k)"), key).scalar())
            conn.commit()
            try:
                yield got
            finally:
                if got:
                    conn.execute(text("SELECT pg_advisory_unlock(:k)"), key)
                    conn.commit()

    @contextmanager
    def _writing(self) -> Iterator[Connection]:
        """One batch's transaction, timed: the pause after it is at least as long."""
        started = time.monotonic()
        try:
            with self.engine.begin() as conn:
                yield conn
        finally:
            self._last_write_s = time.monotonic() - started

    def _go_on(self, deadline: float) -> bool:
        """Between batches: pause at least as long as the last batch held the database, so
        polls waiting for SQLite's write lock (and for this process's CPU) get at least
        half of it; stop if told to or past the run's budget."""
        pause = max(self.pause_s, self._last_write_s) if self.pause_s else 0.0
        self._last_write_s = 0.0
        if pause:
            time.sleep(pause)
        return not self.should_stop() and time.monotonic() < deadline

    def _read(self) -> Connection:
        return self.engine.connect().execution_options(readonly=True)

    @property
    def batch(self) -> int:
        return self.settings().batch_size

    # -- deliveries -------------------------------------------------------------------

    def _deliveries(self, cut: datetime, deadline: float, pruned: Pruned) -> bool:
        """Finished deliveries created before `cut`, oldest first (pending ones are skipped)."""
        while True:
            query = select(D.c.id, D.c.status, D.c.created_at).where(D.c.created_at < cut)
            if (after := self._cursors.get("deliveries")) is not None:
                query = query.where(_later(D.c.created_at, D.c.id, after))
            with self._read() as conn:
                rows = conn.execute(query.order_by(D.c.created_at, D.c.id).limit(self.batch)).all()
            if not rows:
                return True
            self._cursors["deliveries"] = (rows[-1].created_at, rows[-1].id)
            old = [r.id for r in rows if r.status in FINISHED]
            if old:
                with self._writing() as conn:
                    _delete_deliveries(conn, D.c.id.in_(old) & (D.c.created_at < cut), pruned)
            if not self._go_on(deadline):
                return False

    # -- events, then what is left of a finished conference ----------------------------

    def _events(self, cut: datetime, deadline: float, pruned: Pruned) -> bool:
        """Events before `cut`, oldest first; an active watch's are skipped."""
        while True:
            query = (
                select(E.c.id, E.c.occurred_at, E.c.conference_sid, W.c.status)
                .select_from(E.outerjoin(W, W.c.sid == E.c.conference_sid))
                .where(E.c.occurred_at < cut)
            )
            if (after := self._cursors.get("events")) is not None:
                query = query.where(_later(E.c.occurred_at, E.c.id, after))
            with self._read() as conn:
                rows = conn.execute(query.order_by(E.c.occurred_at, E.c.id).limit(self.batch)).all()
            if not rows:
                return True
            self._cursors["events"] = (rows[-1].occurred_at, rows[-1].id)
            doomed = [r for r in rows if r.status != "active"]  # None: the watch was removed
            if doomed:
                with self._writing() as conn:
                    _delete_events(conn, doomed, pruned)
            if not self._go_on(deadline):
                return False

    # -- snapshots ----------------------------------------------------------------------

    def _snapshots(self, cut: datetime, deadline: float, pruned: Pruned) -> bool:
        return self._scan_snapshots("snapshots", cut, deadline, pruned)

    def _observations(self, cut: datetime, deadline: float, pruned: Pruned) -> bool:
        return self._scan_snapshots("observations", cut, deadline, pruned)

    def _scan_snapshots(self, kind: str, cut: datetime, deadline: float, pruned: Pruned) -> bool:
        """Snapshots first observed before `cut`, oldest first, from where the last run got
        to: those kept now (a conference's first and last) stay kept."""
        while True:
            query = select(
                S.c.id, S.c.conference_sid, S.c.first_observed_at, S.c.last_observed_at
            ).where(S.c.first_observed_at < cut)
            if (after := self._cursors.get(kind)) is not None:
                query = query.where(_later(S.c.first_observed_at, S.c.id, after))
            with self._read() as conn:
                rows = conn.execute(
                    query.order_by(S.c.first_observed_at, S.c.id).limit(self.batch)
                ).all()
                old = [SnapshotRow(r.id, r.conference_sid, r.last_observed_at) for r in rows]
                conferences = _conferences_of(conn, old)
            if not rows:
                return True
            doomed = snapshots_to_delete(old, conferences, cut, kind)
            if doomed:
                with self._writing() as conn:
                    sids = {r.conference_sid for r in old if r.id in set(doomed)}
                    pruned.snapshots += _delete_snapshots(conn, doomed, sids)
            self._cursors[kind] = (rows[-1].first_observed_at, rows[-1].id)
            if not self._go_on(deadline):
                return False


def _later(first: Any, second: Any, key: tuple[Any, Any]) -> Any:
    """Rows after `key` in ascending (first, second) order, in a form indexes serve."""
    return and_(first >= key[0], or_(first > key[0], second > key[1]))


def _conferences_of(conn: Connection, rows: Sequence[SnapshotRow]) -> dict[str, Conference]:
    if not rows:
        return {}
    sids = list({r.conference_sid for r in rows})
    bounds = conn.execute(
        select(S.c.conference_sid, func.min(S.c.id), func.max(S.c.id))
        .where(S.c.conference_sid.in_(sids))
        .group_by(S.c.conference_sid)
    ).all()
    watches = {
        r.sid: r
        for r in conn.execute(
            select(W.c.sid, W.c.status, W.c.current_snapshot_id).where(W.c.sid.in_(sids))
        )
    }
    referenced = set(
        conn.scalars(select(E.c.snapshot_id).where(E.c.snapshot_id.in_([r.id for r in rows])))
    )
    found = {}
    for sid, first, last in bounds:
        watch = watches.get(sid)
        found[sid] = Conference(
            first_id=first,
            last_id=last,
            current_id=watch.current_snapshot_id if watch else None,
            finished=watch is None or watch.status != "active",
            referenced=frozenset(referenced),
        )
    return found


def _delete_snapshots(conn: Connection, ids: list[int], sids: set[str]) -> int:
    # A watch's current snapshot is never deleted, even if the plan raced a poll.
    current = select(W.c.current_snapshot_id).where(W.c.sid.in_(list(sids)))
    kept = set(conn.scalars(current))
    ids = [i for i in ids if i not in kept]
    if not ids:
        return 0
    conn.execute(update(E).where(E.c.snapshot_id.in_(ids)).values(snapshot_id=None))
    return int(conn.execute(delete(S).where(S.c.id.in_(ids))).rowcount or 0)


def _delete_deliveries(conn: Connection, which: Any, pruned: Pruned) -> None:
    """Finished deliveries matching `which`, and their attempts (checked again here:
    a `deliveries retry` may have made one pending since it was chosen)."""
    # The status is checked here, not in SQL: a planner offered "status IN (...)" may walk
    # the status index over every delivered row instead of the few `which` names.
    query = select(D.c.id, D.c.status).where(which)
    if conn.dialect.name == "postgresql":
        query = query.with_for_update()
    ids = [r.id for r in conn.execute(query) if r.status in FINISHED]
    if ids:
        pruned.attempts += int(
            conn.execute(delete(A).where(A.c.delivery_id.in_(ids))).rowcount or 0
        )
        pruned.deliveries += int(conn.execute(delete(D).where(D.c.id.in_(ids))).rowcount or 0)


def _delete_events(conn: Connection, rows: Sequence[Any], pruned: Pruned) -> None:
    ids = [r.id for r in rows]
    _delete_deliveries(conn, D.c.event_id.in_(ids), pruned)
    undelivered = exists().where(D.c.event_id == E.c.id)
    pruned.events += int(conn.execute(delete(E).where(E.c.id.in_(ids), ~undelivered)).rowcount or 0)
    sids = {r.conference_sid for r in rows if r.conference_sid}
    if not sids:
        return
    with_events = set(conn.scalars(select(E.c.conference_sid).where(E.c.conference_sid.in_(sids))))
    active = set(conn.scalars(select(W.c.sid).where(W.c.sid.in_(sids), W.c.status == "active")))
    gone = list(sids - with_events - active)
    if gone:
        pruned.snapshots += int(
            conn.execute(delete(S).where(S.c.conference_sid.in_(gone))).rowcount or 0
        )
        pruned.watches += int(
            conn.execute(delete(W).where(and_(W.c.sid.in_(gone), W.c.status != "active"))).rowcount
            or 0
        )


def maintenance_job(
    app: App, should_stop: Callable[[], bool] = lambda: False
) -> Callable[[], None]:
    """The daemon's scheduler job: prune with the settings current at each run."""
    retention = Retention(app.engine, lambda: app.settings.retention, should_stop=should_stop)

    def retention_tick() -> None:
        retention.run_once()

    return retention_tick
