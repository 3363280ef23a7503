"""SQLAlchemy 2 tables: watches, snapshots, events, the delivery outbox and its attempts.

What is due lives here (`watches.next_poll_at`, `deliveries.next_attempt_at`), so a
restart resumes where the last process stopped and several instances on one
PostgreSQL can share work by claiming rows.
"""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import (
    BigInteger,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    text,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

# SQLite only auto-increments INTEGER PRIMARY KEY; PostgreSQL gets a real bigint.
BigId = BigInteger().with_variant(Integer(), "sqlite")

NAMING = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class UTCDateTime(TypeDecorator[datetime]):
    """Aware UTC datetimes in and out, on SQLite (which keeps no zone) as on PostgreSQL."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r} cannot be stored")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


ONCE_PER_CONFERENCE = "type IN ('conference.started', 'conference.ended')"
ENDED_ONLY = "type = 'conference.ended'"


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


class Watch(Base):
    """A conference SID being watched, its lifecycle state and when it is next due.

    `version` is the compare-and-set token: every write of a new state checks
    the version it was detected from, so two observers (daemons, `poll`,
    callbacks) can never both record the same transition. `observed_at` is when
    the recorded state was current, so an observation older than it is stale.
    `mode` says who observes an active watch: `fetch` (one request each, claimed
    with a lease) or `list` (the account's list sweep).
    """

    __tablename__ = "watches"

    sid: Mapped[str] = mapped_column(String(34), primary_key=True)
    account_sid: Mapped[str] = mapped_column(String(34))
    label: Mapped[str | None] = mapped_column(String(200))
    status: Mapped[str] = mapped_column(String(16), default="active")  # active|completed|not_found
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    next_poll_at: Mapped[datetime] = mapped_column(UTCDateTime())
    last_polled_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    last_status: Mapped[str | None] = mapped_column(String(32))
    high_status: Mapped[str | None] = mapped_column(String(32))
    current_snapshot_id: Mapped[int | None] = mapped_column(BigId)
    current_hash: Mapped[str | None] = mapped_column(String(64))
    first_not_found_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    last_error: Mapped[str | None] = mapped_column(Text)
    consecutive_errors: Mapped[int] = mapped_column(Integer, default=0)
    version: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    observed_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    mode: Mapped[str] = mapped_column(String(8), default="fetch", server_default="fetch")
    lease_owner: Mapped[str | None] = mapped_column(String(64))
    lease_until: Mapped[datetime | None] = mapped_column(UTCDateTime())
    # The last status callback accepted (its SequenceNumber): older ones are replays.
    callback_sequence: Mapped[int | None] = mapped_column(Integer)

    __table_args__ = (
        Index(None, "status", "mode", "next_poll_at"),
        Index(None, "account_sid", "status", "mode"),
        # History paging (newest first, keyset) and the day view; see migration 0004.
        Index(None, "created_at", "sid"),
        Index(None, "status", "created_at", "sid"),
        Index(None, "label", "created_at", "sid"),
    )


class Snapshot(Base):
    """One distinct state of a conference; repeated identical observations only bump the count."""

    __tablename__ = "snapshots"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    conference_sid: Mapped[str] = mapped_column(String(34))
    account_sid: Mapped[str | None] = mapped_column(String(34))
    status: Mapped[str | None] = mapped_column(String(32))
    friendly_name: Mapped[str | None] = mapped_column(String(256))
    region: Mapped[str | None] = mapped_column(String(32))
    reason_conference_ended: Mapped[str | None] = mapped_column(String(64))
    call_sid_ending_conference: Mapped[str | None] = mapped_column(String(34))
    date_created: Mapped[datetime | None] = mapped_column(UTCDateTime())
    date_updated: Mapped[datetime | None] = mapped_column(UTCDateTime())
    content_hash: Mapped[str] = mapped_column(String(64))
    raw_json: Mapped[str] = mapped_column(Text)
    detected_via: Mapped[str] = mapped_column(String(8))
    first_observed_at: Mapped[datetime] = mapped_column(UTCDateTime())
    last_observed_at: Mapped[datetime] = mapped_column(UTCDateTime())
    observation_count: Mapped[int] = mapped_column(Integer, default=1)

    __table_args__ = (
        Index(None, "conference_sid", "id"),
        Index(None, "first_observed_at", "id"),  # retention walks snapshots oldest first
    )


class Event(Base):
    """A detected transition (or watch outcome); `body` is the exact notification document."""

    __tablename__ = "events"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    type: Mapped[str] = mapped_column(String(40))
    conference_sid: Mapped[str | None] = mapped_column(String(34))
    account_sid: Mapped[str | None] = mapped_column(String(34))
    snapshot_id: Mapped[int | None] = mapped_column(BigId, ForeignKey("snapshots.id"))
    from_status: Mapped[str | None] = mapped_column(String(32))
    to_status: Mapped[str | None] = mapped_column(String(32))
    skipped: Mapped[str] = mapped_column(String(64), default="")  # comma-separated
    reason_conference_ended: Mapped[str | None] = mapped_column(String(64))
    call_sid_ending_conference: Mapped[str | None] = mapped_column(String(34))
    occurred_at: Mapped[datetime] = mapped_column(UTCDateTime())
    body: Mapped[str] = mapped_column(Text)
    # conference.ended only: Twilio's date_updated - date_created at the end, if known.
    duration_s: Mapped[float | None] = mapped_column(Float)

    __table_args__ = (
        Index(None, "occurred_at", "id"),  # keyset paging and retention
        Index(None, "conference_sid", "occurred_at"),
        Index(None, "type", "occurred_at", "id"),
        Index(None, "snapshot_id"),  # deleting a snapshot must not scan events
        # The last line of "never twice": one started and one ended per conference,
        # whatever races the code loses.
        Index(
            "uq_events_transition_once",
            "conference_sid",
            "type",
            unique=True,
            sqlite_where=text(ONCE_PER_CONFERENCE),
            postgresql_where=text(ONCE_PER_CONFERENCE),
        ),
        # The summary's ends in a window, read from the index alone.
        Index(
            "ix_events_ended_window",
            "type",  # leading, so the planner prefers it to (type, occurred_at, id)
            "occurred_at",
            "id",
            "conference_sid",
            "reason_conference_ended",
            "duration_s",
            sqlite_where=text(ENDED_ONLY),
            postgresql_where=text(ENDED_ONLY),
        ),
    )


class Delivery(Base):
    """The outbox: one row per (event, notifier), claimed with a lease by a dispatcher."""

    __tablename__ = "deliveries"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    event_id: Mapped[str] = mapped_column(String(40), ForeignKey("events.id"))
    notifier: Mapped[str] = mapped_column(String(100))
    event_type: Mapped[str] = mapped_column(String(40))
    conference_sid: Mapped[str | None] = mapped_column(String(34))
    status: Mapped[str] = mapped_column(String(12), default="pending")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    next_attempt_at: Mapped[datetime] = mapped_column(UTCDateTime())
    lease_owner: Mapped[str | None] = mapped_column(String(64))
    lease_until: Mapped[datetime | None] = mapped_column(UTCDateTime())
    last_error: Mapped[str | None] = mapped_column(Text)
    last_status_code: Mapped[int | None] = mapped_column(Integer)
    delivered_at: Mapped[datetime | None] = mapped_column(UTCDateTime())

    __table_args__ = (
        UniqueConstraint("event_id", "notifier"),
        Index(None, "status", "next_attempt_at"),
        Index(None, "notifier", "conference_sid", "status"),
        Index(None, "status", "id"),  # the API's listing by status, newest first
        Index(None, "created_at", "id"),  # retention walks deliveries oldest first
    )


class DeliveryAttempt(Base):
    """Every try at a delivery: when, what the receiver said, how long it took."""

    __tablename__ = "delivery_attempts"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    delivery_id: Mapped[int] = mapped_column(BigId, ForeignKey("deliveries.id"))
    attempted_at: Mapped[datetime] = mapped_column(UTCDateTime())
    status_code: Mapped[int | None] = mapped_column(Integer)
    error: Mapped[str | None] = mapped_column(Text)
    duration_ms: Mapped[float] = mapped_column(Float)

    __table_args__ = (Index(None, "delivery_id"),)


class NotifierState(Base):
    """What every daemon sharing the database must respect about one notifier.

    Turned off by its receiver (HTTP 410), paused as its `Retry-After` asked, or its
    circuit open after consecutive failures (`circuit` = open | probing): all survive
    restarts and are seen by each instance at its next dispatch tick.
    """

    __tablename__ = "notifier_state"

    name: Mapped[str] = mapped_column(String(100), primary_key=True)
    disabled_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    disabled_reason: Mapped[str | None] = mapped_column(Text)
    url_fingerprint: Mapped[str | None] = mapped_column(String(64))
    paused_until: Mapped[datetime | None] = mapped_column(UTCDateTime())
    pause_reason: Mapped[str | None] = mapped_column(Text)
    circuit: Mapped[str | None] = mapped_column(String(12))
    consecutive_failures: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    updated_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class AccountState(Base):
    """Credentials rejected for an account: one `watch.auth_failed` per episode, not per watch."""

    __tablename__ = "account_state"

    account_sid: Mapped[str] = mapped_column(String(34), primary_key=True)
    auth_failed_since: Mapped[datetime | None] = mapped_column(UTCDateTime())
    last_error: Mapped[str | None] = mapped_column(Text)


class AccountSweep(Base):
    """The list sweep of one account: when it is next due and who is running it.

    Instances elect the sweeper with a compare-and-set on this row (due, and no
    live lease), so an account is listed once per interval across all of them;
    a sweeper that dies loses its lease and another takes over.
    """

    __tablename__ = "account_sweeps"

    account_sid: Mapped[str] = mapped_column(String(34), primary_key=True)
    next_sweep_at: Mapped[datetime] = mapped_column(UTCDateTime())
    owner: Mapped[str | None] = mapped_column(String(64))
    lease_until: Mapped[datetime | None] = mapped_column(UTCDateTime())
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    completed_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    listed: Mapped[int | None] = mapped_column(Integer)
    missing: Mapped[int | None] = mapped_column(Integer)
    pages: Mapped[int | None] = mapped_column(Integer)
    last_error: Mapped[str | None] = mapped_column(Text)
