"""indexes for history paging and retention

Keyset paging over watches and events, the deliveries listing by status;
for retention, snapshots and deliveries walked oldest first, and an index on
events.snapshot_id so deleting a snapshot never scans every event to check the
foreign key. The (occurred_at) and (type,
occurred_at) indexes on events gain `id` as a tie-breaker and replace the old
ones.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-28
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("watches", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_watches_created_at_sid"), ["created_at", "sid"])
        batch_op.create_index(
            batch_op.f("ix_watches_status_created_at_sid"), ["status", "created_at", "sid"]
        )
        batch_op.create_index(
            batch_op.f("ix_watches_label_created_at_sid"), ["label", "created_at", "sid"]
        )
    with op.batch_alter_table("events", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_events_occurred_at"))
        batch_op.drop_index(batch_op.f("ix_events_type_occurred_at"))
        batch_op.create_index(batch_op.f("ix_events_occurred_at_id"), ["occurred_at", "id"])
        batch_op.create_index(
            batch_op.f("ix_events_type_occurred_at_id"), ["type", "occurred_at", "id"]
        )
        batch_op.create_index(batch_op.f("ix_events_snapshot_id"), ["snapshot_id"])
    with op.batch_alter_table("deliveries", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_deliveries_status_id"), ["status", "id"])
        batch_op.create_index(batch_op.f("ix_deliveries_created_at_id"), ["created_at", "id"])
    with op.batch_alter_table("snapshots", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_snapshots_first_observed_at_id"), ["first_observed_at", "id"]
        )


def downgrade() -> None:
    with op.batch_alter_table("snapshots", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_snapshots_first_observed_at_id"))
    with op.batch_alter_table("deliveries", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_deliveries_created_at_id"))
        batch_op.drop_index(batch_op.f("ix_deliveries_status_id"))
    with op.batch_alter_table("events", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_events_snapshot_id"))
        batch_op.drop_index(batch_op.f("ix_events_type_occurred_at_id"))
        batch_op.drop_index(batch_op.f("ix_events_occurred_at_id"))
        batch_op.create_index(batch_op.f("ix_events_type_occurred_at"), ["type", "occurred_at"])
        batch_op.create_index(batch_op.f("ix_events_occurred_at"), ["occurred_at"])
    with op.batch_alter_table("watches", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_watches_label_created_at_sid"))
        batch_op.drop_index(batch_op.f("ix_watches_status_created_at_sid"))
        batch_op.drop_index(batch_op.f("ix_watches_created_at_sid"))
