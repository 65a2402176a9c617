"""What the Conduit routes share in their OpenAPI description."""

from __future__ import annotations

from typing import Any

from app.conduit.schemas import ErrorResponse

DESCRIPTIONS = {
    401: "Missing, invalid, expired or revoked token (`errors.token`)",
    403: "Not the owner",
    404: "Not found",
    409: "Taken (`errors.email`, `errors.username`)",
    422: "Invalid request: messages by field",
    429: "Too many requests: see `Retry-After`",
}


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses=` entries for RealWorld's error shape."""
    return {
        status: {"model": ErrorResponse, "description": DESCRIPTIONS.get(status, "Error")}
        for status in statuses
    }
