"""The processed images' files, served at MEDIA_URL (`/media` by default). Not part of the API's
document: their URLs come from ImageOut and PostOut, never built by clients."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import FileResponse

from app.dependencies import BackendsDep
from app.errors import MediaNotFound
from app.services import media

HTTP_METHODS = ["GET", "HEAD"]


def build_router(media_url: str) -> APIRouter:
    """The routes under MEDIA_URL, a setting: their templates carry it, as metrics expect."""
    router = APIRouter(prefix=media_url.rstrip("/"), include_in_schema=False)
    router.add_api_route("/images/{key}/{filename}", media_file, methods=HTTP_METHODS)
    router.add_api_route("/{path:path}", no_media_file, methods=HTTP_METHODS)
    return router


async def media_file(
    key: str,
    filename: str,
    backends: BackendsDep,
    expires: str | None = None,
    sig: str | None = None,
) -> FileResponse:
    found = await media.open_file(
        backends, key=key, filename=filename, expires=expires, signature=sig
    )
    return FileResponse(
        found.path,
        stat_result=found.stat,
        media_type=found.content_type,
        headers={"Cache-Control": found.cache_control},
    )


async def no_media_file(path: str) -> None:
    """Anything else under MEDIA_URL (directories, other names): 404 like a missing file."""
    raise MediaNotFound
