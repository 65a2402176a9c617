from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel


class TaskOut(BaseModel):
    id: str
    name: str
    state: Literal["PENDING", "STARTED", "RETRY", "SUCCESS", "FAILURE"]
    result: dict[str, Any] | None
