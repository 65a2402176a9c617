from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel


class VariantOut(BaseModel):
    url: str
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
