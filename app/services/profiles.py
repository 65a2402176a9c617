"""Public profiles and the follow graph."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from sqlalchemy import delete, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from app.database.types import utcnow
from app.database.upsert import insert_ignoring_conflicts
from app.errors import CannotFollowYourself, ProfileNotFound
from app.models import Follow, Post, User
from app.schemas.common import CursorPage, CursorQuery
from app.schemas.profile import Profile
from app.services import comments, paging
from app.services.backends import Backends
from app.services.posts import Viewer
from app.stores.cache import EPOCH, Slot, user_generation, user_slot

Direction = Literal["followers", "following"]


async def _active_id(backends: Backends, username: str) -> int:
    """The id of the active user with this username (cached), or `ProfileNotFound`."""
    username = username.lower()
    cache = backends.stores.cache
    lookup = await cache.read(user_slot(username))
    if lookup.value is not None:
        return int(lookup.value)
    async with backends.read_sessions() as db:
        user_id = await db.scalar(
            select(User.id).where(User.username == username, User.is_active.is_(True))
        )
    if user_id is None:
        raise ProfileNotFound
    await cache.write(lookup, str(user_id).encode())
    return user_id


async def profiles_of(
    db: AsyncSession, user_ids: Sequence[int], viewer: Viewer | None
) -> list[Profile]:
    """The profiles of these (active) users, in this order, in five statements whatever their
    number: the users, then each count grouped, then whom of them the viewer follows."""
    if not user_ids:
        return []
    ids = list(dict.fromkeys(user_ids))
    users = {
        u.id: u
        for u in await db.scalars(select(User).where(User.id.in_(ids), User.is_active.is_(True)))
    }
    followers = await _counts(db, Follow.followee_id, Follow.followee_id.in_(ids))
    following = await _counts(db, Follow.follower_id, Follow.follower_id.in_(ids))
    posts = await _counts(db, Post.author_id, Post.author_id.in_(ids), Post.published.is_(True))
    followed: set[int] = set()
    if viewer is not None:
        followed = set(
            await db.scalars(
                select(Follow.followee_id).where(
                    Follow.follower_id == viewer.id, Follow.followee_id.in_(ids)
                )
            )
        )
    return [
        Profile(
            id=user.id,
            username=user.username,
            full_name=user.full_name,
            bio=user.bio,
            image=user.image,
            followers=followers.get(user.id, 0),
            following_count=following.get(user.id, 0),
            posts=posts.get(user.id, 0),
            following=user.id in followed,
        )
        for user_id in ids
        if (user := users.get(user_id)) is not None
    ]


async def _counts(db: AsyncSession, key: object, *conditions: object) -> dict[int, int]:
    rows = await db.execute(
        select(key, func.count()).where(*conditions).group_by(key)  # type: ignore[call-overload]
    )
    return {int(k): int(n) for k, n in rows}


def _viewer_part(viewer: Viewer | None) -> str:
    return "anon" if viewer is None else str(viewer.id)


async def read_json(backends: Backends, *, username: str, viewer: Viewer | None) -> bytes:
    user_id = await _active_id(backends, username)
    cache = backends.stores.cache
    slot = Slot((EPOCH, user_generation(user_id)), f"profile:{user_id}:{_viewer_part(viewer)}")
    lookup = await cache.read(slot)
    if lookup.value is not None:
        return lookup.value
    async with backends.read_sessions() as db:
        found = await profiles_of(db, [user_id], viewer)
    if not found:
        raise ProfileNotFound
    body = found[0].model_dump_json().encode()
    await cache.write(lookup, body)
    return body


async def read(backends: Backends, *, username: str, viewer: Viewer | None) -> Profile:
    """As `read_json`, as a model (for other API shapes built on this one)."""
    return Profile.model_validate_json(await read_json(backends, username=username, viewer=viewer))


async def set_following(
    db: AsyncSession, backends: Backends, *, viewer: Viewer, username: str, follow: bool
) -> Profile:
    """Follow or unfollow, idempotently; the profile as it is now."""
    target = await db.scalar(
        select(User.id).where(User.username == username.lower(), User.is_active.is_(True))
    )
    if target is None:
        raise ProfileNotFound
    if target == viewer.id:
        raise CannotFollowYourself
    if follow:
        changed = await insert_ignoring_conflicts(
            db,
            Follow,
            [{"follower_id": viewer.id, "followee_id": target, "created_at": utcnow()}],
        )
    else:
        result = await db.execute(
            delete(Follow).where(Follow.follower_id == viewer.id, Follow.followee_id == target)
        )
        changed = int(result.rowcount)  # type: ignore[attr-defined]
    await db.commit()
    if changed:
        await backends.stores.cache.bump(user_generation(viewer.id), user_generation(target))
    found = await profiles_of(db, [target], viewer)
    await db.commit()
    if not found:  # deactivated meanwhile
        raise ProfileNotFound
    return found[0]


async def list_json(
    backends: Backends,
    *,
    username: str,
    direction: Direction,
    query: CursorQuery,
    viewer: Viewer | None,
) -> bytes:
    """Who follows the user, or whom they follow, newest follow first, as a cursor page."""
    user_id = await _active_id(backends, username)
    scope = f"{direction}:{user_id}"
    at = paging.position(backends.cursors, scope, query.cursor)
    if direction == "followers":
        mine, theirs = Follow.followee_id, Follow.follower_id
    else:
        mine, theirs = Follow.follower_id, Follow.followee_id
    page_key = paging.cursor_key(query.limit, query.cursor)

    async def load_members() -> paging.Members:
        stmt = (
            select(theirs, Follow.created_at)
            .where(mine == user_id)
            .order_by(Follow.created_at.desc(), theirs.desc())
            .limit(query.limit + 1)
        )
        if (condition := paging.after(at, Follow.created_at, theirs, descending=True)) is not None:
            stmt = stmt.where(condition)
        async with backends.read_sessions() as db:
            rows = [(int(i), at_) for i, at_ in (await db.execute(stmt)).all()]
        return paging.members(backends.cursors, scope, rows, query.limit)

    def rendered(members: paging.Members) -> Slot:
        generations = [user_generation(i) for i in members.ids]
        if viewer is not None:
            generations.append(user_generation(viewer.id))  # whom the viewer follows
        name = f"{direction}-page:{user_id}:{page_key}:{_viewer_part(viewer)}"
        return Slot((EPOCH, user_generation(user_id), *generations), name)

    async def render(members: paging.Members) -> bytes:
        async with backends.read_sessions() as db:
            items = await profiles_of(db, members.ids, viewer)
        page = CursorPage[Profile](items=items, next_cursor=members.next_cursor)
        return page.model_dump_json().encode()

    return await paging.cached_page(
        backends.stores.cache,
        Slot((EPOCH, user_generation(user_id)), f"{direction}:{user_id}:{page_key}"),
        load_members,
        rendered,
        render,
    )


async def forget(db: AsyncSession, user_id: int) -> None:
    """A user deactivated or deleted: their follows end, both ways, and their comments go (as
    tombstones where others replied). In the caller's transaction; the caller commits and
    outdates every cached answer (the user's name was on them)."""
    await db.execute(
        delete(Follow).where((Follow.follower_id == user_id) | (Follow.followee_id == user_id))
    )
    await comments.forget_author(db, user_id)
