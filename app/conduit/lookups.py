"""The authors' profiles that articles and comments carry, looked up together."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy.ext.asyncio import AsyncSession

from app.conduit import mapping, schemas
from app.schemas.comment import CommentAuthor
from app.schemas.post import AuthorOut
from app.services import profiles
from app.services.posts import Viewer


async def authors(
    db: AsyncSession, people: Sequence[AuthorOut | CommentAuthor], viewer: Viewer | None
) -> dict[int, schemas.Profile]:
    """Each author's profile as this viewer sees it (`following`), in one round of statements
    whatever their number; an author with no profile left (deactivated) keeps name and image."""
    found = {
        p.id: mapping.profile(p)
        for p in await profiles.profiles_of(db, [person.id for person in people], viewer)
    }
    for person in people:
        if person.id not in found:
            found[person.id] = mapping.absent_profile(person.username, person.image)
    return found
