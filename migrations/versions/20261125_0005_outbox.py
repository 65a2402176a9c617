"""The transactional outbox: jobs stored with the data they are about, sent after the commit.

Revision ID: 0005_outbox
Revises: 0004_user_pending_email
Create Date: 2026-11-25
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005_outbox"
down_revision: str | Sequence[str] | None = "0004_user_pending_email"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
TIMESTAMP = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "outbox",
        sa.Column("id", ID, nullable=False),
        sa.Column("task_id", sa.String(36), nullable=False),
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("args", sa.JSON(), nullable=False),
        sa.Column("request_id", sa.String(128), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.Column("next_attempt_at", TIMESTAMP, nullable=False),
        sa.Column("sent_at", TIMESTAMP, nullable=True),
        sa.ForeignKeyConstraint(
            ["task_id"], ["task.id"], name=op.f("fk_outbox_task_id_task"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_outbox")),
        sqlite_autoincrement=True,
    )
    # The relay looks for the jobs not sent yet whose next attempt is due.
    op.create_index(op.f("ix_outbox_sent_at_next_attempt_at"), "outbox", ["sent_at", "next_attempt_at"])
    op.create_index(op.f("ix_outbox_task_id"), "outbox", ["task_id"])


def downgrade() -> None:
    op.drop_index(op.f("ix_outbox_task_id"), table_name="outbox")
    op.drop_index(op.f("ix_outbox_sent_at_next_attempt_at"), table_name="outbox")
    op.drop_table("outbox")
