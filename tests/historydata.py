"""A known history written straight into a real database, with exact times.

Rows look like what the poller writes: a watch, one snapshot per distinct state
(Twilio's `date_created`/`date_updated` in them), the events with their
notification documents built by `monitor.events`, outbox rows and attempts.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import Engine, Table, insert, update

from monitor.db.models import AccountState, Delivery, DeliveryAttempt, Event, Snapshot, Watch
from monitor.domain import Conference, EventType, Transition, fingerprint
from monitor.events import NewEvent, duration_s, transition_event, watch_event

W, S, E, D, A = (
    cast(Table, m.__table__) for m in (Watch, Snapshot, Event, Delivery, DeliveryAttempt)
)
ACCOUNTS = cast(Table, AccountState.__table__)
ACCOUNT = "AC" + "a" * 32
OBSERVE_LAG = timedelta(seconds=2)


def sid(n: int) -> str:
    return f"CF{n:032x}"


def call(n: int) -> str:
    return f"CA{n:032x}"


@dataclass
class Written:
    sid: str
    snapshot_ids: list[int] = field(default_factory=list)
    event_ids: list[str] = field(default_factory=list)
    delivery_ids: list[int] = field(default_factory=list)


def _conference(
    sid_: str, status: str, created: datetime, updated: datetime, name: str, **extra: Any
) -> Conference:
    raw = {
        "sid": sid_,
        "account_sid": extra.get("account", ACCOUNT),
        "friendly_name": name,
        "status": status,
        "region": "us1",
        "reason_conference_ended": extra.get("reason"),
        "call_sid_ending_conference": extra.get("call"),
        "date_created": created.isoformat(),
        "date_updated": updated.isoformat(),
    }
    return Conference(
        sid=sid_,
        account_sid=raw["account_sid"],
        friendly_name=name,
        status=status,
        region="us1",
        reason_conference_ended=extra.get("reason"),
        call_sid_ending_conference=extra.get("call"),
        date_created=created,
        date_updated=updated,
        raw=raw,
    )


def add_conference(
    engine: Engine,
    n: int,
    *,
    created: datetime,
    started: datetime | None = None,
    ended: datetime | None = None,
    reason: str | None = None,
    label: str | None = None,
    account: str = ACCOUNT,
    name: str | None = None,
    notifiers: tuple[str, ...] = ("hook",),
    delivery_status: str = "delivered",
    detail_snapshots: int = 0,
) -> Written:
    """A conference seen from creation: init, maybe in-progress, maybe completed.

    `detail_snapshots` adds snapshots in the init phase that changed no status
    (the friendly name was edited), as Twilio's updates can.
    """
    written = Written(sid(n))
    name = name or f"room-{n}"
    end_call = call(n) if ended else None
    states: list[tuple[str, datetime]] = [("init", created)]
    states += [(f"init-{i}", created + timedelta(seconds=i + 1)) for i in range(detail_snapshots)]
    states += [("in-progress", started)] if started else []
    states += [("completed", ended)] if ended else []
    with engine.begin() as conn:
        conn.execute(
            insert(W).values(
                sid=written.sid,
                account_sid=account,
                label=label,
                status="completed" if ended else "active",
                created_at=created,
                next_poll_at=created,
                consecutive_errors=0,
            )
        )
        previous: str | None = None
        for i, (state, at) in enumerate(states):
            status = state.split("-")[0] if state.startswith("init") else state
            is_last = i == len(states) - 1
            until = states[i + 1][1] if not is_last else at + timedelta(seconds=30)
            conf = _conference(
                written.sid,
                status,
                created,
                at,
                name if "-" not in state or state == "in-progress" else f"{name} ({state})",
                account=account,
                reason=reason if status == "completed" else None,
                call=end_call if status == "completed" else None,
            )
            snapshot_id = _snapshot(conn, conf, at + OBSERVE_LAG, max(until, at + OBSERVE_LAG))
            written.snapshot_ids.append(snapshot_id)
            if status != previous:
                event = _transition(conf, previous, status, at + OBSERVE_LAG)
                _event(conn, event, snapshot_id, notifiers, delivery_status, written)
            previous = status
        conn.execute(
            update(W)
            .where(W.c.sid == written.sid)
            .values(
                last_status=previous,
                high_status=previous,
                current_snapshot_id=written.snapshot_ids[-1],
                last_polled_at=states[-1][1] + timedelta(seconds=30),
            )
        )
    return written


def _transition(conf: Conference, before: str | None, after: str, at: datetime) -> NewEvent:
    if before is None:
        kind = EventType.FIRST_SEEN
    else:
        kind = EventType.STARTED if after == "in-progress" else EventType.ENDED
    return transition_event(conf, Transition(kind, before, after), at, "poll")


def _snapshot(conn: Any, conf: Conference, first: datetime, last: datetime) -> int:
    return int(
        conn.execute(
            insert(S)
            .values(
                conference_sid=conf.sid,
                account_sid=conf.account_sid,
                status=conf.status,
                friendly_name=conf.friendly_name,
                region=conf.region,
                reason_conference_ended=conf.reason_conference_ended,
                call_sid_ending_conference=conf.call_sid_ending_conference,
                date_created=conf.date_created,
                date_updated=conf.date_updated,
                content_hash=fingerprint(dict(conf.raw)),
                raw_json=json.dumps(dict(conf.raw)),
                detected_via="poll",
                first_observed_at=first,
                last_observed_at=last,
                observation_count=max(1, int((last - first).total_seconds() // 5) + 1),
            )
            .returning(S.c.id)
        ).scalar_one()
    )


def _event(
    conn: Any,
    event: NewEvent,
    snapshot_id: int | None,
    notifiers: tuple[str, ...],
    delivery_status: str,
    written: Written,
) -> None:
    conn.execute(
        insert(E).values(
            id=event.id,
            type=event.type,
            conference_sid=event.conference_sid,
            account_sid=event.account_sid,
            snapshot_id=snapshot_id,
            from_status=event.from_status,
            to_status=event.to_status,
            skipped=",".join(event.skipped),
            reason_conference_ended=event.reason_conference_ended,
            call_sid_ending_conference=event.call_sid_ending_conference,
            occurred_at=event.occurred_at,
            body=event.body,
            duration_s=duration_s(event),
        )
    )
    written.event_ids.append(event.id)
    if event.type == EventType.FIRST_SEEN:
        return
    for name in notifiers:
        delivered = delivery_status == "delivered"
        delivery_id = conn.execute(
            insert(D)
            .values(
                event_id=event.id,
                notifier=name,
                event_type=event.type,
                conference_sid=event.conference_sid,
                status=delivery_status,
                attempts=1 if delivery_status != "pending" else 0,
                created_at=event.occurred_at,
                next_attempt_at=event.occurred_at,
                delivered_at=event.occurred_at + timedelta(milliseconds=40) if delivered else None,
                last_status_code=204 if delivered else None,
            )
            .returning(D.c.id)
        ).scalar_one()
        written.delivery_ids.append(int(delivery_id))
        if delivery_status != "pending":
            conn.execute(
                insert(A).values(
                    delivery_id=delivery_id,
                    attempted_at=event.occurred_at,
                    status_code=204 if delivered else 500,
                    error=None if delivered else "HTTP 500",
                    duration_ms=40.0,
                )
            )


def add_watch_event(
    engine: Engine, kind: EventType, at: datetime, *, n: int | None = None, account: str = ACCOUNT
) -> str:
    """`watch.not_found` (for conference n, whose watch it ends) or `watch.auth_failed`."""
    conference_sid = sid(n) if n is not None else None
    event = watch_event(
        kind, conference_sid=conference_sid, account_sid=account, at=at, detail="test"
    )
    with engine.begin() as conn:
        if conference_sid is not None:
            conn.execute(
                insert(W).values(
                    sid=conference_sid,
                    account_sid=account,
                    status="not_found",
                    created_at=at - timedelta(seconds=12),
                    next_poll_at=at,
                    consecutive_errors=3,
                    last_error="conference not found",
                )
            )
        if kind == EventType.WATCH_AUTH_FAILED:
            conn.execute(insert(ACCOUNTS).values(account_sid=account, auth_failed_since=at))
        _event(conn, event, None, (), "delivered", Written(conference_sid or ""))
    return event.id
