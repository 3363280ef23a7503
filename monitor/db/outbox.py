"""SQL for the delivery outbox: claim with a lease, record attempts with a fenced update.

A row is claimed by setting `lease_owner`/`lease_until`; the outcome is written
only if the lease is still ours, so a dispatcher that stalled past its lease
cannot overwrite the work of the one that took over.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import Engine, Table, exists, func, insert, or_, select, update
from sqlalchemy.orm import aliased

from monitor.db.models import Delivery, DeliveryAttempt, Event, NotifierState

D, A, E, N = (cast(Table, m.__table__) for m in (Delivery, DeliveryAttempt, Event, NotifierState))

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


class Outbox:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.is_postgres = engine.dialect.name == "postgresql"

    def claim(
        self, notifier: str, now: datetime, limit: int, owner: str, lease_s: float
    ) -> list[Claimed]:
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
            .order_by(D.c.id)
            .limit(limit)
        )
        if self.is_postgres:
            query = query.with_for_update(skip_locked=True, of=D)
        with self.engine.begin() as conn:
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
        values: dict[str, Any] = {
            "status": outcome.status,
            "attempts": D.c.attempts + 1,
            "lease_owner": None,
            "lease_until": None,
            "last_error": outcome.error,
            "last_status_code": outcome.status_code,
        }
        if outcome.status == "delivered":
            # The attempt began at `attempted_at`; the receiver had it once it answered.
            values["delivered_at"] = outcome.attempted_at + timedelta(
                milliseconds=outcome.duration_ms
            )
        if outcome.next_attempt_at is not None:
            values["next_attempt_at"] = outcome.next_attempt_at
        with self.engine.begin() as conn:
            updated = conn.execute(
                update(D).where(D.c.id == delivery_id, D.c.lease_owner == owner).values(**values)
            ).rowcount
            if updated:
                conn.execute(
                    insert(A).values(
                        delivery_id=delivery_id,
                        attempted_at=outcome.attempted_at,
                        status_code=outcome.status_code,
                        error=outcome.error,
                        duration_ms=outcome.duration_ms,
                    )
                )
        return bool(updated)

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
        with self.engine.connect().execution_options(readonly=True) as conn:
            rows = conn.execute(
                select(N.c.name, N.c.disabled_reason).where(N.c.disabled_at.is_not(None))
            )
            return {name: reason or "" for name, reason in rows}

    def disable_notifier(self, name: str, reason: str, now: datetime) -> None:
        with self.engine.begin() as conn:
            if conn.execute(select(N.c.name).where(N.c.name == name)).first() is None:
                conn.execute(insert(N).values(name=name))
            conn.execute(
                update(N).where(N.c.name == name).values(disabled_at=now, disabled_reason=reason)
            )

    def enable_notifier(self, name: str) -> bool:
        with self.engine.begin() as conn:
            return bool(
                conn.execute(
                    update(N)
                    .where(N.c.name == name, N.c.disabled_at.is_not(None))
                    .values(disabled_at=None, disabled_reason=None)
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
                    update(N)
                    .where(N.c.name.in_({r.notifier for r in rows}))
                    .values(disabled_at=None, disabled_reason=None)
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
