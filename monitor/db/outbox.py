"""SQL for the delivery outbox: claim with a lease, record attempts with a fenced update.

A row is claimed by setting `lease_owner`/`lease_until`; the outcome is written
only if the lease is still ours, so a dispatcher that stalled past its lease
cannot overwrite the work of the one that took over.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from typing import cast as typed

from sqlalchemy import (
    Connection,
    Engine,
    Table,
    bindparam,
    exists,
    func,
    insert,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import aliased

from monitor.db.models import Delivery, DeliveryAttempt, Event, NotifierState, UTCDateTime

D, A, E, N = (typed(Table, m.__table__) for m in (Delivery, DeliveryAttempt, Event, NotifierState))

STATUSES = ("pending", "delivered", "failed", "dead")


@dataclass(frozen=True)
class Claimed:
    id: int
    event_id: str
    event_type: str
    notifier: str
    conference_sid: str | None
    body: str
    attempts: int
    created_at: datetime


@dataclass(frozen=True)
class AttemptOutcome:
    """What happened on one try, and what the row becomes."""

    status: str  # pending (retry) | delivered | failed | dead
    attempted_at: datetime
    duration_ms: float
    status_code: int | None = None
    error: str | None = None
    next_attempt_at: datetime | None = None


@dataclass(frozen=True)
class NotifierStatus:
    """One notifier's shared state: disabled (410), paused (Retry-After), circuit."""

    name: str
    disabled_at: datetime | None = None
    disabled_reason: str | None = None
    paused_until: datetime | None = None
    pause_reason: str | None = None
    circuit: str | None = None  # None (closed) | open | probing
    consecutive_failures: int = 0
    updated_at: datetime | None = None

    def holds(self, now: datetime, *, probe: bool = False) -> bool:
        """Whether nothing may be sent now (a probe may go once the circuit's wait is over)."""
        if self.disabled_at is not None:
            return True
        if probe:  # only the instance that took the probe asks, and only while it holds it
            return self.circuit != "probing"
        if self.paused_until is not None and self.paused_until > now:
            return True
        return self.circuit is not None


