"""the last accepted status callback's SequenceNumber, per watch

Status callbacks carry a per-conference `SequenceNumber`; the watch keeps the
last one it accepted, so a replayed or late callback is recognised and dropped
by compare-and-set.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("watches", schema=None) as batch_op:
        batch_op.add_column(sa.Column("callback_sequence", sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("watches", schema=None) as batch_op:
        batch_op.drop_column("callback_sequence")
