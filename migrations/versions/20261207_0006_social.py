"""Social: follows, comments with replies, post slugs and summaries, user pictures.

Existing posts get a slug from their title (a numeric suffix when titles collide), in id order.

Revision ID: 0006_social
Revises: 0005_outbox
Create Date: 2026-12-07
"""

import re
import unicodedata
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006_social"
down_revision: str | Sequence[str] | None = "0005_outbox"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
TIMESTAMP = sa.DateTime(timezone=True)
SLUG_BASE_LENGTH = 80  # as app.core.slugs cuts them; the column holds 100


def _slug_base(title: str) -> str:
    ascii_text = unicodedata.normalize("NFKD", title).encode("ascii", "ignore").decode()
    slug = re.sub(r"[^a-z0-9]+", "-", ascii_text.lower()).strip("-")
    return slug[:SLUG_BASE_LENGTH].rstrip("-") or "post"


def upgrade() -> None:
    with op.batch_alter_table("user") as batch:
        batch.add_column(sa.Column("image", sa.String(length=2048), nullable=True))
    with op.batch_alter_table("post") as batch:
        batch.add_column(sa.Column("slug", sa.String(length=100), nullable=True))
        batch.add_column(sa.Column("summary", sa.String(length=300), nullable=True))
        batch.add_column(
            sa.Column("comments_count", sa.Integer(), nullable=False, server_default="0")
        )
    _backfill_slugs()
    with op.batch_alter_table("post") as batch:
        batch.alter_column("slug", existing_type=sa.String(length=100), nullable=False)
        batch.alter_column("comments_count", existing_type=sa.Integer(), server_default=None)
        batch.create_index(op.f("ix_post_slug"), ["slug"], unique=True)

    op.create_table(
        "follow",
        sa.Column("follower_id", sa.BigInteger(), nullable=False),
        sa.Column("followee_id", sa.BigInteger(), nullable=False),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.ForeignKeyConstraint(
            ["follower_id"], ["user.id"], name=op.f("fk_follow_follower_id_user"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["followee_id"], ["user.id"], name=op.f("fk_follow_followee_id_user"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("follower_id", "followee_id", name=op.f("pk_follow")),
    )
    op.create_index(
        op.f("ix_follow_followee_id_created_at_follower_id"),
        "follow",
        ["followee_id", "created_at", "follower_id"],
    )
    op.create_index(
        op.f("ix_follow_follower_id_created_at_followee_id"),
        "follow",
        ["follower_id", "created_at", "followee_id"],
    )

    op.create_table(
        "comment",
        sa.Column("id", ID, nullable=False),
        sa.Column("post_id", sa.BigInteger(), nullable=False),
        sa.Column("parent_id", sa.BigInteger(), nullable=True),
        sa.Column("author_id", sa.BigInteger(), nullable=True),
        sa.Column("body", sa.Text(), nullable=True),
        sa.Column("deleted", sa.Boolean(), nullable=False),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.Column("updated_at", TIMESTAMP, nullable=False),
        sa.ForeignKeyConstraint(
            ["post_id"], ["post.id"], name=op.f("fk_comment_post_id_post"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["parent_id"],
            ["comment.id"],
            name=op.f("fk_comment_parent_id_comment"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["author_id"], ["user.id"], name=op.f("fk_comment_author_id_user"), ondelete="SET NULL"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_comment")),
        sqlite_autoincrement=True,
    )
    op.create_index(
        op.f("ix_comment_post_id_created_at_id"), "comment", ["post_id", "created_at", "id"]
    )
    op.create_index(op.f("ix_comment_parent_id"), "comment", ["parent_id"])
    op.create_index(op.f("ix_comment_author_id"), "comment", ["author_id"])


def _backfill_slugs() -> None:
    bind = op.get_bind()
    post = sa.table("post", sa.column("id", sa.BigInteger()), sa.column("title", sa.String()),
                    sa.column("slug", sa.String()))
    taken: set[str] = set()
    rows = bind.execute(sa.select(post.c.id, post.c.title).order_by(post.c.id)).all()
    for post_id, title in rows:
        base = slug = _slug_base(title)
        n = 1
        while slug in taken:
            n += 1
            slug = f"{base}-{n}"
        taken.add(slug)
        bind.execute(sa.update(post).where(post.c.id == post_id).values(slug=slug))


def downgrade() -> None:
    op.drop_index(op.f("ix_comment_author_id"), table_name="comment")
    op.drop_index(op.f("ix_comment_parent_id"), table_name="comment")
    op.drop_index(op.f("ix_comment_post_id_created_at_id"), table_name="comment")
    op.drop_table("comment")
    op.drop_index(op.f("ix_follow_follower_id_created_at_followee_id"), table_name="follow")
    op.drop_index(op.f("ix_follow_followee_id_created_at_follower_id"), table_name="follow")
    op.drop_table("follow")
    with op.batch_alter_table("post") as batch:
        batch.drop_index(op.f("ix_post_slug"))
        batch.drop_column("comments_count")
        batch.drop_column("summary")
        batch.drop_column("slug")
    with op.batch_alter_table("user") as batch:
        batch.drop_column("image")
