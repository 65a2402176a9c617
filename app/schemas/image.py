from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, Field


class VariantOut(BaseModel):
    url: str = Field(
        description="For a published post, a public URL, cacheable for ever. For a draft, a "
        "signed URL (`?expires=…&sig=…`) that works for a limited time, at least "
        "`MEDIA_SIGNED_URL_SECONDS` (15 minutes by default): read the post or image again "
        "for a fresh one. Without a valid signature a draft's file is 404."
    )
    width: int
    height: int
    bytes: int


class ImageOut(BaseModel):
    id: int
    post_id: int
    status: Literal["pending", "ready", "failed"]
    alt: str
    format: str
    width: int
    height: int
    bytes: int
    variants: dict[str, VariantOut]
    failure_reason: str | None
    task_id: str
    created_at: datetime
