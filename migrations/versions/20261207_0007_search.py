"""Search and counts that do not grow with the data: full-text search of posts, counted tags.

PostgreSQL: `post.search_vector`, a generated weighted `tsvector` (title A, summary B,
content C, configuration 'simple') with a GIN index. SQLite: `post_fts`, an FTS5 table over the
post's title, summary and content (external content: the text is kept once, in `post`), kept
in step by triggers. Both: `tag.post_count`, the published posts carrying each tag, filled from
the existing data and kept exact by triggers on `post_tag` and `post`.

Revision ID: 0007_search
Revises: 0006_social
Create Date: 2026-12-07
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007_search"
down_revision: str | Sequence[str] | None = "0006_social"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# As app.models.post.SEARCH_VECTOR_SQL on the day of this migration.
SEARCH_VECTOR_SQL = (
    "setweight(to_tsvector('simple'::regconfig, coalesce(title, '')), 'A') || "
    "setweight(to_tsvector('simple'::regconfig, coalesce(summary, '')), 'B') || "
    "setweight(to_tsvector('simple'::regconfig, coalesce(content, '')), 'C')"
)

COUNT_TAGS = """
UPDATE tag SET post_count = (
    SELECT count(*) FROM post_tag JOIN post ON post.id = post_tag.post_id
    WHERE post_tag.tag_id = tag.id AND post.published
)
"""

# A link counts when its post is published. The post's row is share-locked while the link
# is counted, so that a concurrent publish or unpublish of that post waits and then sees the
# link (or this waits for it and sees the new state): exact under concurrency.
POSTGRES_TRIGGERS = [
    """
    CREATE FUNCTION tag_count_link() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        IF TG_OP = 'INSERT' THEN
            PERFORM 1 FROM post WHERE id = NEW.post_id AND published FOR SHARE;
            IF FOUND THEN
                UPDATE tag SET post_count = post_count + 1 WHERE id = NEW.tag_id;
            END IF;
            RETURN NEW;
        END IF;
        PERFORM 1 FROM post WHERE id = OLD.post_id AND published FOR SHARE;
        IF FOUND THEN
            UPDATE tag SET post_count = post_count - 1 WHERE id = OLD.tag_id;
        END IF;
        RETURN OLD;
    END $$
    """,
    """
    CREATE TRIGGER post_tag_count AFTER INSERT OR DELETE ON post_tag
    FOR EACH ROW EXECUTE FUNCTION tag_count_link()
    """,
    # A post's links go before the post does, while it still says whether it was published.
    """
    CREATE FUNCTION post_unlink_tags() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        DELETE FROM post_tag WHERE post_id = OLD.id;
        RETURN OLD;
    END $$
    """,
    """
    CREATE TRIGGER post_unlink_tags BEFORE DELETE ON post
    FOR EACH ROW EXECUTE FUNCTION post_unlink_tags()
    """,
    """
    CREATE FUNCTION tag_count_publish() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        UPDATE tag SET post_count = post_count + CASE WHEN NEW.published THEN 1 ELSE -1 END
        WHERE id IN (SELECT tag_id FROM post_tag WHERE post_id = NEW.id);
        RETURN NEW;
    END $$
    """,
    """
    CREATE TRIGGER post_publish_count AFTER UPDATE OF published ON post
    FOR EACH ROW WHEN (OLD.published IS DISTINCT FROM NEW.published)
    EXECUTE FUNCTION tag_count_publish()
    """,
]
POSTGRES_DROP = [
    "DROP TRIGGER post_publish_count ON post",
    "DROP FUNCTION tag_count_publish()",
    "DROP TRIGGER post_unlink_tags ON post",
    "DROP FUNCTION post_unlink_tags()",
    "DROP TRIGGER post_tag_count ON post_tag",
    "DROP FUNCTION tag_count_link()",
]

# SQLite runs one writer at a time: the counts are exact without locks.
SQLITE_TRIGGERS = [
    """
    CREATE VIRTUAL TABLE post_fts USING fts5(
        title, summary, content, content='post', content_rowid='id',
        tokenize='unicode61 remove_diacritics 0'
    )
    """,
    """
    CREATE TRIGGER post_fts_insert AFTER INSERT ON post BEGIN
        INSERT INTO post_fts (rowid, title, summary, content)
        VALUES (new.id, new.title, new.summary, new.content);
    END
    """,
    """
    CREATE TRIGGER post_fts_delete AFTER DELETE ON post BEGIN
        INSERT INTO post_fts (post_fts, rowid, title, summary, content)
        VALUES ('delete', old.id, old.title, old.summary, old.content);
    END
    """,
    """
    CREATE TRIGGER post_fts_update AFTER UPDATE OF title, summary, content ON post BEGIN
        INSERT INTO post_fts (post_fts, rowid, title, summary, content)
        VALUES ('delete', old.id, old.title, old.summary, old.content);
        INSERT INTO post_fts (rowid, title, summary, content)
        VALUES (new.id, new.title, new.summary, new.content);
    END
    """,
    "INSERT INTO post_fts (post_fts) VALUES ('rebuild')",
    """
    CREATE TRIGGER post_tag_count_insert AFTER INSERT ON post_tag BEGIN
        UPDATE tag SET post_count = post_count + 1 WHERE id = new.tag_id
            AND EXISTS (SELECT 1 FROM post WHERE id = new.post_id AND published);
    END
    """,
    """
    CREATE TRIGGER post_tag_count_delete AFTER DELETE ON post_tag BEGIN
        UPDATE tag SET post_count = post_count - 1 WHERE id = old.tag_id
            AND EXISTS (SELECT 1 FROM post WHERE id = old.post_id AND published);
    END
    """,
    """
    CREATE TRIGGER post_unlink_tags BEFORE DELETE ON post BEGIN
        DELETE FROM post_tag WHERE post_id = old.id;
    END
    """,
    """
    CREATE TRIGGER post_publish_count AFTER UPDATE OF published ON post
    WHEN old.published IS NOT new.published BEGIN
        UPDATE tag SET post_count = post_count + (CASE WHEN new.published THEN 1 ELSE -1 END)
        WHERE id IN (SELECT tag_id FROM post_tag WHERE post_id = new.id);
    END
    """,
]
SQLITE_DROP = [
    "DROP TRIGGER post_publish_count",
    "DROP TRIGGER post_unlink_tags",
    "DROP TRIGGER post_tag_count_delete",
    "DROP TRIGGER post_tag_count_insert",
    "DROP TRIGGER post_fts_update",
    "DROP TRIGGER post_fts_delete",
    "DROP TRIGGER post_fts_insert",
    "DROP TABLE post_fts",
]


def upgrade() -> None:
    postgres = op.get_bind().dialect.name == "postgresql"
    op.add_column("tag", sa.Column("post_count", sa.Integer(), nullable=False, server_default="0"))
    op.execute(COUNT_TAGS)
    if postgres:
        op.add_column(
            "post",
            sa.Column(
                "search_vector",
                sa.dialects.postgresql.TSVECTOR(),
                sa.Computed(SEARCH_VECTOR_SQL, persisted=True),
                nullable=True,
            ),
        )
        op.create_index(
            "ix_post_search_vector", "post", ["search_vector"], postgresql_using="gin"
        )
    for statement in POSTGRES_TRIGGERS if postgres else SQLITE_TRIGGERS:
        op.execute(statement)


def downgrade() -> None:
    postgres = op.get_bind().dialect.name == "postgresql"
    for statement in POSTGRES_DROP if postgres else SQLITE_DROP:
        op.execute(statement)
    if postgres:
        op.drop_index("ix_post_search_vector", table_name="post")
        op.drop_column("post", "search_vector")
    with op.batch_alter_table("tag") as batch:
        batch.drop_column("post_count")
