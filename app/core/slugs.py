"""URL slugs: a post's title in lower-case ASCII words joined by `-`."""

from __future__ import annotations

import re
import unicodedata

SLUG_BASE_LENGTH = 80  # leaves room in the 100-character column for a suffix
_NOT_SLUG = re.compile(r"[^a-z0-9]+")
# Slugs a post never gets as they are (a suffix is added): `/conduit/api/articles/feed` is the
# RealWorld feed, not an article.
RESERVED = frozenset({"feed"})


def slug_base(title: str) -> str:
    """`"Hello, Wörld!"` -> `"hello-world"`; a title with no letters or digits -> `"post"`."""
    ascii_text = unicodedata.normalize("NFKD", title).encode("ascii", "ignore").decode()
    slug = _NOT_SLUG.sub("-", ascii_text.lower()).strip("-")
    return slug[:SLUG_BASE_LENGTH].rstrip("-") or "post"


def with_suffix(base: str, n: int) -> str:
    return f"{base}-{n}"