class Outbox:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.is_postgres = engine.dialect.name == "postgresql"

    def claim(
        self,
        notifier: str,
        now: datetime,
        limit: int,
        owner: str,
        lease_s: float,
        *,
        probe: bool = False,
    ) -> list[Claimed]:
        """Lease up to `limit` due rows, none while the notifier is disabled, paused or open.

        The check and the claim share a transaction, so a pause another instance
        recorded is respected here without waiting for this instance's next tick.
        """
        earlier = aliased(D)
        blocked = exists().where(
            earlier.c.notifier == D.c.notifier,
            earlier.c.conference_sid == D.c.conference_sid,
            earlier.c.id < D.c.id,
            earlier.c.status == "pending",
        )
        query = (
            select(D, E.c.body)
            .join(E, E.c.id == D.c.event_id)
            .where(
                D.c.notifier == notifier,
                D.c.status == "pending",
                D.c.next_attempt_at <= now,
                or_(D.c.lease_until.is_(None), D.c.lease_until < now),
                or_(D.c.conference_sid.is_(None), ~blocked),
            )
            .order_by(D.c.next_attempt_at, D.c.id)
            .limit(limit)
        )
        if self.is_postgres:
            query = query.with_for_update(skip_locked=True, of=D)
        with self.engine.begin() as conn:
            state = _status(conn, notifier)
            if state is not None and state.holds(now, probe=probe):
                return []
            rows = conn.execute(query).all()
            if rows:
                conn.execute(
                    update(D)
                    .where(D.c.id.in_([r.id for r in rows]))
                    .values(lease_owner=owner, lease_until=now + timedelta(seconds=lease_s))
                )
        return [
            Claimed(
                r.id,
                r.event_id,
                r.event_type,
                r.notifier,
                r.conference_sid,
                r.body,
                r.attempts,
                r.created_at,
            )
            for r in rows
        ]

    def finish(self, delivery_id: int, owner: str, outcome: AttemptOutcome) -> bool:
        """Record an attempt; False if our lease was lost (someone else owns the row now)."""
        return delivery_id in self.finish_many(owner, [(delivery_id, outcome)])

    def finish_many(self, owner: str, items: Sequence[tuple[int, AttemptOutcome]]) -> set[int]:
        """Record many attempts in one transaction; the ids whose lease was still ours.

        On PostgreSQL one `UPDATE ... FROM (VALUES ...)` checks the lease and writes every
        row (a round trip each would dominate); on SQLite the database is locked for the
        transaction (`BEGIN IMMEDIATE`), so checking first and updating after is atomic.
        """
        if not items:
            return set()
        with self.engine.begin() as conn:
            if self.is_postgres:
                return _finish_pg(conn, owner, items)
            ids = [delivery_id for delivery_id, _ in items]
            owned_q = select(D.c.id).where(D.c.id.in_(ids), D.c.lease_owner == owner)
            owned = {row.id for row in conn.execute(owned_q)}
            mine = [(i, o) for i, o in items if i in owned]
            if mine:
                conn.execute(
                    _FINISH.where(D.c.lease_owner == owner), [_finish_params(*x) for x in mine]
                )
                conn.execute(insert(A), [_attempt_row(*x) for x in mine])
        return owned

    def extend(self, ids: list[int], owner: str, now: datetime, lease_s: float) -> set[int]:
        """Renew our lease on `ids`; the ids still ours (a lapsed one may have been taken)."""
        if not ids:
            return set()
        with self.engine.begin() as conn:
            conn.execute(
                update(D)
                .where(D.c.id.in_(ids), D.c.lease_owner == owner, D.c.status == "pending")
                .values(lease_until=now + timedelta(seconds=lease_s))
            )
            kept = conn.execute(
                select(D.c.id).where(
                    D.c.id.in_(ids), D.c.lease_owner == owner, D.c.status == "pending"
                )
            )
            return {row.id for row in kept}

    def release(self, ids: list[int], owner: str) -> None:
        if not ids:
            return
        with self.engine.begin() as conn:
            conn.execute(
                update(D)
                .where(D.c.id.in_(ids), D.c.lease_owner == owner)
                .values(lease_owner=None, lease_until=None)
            )

    # -- notifier state ------------------------------------------------------------

    def disabled_notifiers(self) -> dict[str, str]:
        return {
            name: state.disabled_reason or ""
            for name, state in self.notifier_states().items()
            if state.disabled_at is not None
        }

    def notifier_states(self) -> dict[str, NotifierStatus]:
        with self.engine.connect().execution_options(readonly=True) as conn:
            return {r.name: _as_status(r) for r in conn.execute(select(*_STATE_COLUMNS))}

    def disable_notifier(self, name: str, reason: str, now: datetime) -> None:
        self._set_state(name, now, disabled_at=now, disabled_reason=reason)

    def pause_notifier(self, name: str, until: datetime, reason: str, now: datetime) -> None:
        """Hold every instance off `name` until `until` (a receiver's `Retry-After`).

        A longer pause already recorded is kept: the receiver's latest word never
        shortens what it asked for before.
        """
        with self.engine.begin() as conn:
            _ensure_state_row(conn, name, self.is_postgres)
            conn.execute(
                update(N)
                .where(N.c.name == name, or_(N.c.paused_until.is_(None), N.c.paused_until < until))
                .values(paused_until=until, pause_reason=reason, updated_at=now)
            )

    def open_circuit(
        self, name: str, until: datetime, reason: str, failures: int, now: datetime
    ) -> None:
        """Stop every instance sending to `name` until `until`; then one probe may go."""
        self._set_state(
            name,
            now,
            circuit="open",
            paused_until=until,
            pause_reason=reason,
            consecutive_failures=failures,
        )

    def acquire_probe(self, name: str, now: datetime, lease_s: float) -> bool:
        """Take the one probe of an open circuit whose wait is over; False if another has it."""
        with self.engine.begin() as conn:
            return bool(
                conn.execute(
                    update(N)
                    .where(
                        N.c.name == name,
                        N.c.circuit.is_not(None),
                        N.c.disabled_at.is_(None),
                        or_(N.c.paused_until.is_(None), N.c.paused_until <= now),
                    )
                    .values(
                        circuit="probing",
                        paused_until=now + timedelta(seconds=lease_s),
                        updated_at=now,
                    )
                ).rowcount
            )

    def release_probe(self, name: str, now: datetime) -> None:
        """Nothing was due to probe with: the next tick (here or elsewhere) may try again."""
        with self.engine.begin() as conn:
            conn.execute(
                update(N)
                .where(N.c.name == name, N.c.circuit == "probing")
                .values(circuit="open", paused_until=now, updated_at=now)
            )

    def close_circuit(self, name: str, now: datetime) -> None:
        with self.engine.begin() as conn:
            conn.execute(
                update(N)
                .where(N.c.name == name, N.c.circuit.is_not(None))
                .values(
                    circuit=None,
                    paused_until=None,
                    pause_reason=None,
                    consecutive_failures=0,
                    updated_at=now,
                )
            )

    def _set_state(self, name: str, now: datetime, **values: Any) -> None:
        with self.engine.begin() as conn:
            _ensure_state_row(conn, name, self.is_postgres)
            conn.execute(update(N).where(N.c.name == name).values(updated_at=now, **values))

    def enable_notifier(self, name: str) -> bool:
        """Turn a notifier back on and forget its pause and circuit: an operator said so."""
        with self.engine.begin() as conn:
            return bool(
                conn.execute(
                    update(N)
                    .where(N.c.name == name, N.c.disabled_at.is_not(None))
                    .values(**_CLEARED)
                ).rowcount
            )

    # -- inspection and replay -----------------------------------------------------

    def listing(
        self, status: str | None = None, notifier: str | None = None, limit: int = 100
    ) -> list[dict[str, Any]]:
        query = select(D).order_by(D.c.id.desc()).limit(limit)
        if status:
            query = query.where(D.c.status == status)
        if notifier:
            query = query.where(D.c.notifier == notifier)
        with self.engine.connect().execution_options(readonly=True) as conn:
            return [dict(r._mapping) for r in conn.execute(query)]

    def show(self, delivery_id: int) -> dict[str, Any] | None:
        with self.engine.connect().execution_options(readonly=True) as conn:
            row = conn.execute(
                select(D, E.c.body).join(E, E.c.id == D.c.event_id).where(D.c.id == delivery_id)
            ).first()
            if row is None:
                return None
            attempts = conn.execute(
                select(A).where(A.c.delivery_id == delivery_id).order_by(A.c.id)
            ).all()
        shown = dict(row._mapping)
        shown["attempt_log"] = [dict(a._mapping) for a in attempts]
        return shown

    def retry(self, ids: list[int], now: datetime) -> list[int]:
        """Put failed or dead rows back in the queue (and re-enable their notifiers).

        The row is queued anew (`created_at = now`), so it gets a whole retry
        window again rather than one attempt before it is dead once more; the
        event keeps its own time, and earlier attempts stay in the log.
        """
        with self.engine.begin() as conn:
            rows = conn.execute(
                select(D.c.id, D.c.notifier).where(
                    D.c.id.in_(ids), D.c.status.in_(("failed", "dead"))
                )
            ).all()
            found = [r.id for r in rows]
            if found:
                conn.execute(
                    update(D)
                    .where(D.c.id.in_(found))
                    .values(
                        status="pending",
                        created_at=now,
                        next_attempt_at=now,
                        lease_owner=None,
                        lease_until=None,
                    )
                )
                conn.execute(
                    update(N).where(N.c.name.in_({r.notifier for r in rows})).values(**_CLEARED)
                )
        return found

    def backlog(self, notifiers: Collection[str] | None = None) -> tuple[int, datetime | None]:
        """Pending rows and the oldest one's age, for the notifiers given (None: all).

        Rows of a notifier removed from the config wait, undelivered, in case it
        comes back; they are not counted as backlog the operator can do anything about.
        """
        query = select(func.count(), func.min(D.c.created_at)).where(D.c.status == "pending")
        if notifiers is not None:
            query = query.where(D.c.notifier.in_(list(notifiers)))
        with self.engine.connect().execution_options(readonly=True) as conn:
            count, oldest = conn.execute(query).one()
        return int(count), oldest


