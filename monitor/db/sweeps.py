"""The SQL of list sweeps: electing one sweeper per account and interval, and the
bulk reads and writes a sweep makes.

A sweep lists an account's active conferences and applies the result to every
watch it observes (`mode = 'list'`). Only what changed is written one row at a
time; watches the lists no longer show are handed back to one-by-one fetching.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import NamedTuple

from sqlalchemy import select, update

from monitor.db.store import SWEEPS, Store, W, chunks


class SweepState(NamedTuple):
    """The few columns a sweep compares for each listed conference (of an active watch)."""

    sid: str
    version: int
    current_hash: str | None
    current_snapshot_id: int | None
    mode: str
    consecutive_errors: int


class SweepStore:
    def __init__(self, store: Store) -> None:
        self.store = store
        self.engine = store.engine

    def accounts(self) -> list[str]:
        with self.store.read() as conn:
            return list(conn.scalars(select(SWEEPS.c.account_sid).order_by(SWEEPS.c.account_sid)))

    def ensure(self, account_sid: str, now: datetime) -> None:
        with self.store.writing() as conn:
            row = {"account_sid": account_sid, "next_sweep_at": now}
            conn.execute(self.store.insert_ignoring_conflicts(SWEEPS), [row])

    def try_start(
        self,
        account_sid: str,
        owner: str,
        now: datetime,
        interval_s: float,
        lease_s: float,
        grace_s: float = 0.0,
    ) -> bool:
        """Become the account's sweeper if a sweep is due and nobody holds a live lease.

        A compare-and-set on one row, so across all instances at most one sweep of
        an account runs at a time, at most one per interval. The last sweeper may
        start at the due time, others `grace_s` later: sweeps stay with one instance,
        whose buffered last-seen counts then cover every conference once, instead
        of each instance flushing all of them.
        """
        others_from = now - timedelta(seconds=grace_s)
        with self.store.writing() as conn:
            due = conn.execute(
                select(SWEEPS.c.next_sweep_at).where(
                    SWEEPS.c.account_sid == account_sid,
                    SWEEPS.c.next_sweep_at <= now,
                    (SWEEPS.c.owner == owner)
                    | (SWEEPS.c.next_sweep_at <= others_from)
                    | SWEEPS.c.owner.is_(None),
                    SWEEPS.c.lease_until.is_(None) | (SWEEPS.c.lease_until < now),
                )
            ).scalar_one_or_none()
            if due is None:
                return False
            step = timedelta(seconds=interval_s)
            nxt = due + step if due + step > now else now + step
            won = conn.execute(
                update(SWEEPS)
                .where(SWEEPS.c.account_sid == account_sid, SWEEPS.c.next_sweep_at == due)
                .values(
                    next_sweep_at=nxt,
                    owner=owner,
                    lease_until=now + timedelta(seconds=lease_s),
                    started_at=now,
                )
            ).rowcount
        return bool(won)

    def due_in(self, account_sid: str, owner: str, now: datetime, grace_s: float = 0.0) -> float:
        """Seconds until `owner` may start the account's sweep (see `try_start`): the
        next due time (plus the grace if another instance swept last), or the running
        sweep's lease end; 0 if it may be now (or the row is gone)."""
        with self.store.read() as conn:
            row = conn.execute(
                select(SWEEPS.c.next_sweep_at, SWEEPS.c.lease_until, SWEEPS.c.owner).where(
                    SWEEPS.c.account_sid == account_sid
                )
            ).first()
        if row is None:
            return 0.0
        at = row.next_sweep_at
        if row.owner is not None and row.owner != owner:
            at += timedelta(seconds=grace_s)
        if row.lease_until is not None and row.lease_until > at:
            at = row.lease_until
        return max(0.0, (at - now).total_seconds())

    def renew(self, account_sid: str, owner: str, now: datetime, lease_s: float) -> bool:
        """Extend our lease; False if another instance took the sweep over."""
        with self.store.writing() as conn:
            return bool(
                conn.execute(
                    update(SWEEPS)
                    .where(SWEEPS.c.account_sid == account_sid, SWEEPS.c.owner == owner)
                    .values(lease_until=now + timedelta(seconds=lease_s))
                ).rowcount
            )

    def finish(
        self,
        account_sid: str,
        owner: str,
        now: datetime,
        *,
        listed: int,
        missing: int,
        pages: int,
        error: str | None,
        lead_s: float = 0.0,
    ) -> None:
        """Record a sweep's end; a successful one moves the next due time `lead_s`
        earlier (never before `now`), so that the next sweep reaches each conference
        within an interval of this one even if it runs slower (see `Sweeper.sweep`)."""
        values: dict[str, object] = {
            "lease_until": None,
            "listed": listed,
            "missing": missing,
            "pages": pages,
            "last_error": error,
        }
        if error is None:
            values["completed_at"] = now
        mine = (SWEEPS.c.account_sid == account_sid) & (SWEEPS.c.owner == owner)
        with self.store.writing() as conn:
            if error is None and lead_s > 0:
                due = conn.execute(select(SWEEPS.c.next_sweep_at).where(mine)).scalar_one_or_none()
                if due is not None:
                    values["next_sweep_at"] = max(due - timedelta(seconds=lead_s), now)
            conn.execute(update(SWEEPS).where(mine).values(**values))

    def stale(self, account_sid: str, now: datetime, limit: datetime) -> bool:
        """Sweeps keep failing: none succeeded since `limit` although one was tried
        since then, and none is running.

        An attempt older than `limit` does not count: after a restart or a long
        pause the next sweep is tried first, rather than handing every watch to
        one-by-one fetching (100,000 fetches) and straight back.
        """
        with self.store.read() as conn:
            row = conn.execute(
                select(SWEEPS.c.lease_until, SWEEPS.c.started_at, SWEEPS.c.completed_at).where(
                    SWEEPS.c.account_sid == account_sid
                )
            ).first()
        if row is None or (row.lease_until is not None and row.lease_until >= now):
            return False
        tried_lately = row.started_at is not None and row.started_at >= limit
        failing = row.completed_at is None or row.completed_at < limit
        return bool(tried_lately and failing)

    def active_states(self, account_sid: str) -> dict[str, SweepState]:
        """Every active watch of the account, read once before the account is listed.

        One query for the whole sweep instead of one per page, so a page costs
        dictionary lookups; a watch recorded meanwhile by a fetch or a callback is
        protected by the compare-and-set when written. It reads 100,000 rows every
        interval, so it goes straight to the driver's cursor (a third of the cost
        of building SQLAlchemy rows).
        """
        mark = "?" if self.engine.dialect.paramstyle == "qmark" else "%s"
        sql = (
            "SELECT sid, version, current_hash, current_snapshot_id, mode, consecutive_errors"
            f" FROM watches WHERE account_sid = {mark} AND status = 'active'"
        )
        with self.store.read() as conn:
            cursor = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
            try:
                cursor.execute(sql, (account_sid,))
                rows = cursor.fetchall()
            finally:
                cursor.close()
        make = SweepState._make
        return {row[0]: make(row) for row in rows}

    def hand_to_fetch(self, sids: Sequence[str], now: datetime) -> int:
        """Watches the lists did not show: fetch each of them now (ended, or not listed yet)."""
        moved = 0
        for part in chunks(list(sids)):
            with self.store.writing() as conn:
                moved += conn.execute(
                    update(W)
                    .where(W.c.sid.in_(part), W.c.mode == "list", W.c.status == "active")
                    .values(mode="fetch", next_poll_at=now)
                ).rowcount
        return moved

    def hand_account_to_fetch(self, account_sid: str, now: datetime) -> int:
        """The account's sweeps have stopped succeeding: fall back to fetching each watch."""
        with self.store.writing() as conn:
            return int(
                conn.execute(
                    update(W)
                    .where(
                        W.c.account_sid == account_sid, W.c.mode == "list", W.c.status == "active"
                    )
                    .values(mode="fetch", next_poll_at=now)
                ).rowcount
            )

    def hand_all_to_fetch(self, now: datetime) -> int:
        """Lists are turned off (`polling.use_list = false`): fetch every watch."""
        with self.store.writing() as conn:
            return int(
                conn.execute(
                    update(W)
                    .where(W.c.mode == "list", W.c.status == "active")
                    .values(mode="fetch", next_poll_at=now)
                ).rowcount
            )
