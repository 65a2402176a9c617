"""A user's new e-mail address waits in `pending_email` until its verification link is used.

Revision ID: 0004_user_pending_email
Revises: 0003_task_name_state_index
Create Date: 2026-11-25
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004_user_pending_email"
down_revision: str | Sequence[str] | None = "0003_task_name_state_index"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("user") as batch:
        batch.add_column(sa.Column("pending_email", sa.String(length=254), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("user") as batch:
        batch.drop_column("pending_email")