# An operator's retry or re-enable starts the notifier afresh.
_CLEARED: dict[str, Any] = dict(
    disabled_at=None,
    disabled_reason=None,
    paused_until=None,
    pause_reason=None,
    circuit=None,
    consecutive_failures=0,
)
_STATE_COLUMNS = (
    N.c.name,
    N.c.disabled_at,
    N.c.disabled_reason,
    N.c.paused_until,
    N.c.pause_reason,
    N.c.circuit,
    N.c.consecutive_failures,
    N.c.updated_at,
)
_FINISH = (
    update(D)
    .where(D.c.id == bindparam("b_id"))
    .values(
        status=bindparam("b_status"),
        attempts=D.c.attempts + 1,
        lease_owner=None,
        lease_until=None,
        last_error=bindparam("b_error"),
        last_status_code=bindparam("b_code"),
        delivered_at=bindparam("b_delivered_at", type_=UTCDateTime()),
        next_attempt_at=func.coalesce(
            bindparam("b_next_attempt_at", type_=UTCDateTime()), D.c.next_attempt_at
        ),
    )
)


# PostgreSQL: every outcome of a batch in one statement (arrays unnested), with
# constant text so the server keeps one plan; the lease is checked row by row in it.
_FINISH_PG = text(
    """
    UPDATE deliveries AS d SET
        status = v.status, attempts = d.attempts + 1, lease_owner = NULL,
        lease_until = NULL, last_error = v.error, last_status_code = v.code,
        delivered_at = v.delivered_at, next_attempt_at = COALESCE(v.next_at, d.next_attempt_at)
    FROM unnest(
        CAST(:ids AS bigint[]), CAST(:statuses AS text[]), CAST(:errors AS text[]),
        CAST(:codes AS int[]), CAST(:delivered AS timestamptz[]), CAST(:next AS timestamptz[])
    ) AS v(id, status, error, code, delivered_at, next_at)
    WHERE d.id = v.id AND d.lease_owner = :owner
    RETURNING d.id
    """
)
_ATTEMPTS_PG = text(
    """
    INSERT INTO delivery_attempts (delivery_id, attempted_at, status_code, error, duration_ms)
    SELECT * FROM unnest(
        CAST(:ids AS bigint[]), CAST(:at AS timestamptz[]), CAST(:codes AS int[]),
        CAST(:errors AS text[]), CAST(:durations AS float8[])
    )
    """
)


