"""ORM models: the database's shape. Importing this package registers every table."""

from app.models.auth_session import AuthSession
from app.models.post import Post, PostLike, Tag, post_tag
from app.models.user import Role, User

__all__ = ["AuthSession", "Post", "PostLike", "Role", "Tag", "User", "post_tag"]
