"""Schemathesis hooks for tests/test_schemathesis.py (`hooks` in tests/schemathesis.toml).

Every generated request is sent with the access token of a live account. The run deletes
accounts (`DELETE /api/users/me`) and ends sessions, so a token does not stay valid: a fresh
account is registered at the start and again whenever a request answers 401 (Schemathesis then
replays that request with the new token).

E-mail addresses are generated as Inkwell takes them: JSON Schema's `email` format allows
special-use domains (`a@b.test`, `a@b.local`) that cannot receive mail, and Inkwell refuses
those (422), as a sign-up form should. Uploaded files are small real images of the types the
upload's `encoding` names (other bytes are 415), so that uploads reach the image and its task."""

from __future__ import annotations

import io
import uuid
from typing import Any

import httpx
import schemathesis
from hypothesis import strategies as st
from PIL import Image
from schemathesis import Case
from schemathesis.auths import AuthContext

from app.core import password_policy

PASSWORD = "fuzzing is believing, 42 times"
TIMEOUT_S = 10.0


schemathesis.openapi.format(
    "email", st.from_regex(r"\A[a-z0-9][a-z0-9_-]{0,30}@[a-z0-9]{1,20}\.(com|org|net|io)\Z")
)


# A new password is any 8-128 characters but the most common ones (those are a 422 with a
# helpful message, a rule JSON Schema cannot state); the schema marks them `format: password`.
schemathesis.openapi.format(
    "password",
    st.from_regex(r"\A[A-Za-z0-9 .,!?-]{8,64}\Z").filter(
        lambda password: not password_policy.is_common(password)
    ),
)


def image(width: int, height: int, colour: tuple[int, int, int], kind: str) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (width, height), colour).save(out, format=kind)
    return out.getvalue()


_SIZES = st.integers(min_value=1, max_value=48)
_COLOURS = st.tuples(*[st.integers(min_value=0, max_value=255)] * 3)
for _media_type, _kind in (
    ("image/jpeg", "JPEG"),
    ("image/png", "PNG"),
    ("image/webp", "WEBP"),
    ("image/gif", "GIF"),
):
    schemathesis.openapi.media_type(
        _media_type, st.builds(image, _SIZES, _SIZES, _COLOURS, st.just(_kind))
    )


@schemathesis.auth(retry_on=[401])
class FreshAccount:
    """A newly registered user's access token."""

    def get(self, case: Case[Any], context: AuthContext) -> str:
        name = f"fuzz_{uuid.uuid4().hex[:12]}"
        base_url = context.operation.schema.get_base_url().rstrip("/")
        response = httpx.post(
            f"{base_url}/api/users",
            json={"username": name, "email": f"{name}@example.com", "password": PASSWORD},
            timeout=TIMEOUT_S,
        )
        response.raise_for_status()
        token: str = response.json()["tokens"]["access_token"]
        return token

    def set(self, case: Case[Any], data: str, context: AuthContext) -> None:
        case.headers["Authorization"] = f"Bearer {data}"


POSTS_LIST = ("GET", "/api/posts")
CURSOR_MAX_LENGTH = 512


@schemathesis.hook
def map_query(ctx: schemathesis.HookContext, query: dict[str, Any] | None) -> Any:
    """`GET /api/posts` takes only the cursors it gave out (any other is a 422 no schema can
    state): a generated cursor becomes the first page's (empty), or goes when `offset` is
    given too (the two do not mix). `sort=relevance` needs a search: one is added."""
    operation = ctx.operation
    if not query or operation is None or (operation.method.upper(), operation.path) != POSTS_LIST:
        return query
    cursor = query.get("cursor")
    if isinstance(cursor, str) and len(cursor) <= CURSOR_MAX_LENGTH and "\x00" not in cursor:
        if "offset" in query:
            del query["cursor"]
        else:
            query["cursor"] = ""
    search = query.get("q")
    if query.get("sort") == "relevance" and not (isinstance(search, str) and search.strip()):
        query["q"] = "fuzz"
    return query
