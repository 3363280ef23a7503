"""Read-only queries behind `history`, `events`, `watch` and `deliveries` listings."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any, cast

from sqlalchemy import Engine, Table, func, select

from monitor.db.models import Delivery, Event, Snapshot, Watch

S, E, W, D = (cast(Table, m.__table__) for m in (Snapshot, Event, Watch, Delivery))
CHUNK = 1000


def _rows(engine: Engine, query: Any) -> list[dict[str, Any]]:
    with engine.connect().execution_options(readonly=True) as conn:
        return [dict(r._mapping) for r in conn.execute(query)]


def snapshots(engine: Engine, sid: str) -> list[dict[str, Any]]:
    return _rows(engine, select(S).where(S.c.conference_sid == sid).order_by(S.c.id))


def events(
    engine: Engine,
    *,
    since: datetime | None = None,
    until: datetime | None = None,
    types: list[str] | None = None,
    sid: str | None = None,
    limit: int = 100,
    oldest_first: bool = False,
) -> list[dict[str, Any]]:
    query = _event_filters(select(E), since, until, types, sid)
    order = (E.c.occurred_at, E.c.id) if oldest_first else (E.c.occurred_at.desc(), E.c.id.desc())
    return _rows(engine, query.order_by(*order).limit(limit))


def labels(engine: Engine, sids: Sequence[str]) -> dict[str, str]:
    """The label of each watched SID that has one."""
    found: dict[str, str] = {}
    unique = list(dict.fromkeys(sids))
    with engine.connect().execution_options(readonly=True) as conn:
        for start in range(0, len(unique), CHUNK):
            part = unique[start : start + CHUNK]
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
    """How many events `events` would return without its limit."""
    query = _event_filters(select(func.count()).select_from(E), since, until, types, sid)
    with engine.connect().execution_options(readonly=True) as conn:
        return int(conn.execute(query).scalar_one())


def _event_filters(
    query: Any,
    since: datetime | None,
    until: datetime | None,
    types: list[str] | None,
    sid: str | None,
) -> Any:
    if since is not None:
        query = query.where(E.c.occurred_at >= since)
    if until is not None:
        query = query.where(E.c.occurred_at <= until)
    if types:
        query = query.where(E.c.type.in_(types))
    if sid:
        query = query.where(E.c.conference_sid == sid)
    return query


def count_deliveries(engine: Engine, status: str | None = None, notifier: str | None = None) -> int:
    """How many rows `Outbox.listing` would return without its limit."""
    query = select(func.count()).select_from(D)
    if status:
        query = query.where(D.c.status == status)
    if notifier:
        query = query.where(D.c.notifier == notifier)
    with engine.connect().execution_options(readonly=True) as conn:
        return int(conn.execute(query).scalar_one())
