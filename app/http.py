"""HTTP details shared by routes: conditional GETs."""

from __future__ import annotations

import hashlib

from fastapi import Response


def conditional_json(body: bytes, if_none_match: str | None) -> Response:
    """A JSON body with a strong ETag; 304 when the client already has this version."""
    etag = '"' + hashlib.blake2b(body, digest_size=16).hexdigest() + '"'
    headers = {"ETag": etag, "Cache-Control": "private, no-cache", "Vary": "Authorization"}
    if if_none_match and _matches(if_none_match, etag):
        return Response(status_code=304, headers=headers)
    return Response(body, media_type="application/json", headers=headers)


def _matches(if_none_match: str, etag: str) -> bool:
    candidates = {c.strip().removeprefix("W/") for c in if_none_match.split(",")}
    return "*" in candidates or etag in candidates
