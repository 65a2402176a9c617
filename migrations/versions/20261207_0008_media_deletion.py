"""Failed deletions of media files, tried again until they succeed.

Revision ID: 0008_media_deletion
Revises: 0007_search
Create Date: 2026-12-07
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008_media_deletion"
down_revision: str | Sequence[str] | None = "0007_search"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
TIMESTAMP = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "media_deletion",
        sa.Column("id", ID, nullable=False),
        sa.Column("storage_key", sa.String(32), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("last_error", sa.String(500), nullable=True),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.Column("next_attempt_at", TIMESTAMP, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_media_deletion")),
        sa.UniqueConstraint("storage_key", name=op.f("uq_media_deletion_storage_key")),
        sqlite_autoincrement=True,
    )
    op.create_index(
        op.f("ix_media_deletion_next_attempt_at"), "media_deletion", ["next_attempt_at"]
    )


def downgrade() -> None:
    op.drop_index(op.f("ix_media_deletion_next_attempt_at"), table_name="media_deletion")
    op.drop_table("media_deletion")
