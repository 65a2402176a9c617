"""An index on the tasks' name and state, which /metrics counts at every scrape.

Revision ID: 0003_task_name_state_index
Revises: 0002_images_tasks_email_tokens
Create Date: 2026-11-22
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0003_task_name_state_index"
down_revision: str | Sequence[str] | None = "0002_images_tasks_email_tokens"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index(op.f("ix_task_name_state"), "task", ["name", "state"])


def downgrade() -> None:
    op.drop_index(op.f("ix_task_name_state"), table_name="task")
