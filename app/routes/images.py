from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Request, Response, status

from app.database.types import MAX_ID
from app.dependencies import (
    BackendsDep,
    CurrentPrincipal,
    DbSession,
    OwnedPost,
    VisiblePost,
)
from app.schemas.common import problem_responses
from app.schemas.image import ImageOut
from app.services import images
from app.web.uploads import receive_file

router = APIRouter(prefix="/api/posts/{post_id}/images", tags=["images"])

ImageId = Annotated[int, Path(ge=1, le=MAX_ID, description="The image's id")]

# What the file may be, told by its bytes (anything else is 415).
IMAGE_TYPES = ("image/jpeg", "image/png", "image/webp", "image/gif")

_UPLOAD_BODY = {
    "required": True,
    "content": {
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "required": ["file"],
                "properties": {
                    "file": {"type": "string", "format": "binary"},
                    "alt": {"type": "string", "maxLength": 300, "examples": ["A cup of tea"]},
                },
            },
            "encoding": {"file": {"contentType": ", ".join(IMAGE_TYPES)}},
            "example": {"alt": "A cup of tea"},
        }
    },
}


@router.post(
    "",
    operation_id="images-upload",
    summary="Upload an image",
    description="Multipart `file` (JPEG, PNG, WebP or GIF, told by its bytes; at most "
    "`MAX_UPLOAD_BYTES`, 10 MiB by default, and 40 megapixels) and an optional `alt` text. "
    "Answers 202 at once with the image `pending` and its `task_id`; a worker then writes the "
    "cleaned original and the `large`, `medium` and `thumb` WebP variants.",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=ImageOut,
    responses=problem_responses(401, 403, 404, 409, 413, 415, 422),
    openapi_extra={"requestBody": _UPLOAD_BODY},
)
async def upload_image(
    post: OwnedPost,
    caller: CurrentPrincipal,
    request: Request,
    response: Response,
    db: DbSession,
    backends: BackendsDep,
) -> ImageOut:
    settings = backends.settings
    await images.ensure_room(db, backends, post=post)  # before the body streams in
    received = await receive_file(
        request,
        settings.uploads_path,
        settings.max_upload_bytes,
        max_parts=settings.max_upload_parts,
    )
    image = await images.upload(
        db,
        backends,
        post=post,
        user_id=caller.id,
        file=received.path,
        size=received.size,
        head=received.head,
        alt=received.fields.get("alt", ""),
    )
    response.headers["Location"] = f"/api/posts/{post.id}/images/{image.id}"
    return image


@router.get(
    "/{image_id}",
    operation_id="images-read",
    summary="Read an image",
    description="Its status (`pending`, `ready`, `failed`) and, once ready, its variants.",
    response_model=ImageOut,
    responses=problem_responses(401, 404, 422),
)
async def read_image(
    post: VisiblePost, image_id: ImageId, db: DbSession, backends: BackendsDep
) -> ImageOut:
    return await images.get_out(db, backends, post=post, image_id=image_id)


@router.delete(
    "/{image_id}",
    operation_id="images-delete",
    summary="Delete an image",
    description="Removes the image and its files. Only the post's author or an administrator.",
    status_code=status.HTTP_204_NO_CONTENT,
    responses=problem_responses(401, 403, 404, 422),
)
async def delete_image(
    post: OwnedPost, image_id: ImageId, db: DbSession, backends: BackendsDep
) -> Response:
    await images.delete(db, backends, await images.get(db, post=post, image_id=image_id))
    return Response(status_code=status.HTTP_204_NO_CONTENT)
