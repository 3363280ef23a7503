"""each conference.ended event keeps its conference's duration

The history summary computes duration percentiles over every end in a window.
Reading each end's snapshot for its dates made a week's summary cost ~100 ms;
with the duration on the event and a partial covering index over ended events,
it is an index-only range scan. Existing ends are filled from their snapshots.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

ENDED = "type = 'conference.ended'"
INDEX = "ix_events_ended_window"
COLUMNS = ["type", "occurred_at", "id", "conference_sid", "reason_conference_ended", "duration_s"]


def upgrade() -> None:
    with op.batch_alter_table("events", schema=None) as batch_op:
        batch_op.add_column(sa.Column("duration_s", sa.Float(), nullable=True))
    if op.get_bind().dialect.name == "postgresql":
        seconds = "EXTRACT(EPOCH FROM (s.date_updated - s.date_created))"
    else:
        seconds = "(julianday(s.date_updated) - julianday(s.date_created)) * 86400.0"
    op.execute(
        f"UPDATE events SET duration_s = (SELECT {seconds} FROM snapshots s"
        f" WHERE s.id = events.snapshot_id) WHERE {ENDED}"
    )
    op.create_index(
        INDEX,
        "events",
        COLUMNS,
        sqlite_where=sa.text(ENDED),
        postgresql_where=sa.text(ENDED),
    )


def downgrade() -> None:
    op.drop_index(INDEX, table_name="events")
    with op.batch_alter_table("events", schema=None) as batch_op:
        batch_op.drop_column("duration_s")