def _finish_pg(
    conn: Connection, owner: str, items: Sequence[tuple[int, AttemptOutcome]]
) -> set[int]:
    params = [_finish_params(i, o) for i, o in items]
    owned = {
        row.id
        for row in conn.execute(
            _FINISH_PG,
            {
                "owner": owner,
                "ids": [p["b_id"] for p in params],
                "statuses": [p["b_status"] for p in params],
                "errors": [p["b_error"] for p in params],
                "codes": [p["b_code"] for p in params],
                "delivered": [p["b_delivered_at"] for p in params],
                "next": [p["b_next_attempt_at"] for p in params],
            },
        )
    }
    mine = [(i, o) for i, o in items if i in owned]
    if mine:
        conn.execute(
            _ATTEMPTS_PG,
            {
                "ids": [i for i, _ in mine],
                "at": [o.attempted_at for _, o in mine],
                "codes": [o.status_code for _, o in mine],
                "errors": [o.error for _, o in mine],
                "durations": [o.duration_ms for _, o in mine],
            },
        )
    return owned


def _finish_params(delivery_id: int, outcome: AttemptOutcome) -> dict[str, Any]:
    delivered_at = None
    if outcome.status == "delivered":
        # The attempt began at `attempted_at`; the receiver had it once it answered.
        delivered_at = outcome.attempted_at + timedelta(milliseconds=outcome.duration_ms)
    return {
        "b_id": delivery_id,
        "b_status": outcome.status,
        "b_error": outcome.error,
        "b_code": outcome.status_code,
        "b_delivered_at": delivered_at,
        "b_next_attempt_at": outcome.next_attempt_at,
    }


def _attempt_row(delivery_id: int, outcome: AttemptOutcome) -> dict[str, Any]:
    return {
        "delivery_id": delivery_id,
        "attempted_at": outcome.attempted_at,
        "status_code": outcome.status_code,
        "error": outcome.error,
        "duration_ms": outcome.duration_ms,
    }


def _as_status(row: Any) -> NotifierStatus:
    return NotifierStatus(**{c.name: getattr(row, c.name) for c in _STATE_COLUMNS})


def _status(conn: Connection, name: str) -> NotifierStatus | None:
    row = conn.execute(select(*_STATE_COLUMNS).where(N.c.name == name)).first()
    return None if row is None else _as_status(row)


def _ensure_state_row(conn: Connection, name: str, is_postgres: bool) -> None:
    """Create the notifier's row if missing; two instances racing to do so is harmless."""
    dialect_insert = postgresql.insert if is_postgres else sqlite.insert
    conn.execute(dialect_insert(N).values(name=name).on_conflict_do_nothing())
