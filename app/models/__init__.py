"""ORM models: the database's shape. Importing this package registers every table."""

from app.models.auth_session import AuthSession
from app.models.comment import Comment
from app.models.email_token import EmailToken, TokenPurpose
from app.models.follow import Follow
from app.models.image import Image, ImageStatus
from app.models.media_deletion import MediaDeletion
from app.models.outbox import OutboxJob
from app.models.post import Post, PostLike, Tag, post_tag
from app.models.task import Task, TaskState
from app.models.user import Role, User

__all__ = [
    "AuthSession",
    "Comment",
    "EmailToken",
    "Follow",
    "Image",
    "ImageStatus",
    "MediaDeletion",
    "OutboxJob",
    "Post",
    "PostLike",
    "Role",
    "Tag",
    "Task",
    "TaskState",
    "TokenPurpose",
    "User",
    "post_tag",
]
