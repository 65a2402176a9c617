"""The processed images' files, mounted at MEDIA_URL (`/media` by default). Not part of the API's
document: URLs come from ImageOut and PostOut, never built by clients."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import FileResponse

from app.dependencies import BackendsDep
from app.services import media

router = APIRouter(include_in_schema=False)


@router.api_route("/images/{key}/{filename}", methods=["GET", "HEAD"])
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
        headers={"Cache-Control": found.cache_control, **media.NOSNIFF},
    )


@router.api_route("/{path:path}", methods=["GET", "HEAD"])
async def no_media_file(path: str) -> None:
    """Anything else under MEDIA_URL (directories, other names): 404 like a missing file."""
    raise media.MediaNotFound
