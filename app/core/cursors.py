"""Opaque, tamper-proof cursors for keyset pagination.

A cursor carries the sort key and id of the last item of a page, and the list it belongs to,
as compact JSON in URL-safe base64, followed by an HMAC of it: a client can neither read more
into it than a position nor forge one. The key is derived from the token signing key, so
nothing new needs configuring, and a cursor can never be mistaken for a token.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
from datetime import datetime

from app.config import Settings

CURSOR_KEY_CONTEXT = b"inkwell cursor v1"
_SIGNATURE_BYTES = 16

Position = tuple[datetime, int]
# A sort key a cursor can carry: a time (as ISO 8601 text), a number or text.
KeyValue = str | int | float | None


class BadCursor(ValueError):
    """Not a cursor this server made for this list."""


class Cursors:
    def __init__(self, key: bytes) -> None:
        self._key = key

    @classmethod
    def from_settings(cls, settings: Settings) -> Cursors:
        secret = settings.jwt_signing_key().encode()
        return cls(hmac.new(secret, CURSOR_KEY_CONTEXT, hashlib.sha256).digest())

    def _sign(self, payload: bytes) -> bytes:
        return hmac.new(self._key, payload, hashlib.sha256).digest()[:_SIGNATURE_BYTES]

    def encode(self, scope: str, position: Position) -> str:
        """A cursor for the list `scope` (e.g. `feed:42`) after the item at `position`."""
        at, item_id = position
        return self.encode_key(scope, at.isoformat(), item_id)

    def decode(self, scope: str, cursor: str) -> Position:
        """The position a cursor of `scope` points after; `BadCursor` for anything else."""
        at, item_id = self.decode_key(scope, cursor)
        if not isinstance(at, str):
            raise BadCursor
        try:
            when = datetime.fromisoformat(at)
        except ValueError:
            raise BadCursor from None
        if when.tzinfo is None:
            raise BadCursor
        return when, item_id

    def encode_key(self, scope: str, key: KeyValue, item_id: int) -> str:
        """A cursor for the list `scope` after the item with this sort key and id."""
        payload = json.dumps([scope, key, item_id], separators=(",", ":")).encode()
        return _b64(payload) + "." + _b64(self._sign(payload))

    def decode_key(self, scope: str, cursor: str) -> tuple[KeyValue, int]:
        """The sort key and id a cursor of `scope` points after; `BadCursor` for anything
        else (another list's cursor, a changed or made-up one)."""
        try:
            payload_part, signature_part = cursor.split(".")
            payload, signature = _unb64(payload_part), _unb64(signature_part)
        except (ValueError, binascii.Error):
            raise BadCursor from None
        if not hmac.compare_digest(signature, self._sign(payload)):
            raise BadCursor
        try:
            their_scope, key, item_id = json.loads(payload)
        except (ValueError, TypeError):
            raise BadCursor from None
        if their_scope != scope or not isinstance(item_id, int):
            raise BadCursor
        if key is not None and not isinstance(key, str | int | float):
            raise BadCursor
        return key, item_id


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    """Decoded, in its one canonical spelling only (base64 leaves spare bits a forger could
    set): any other spelling of the same bytes is not a cursor this server wrote."""
    if not text.isascii():
        raise ValueError("not base64")
    data = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    if _b64(data) != text:
        raise ValueError("not canonical base64")
    return data
