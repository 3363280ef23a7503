"""Read-only queries behind `history` and `events`."""

from __future__ import annotations

from datetime import datetime
from typing import Any, cast

from sqlalchemy import Engine, Table, select

from monitor.db.models import Event, Snapshot

S, E = (cast(Table, m.__table__) for m in (Snapshot, Event))


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
    query = select(E)
    if since is not None:
        query = query.where(E.c.occurred_at >= since)
    if until is not None:
        query = query.where(E.c.occurred_at <= until)
    if types:
        query = query.where(E.c.type.in_(types))
    if sid:
        query = query.where(E.c.conference_sid == sid)
    order = (E.c.occurred_at, E.c.id) if oldest_first else (E.c.occurred_at.desc(), E.c.id.desc())
    return _rows(engine, query.order_by(*order).limit(limit))
