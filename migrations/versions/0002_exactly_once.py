"""exactly once: compare-and-set watches, fetch leases, list sweeps, one started/ended each

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-30

Databases written by earlier versions may hold a second `conference.started` or
`conference.ended` for one conference (two daemons racing). Those extra rows are
kept for history but renamed `conference.duplicate`, so the unique index that now
forbids them can be created.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

ONCE = "type IN ('conference.started', 'conference.ended')"


def upgrade() -> None:
    with op.batch_alter_table("watches") as batch:
        batch.add_column(
            sa.Column("version", sa.Integer(), server_default=sa.text("0"), nullable=False)
        )
        batch.add_column(sa.Column("observed_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(
            sa.Column("mode", sa.String(length=8), server_default="fetch", nullable=False)
        )
        batch.add_column(sa.Column("lease_owner", sa.String(length=64), nullable=True))
        batch.add_column(sa.Column("lease_until", sa.DateTime(timezone=True), nullable=True))
        batch.drop_index("ix_watches_status_next_poll_at")
        batch.create_index(
            "ix_watches_status_mode_next_poll_at", ["status", "mode", "next_poll_at"], unique=False
        )
        batch.create_index(
            "ix_watches_account_sid_status_mode", ["account_sid", "status", "mode"], unique=False
        )
    _rename_duplicate_transitions()
    op.create_index(
        "uq_events_transition_once",
        "events",
        ["conference_sid", "type"],
        unique=True,
        sqlite_where=sa.text(ONCE),
        postgresql_where=sa.text(ONCE),
    )
    op.create_table(
        "account_sweeps",
        sa.Column("account_sid", sa.String(length=34), nullable=False),
        sa.Column("next_sweep_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("owner", sa.String(length=64), nullable=True),
        sa.Column("lease_until", sa.DateTime(timezone=True), nullable=True),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("completed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("listed", sa.Integer(), nullable=True),
        sa.Column("missing", sa.Integer(), nullable=True),
        sa.Column("pages", sa.Integer(), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("account_sid", name=op.f("pk_account_sweeps")),
    )


def _rename_duplicate_transitions() -> None:
    """Keep the first started/ended of each conference; rename any later one."""
    op.execute(
        sa.text(
            "UPDATE events SET type = 'conference.duplicate' WHERE " + ONCE + " AND EXISTS ("
            "SELECT 1 FROM events AS earlier WHERE earlier.conference_sid = events.conference_sid"
            " AND earlier.type = events.type AND (earlier.occurred_at < events.occurred_at"
            " OR (earlier.occurred_at = events.occurred_at AND earlier.id < events.id)))"
        )
    )


def downgrade() -> None:
    op.drop_table("account_sweeps")
    op.drop_index("uq_events_transition_once", table_name="events")
    with op.batch_alter_table("watches") as batch:
        batch.drop_index("ix_watches_account_sid_status_mode")
        batch.drop_index("ix_watches_status_mode_next_poll_at")
        batch.create_index(
            "ix_watches_status_next_poll_at", ["status", "next_poll_at"], unique=False
        )
        batch.drop_column("lease_until")
        batch.drop_column("lease_owner")
        batch.drop_column("mode")
        batch.drop_column("observed_at")
        batch.drop_column("version")
