"""Adding many watches at once, and the reads behind the CLI's listings.

`add_watches` is linear in the number of SIDs and writes them in chunks (SQLite
and PostgreSQL cap the parameters of one statement), all in one transaction: a
failure leaves nothing half-added. A label given for a SID already watched
replaces its label. (To be folded into `Store` by the lead.)
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, cast

from sqlalchemy import Engine, Table, bindparam, func, insert, select, update
from sqlalchemy.engine import Connection

from monitor.db.models import Delivery, Event, Watch

W, E, D = (cast(Table, m.__table__) for m in (Watch, Event, Delivery))
CHUNK = 1000


@dataclass
class AddResult:
    added: set[str] = field(default_factory=set)
    relabelled: set[str] = field(default_factory=set)
    unchanged: set[str] = field(default_factory=set)


def chunks(items: Sequence[str], size: int = CHUNK) -> Iterator[Sequence[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def add_watches(
    engine: Engine,
    sids: Sequence[str],
    account_sid: str,
    label: str | None,
    now: datetime,
    *,
    relabel: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> AddResult:
    """Watch the SIDs not yet watched; with `relabel`, set the label of those that are."""
    unique = list(dict.fromkeys(sids))
    result = AddResult()
    with engine.begin() as conn:
        for done, part in enumerate(chunks(unique), start=1):
            _add_chunk(conn, part, account_sid, (label, relabel), now, result)
            if progress is not None:
                progress(min(done * CHUNK, len(unique)), len(unique))
    return result


def _add_chunk(
    conn: Connection,
    part: Sequence[str],
    account_sid: str,
    labelling: tuple[str | None, bool],
    now: datetime,
    result: AddResult,
) -> None:
    label, relabel_existing = labelling
    rows = conn.execute(select(W.c.sid, W.c.label).where(W.c.sid.in_(part)))
    existing = {sid: old for sid, old in rows}  # a Result has keys(): dict() misreads it
    fresh = [s for s in part if s not in existing]
    if fresh:
        conn.execute(insert(W), [_new_watch(s, account_sid, label, now) for s in fresh])
        result.added.update(fresh)
    relabel = [s for s, old in existing.items() if relabel_existing and old != label]
    if relabel:
        conn.execute(
            update(W).where(W.c.sid == bindparam("k")).values(label=label),
            [{"k": s} for s in relabel],
        )
        result.relabelled.update(relabel)
    result.unchanged.update(s for s in existing if s not in result.relabelled)


def _new_watch(sid: str, account_sid: str, label: str | None, now: datetime) -> dict[str, Any]:
    return {
        "sid": sid,
        "account_sid": account_sid,
        "label": label,
        "status": "active",
        "created_at": now,
        "next_poll_at": now,
        "consecutive_errors": 0,
    }


def labels(engine: Engine, sids: Sequence[str]) -> dict[str, str]:
    """The label of each watched SID that has one."""
    found: dict[str, str] = {}
    unique = list(dict.fromkeys(sids))
    with engine.connect().execution_options(readonly=True) as conn:
        for part in chunks(unique):
            query = select(W.c.sid, W.c.label).where(W.c.sid.in_(part), W.c.label.is_not(None))
            found.update({sid: label for sid, label in conn.execute(query)})
    return found


def count_events(
    engine: Engine,
    *,
    since: datetime | None = None,
    until: datetime | None = None,
    types: list[str] | None = None,
    sid: str | None = None,
) -> int:
    """How many events `queries.events` would return without its limit."""
    query = select(func.count()).select_from(E)
    if since is not None:
        query = query.where(E.c.occurred_at >= since)
    if until is not None:
        query = query.where(E.c.occurred_at <= until)
    if types:
        query = query.where(E.c.type.in_(types))
    if sid:
        query = query.where(E.c.conference_sid == sid)
    with engine.connect().execution_options(readonly=True) as conn:
        return int(conn.execute(query).scalar_one())


def count_deliveries(engine: Engine, status: str | None = None, notifier: str | None = None) -> int:
    """How many rows `Outbox.listing` would return without its limit."""
    query = select(func.count()).select_from(D)
    if status:
        query = query.where(D.c.status == status)
    if notifier:
        query = query.where(D.c.notifier == notifier)
    with engine.connect().execution_options(readonly=True) as conn:
        return int(conn.execute(query).scalar_one())
