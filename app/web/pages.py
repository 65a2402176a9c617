"""The two HTML pages the links in e-mails open (`/verify-email`, `/reset-password`): plain
forms, no script, no external asset. Every value is escaped, and the headers keep the token in
the page's URL to the page: no referrer, no cache, a Content-Security-Policy that allows only
the page's own inline style (by its hash) and forms posting back to this origin."""

from __future__ import annotations

import base64
import hashlib
import re
from functools import cache
from html import escape
from pathlib import Path
from string import Template

from fastapi.responses import HTMLResponse

TEMPLATES = Path(__file__).resolve().parent.parent / "templates" / "pages"


@cache
def _template(name: str) -> Template:
    return Template((TEMPLATES / f"{name}.html").read_text())


_LAYOUT = _template("layout")
_STYLE = re.search(r"<style>(.*?)</style>", _LAYOUT.template, re.DOTALL)
assert _STYLE is not None, "the layout has its style inline"
STYLE_HASH = base64.b64encode(hashlib.sha256(_STYLE.group(1).encode()).digest()).decode()

CONTENT_SECURITY_POLICY = (
    f"default-src 'none'; style-src 'sha256-{STYLE_HASH}'; form-action 'self'; "
    "base-uri 'none'; frame-ancestors 'none'"
)
# X-Content-Type-Options: RequestIdMiddleware, on every response.
PAGE_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "Cache-Control": "no-store",
    "Pragma": "no-cache",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "X-Robots-Tag": "noindex",
}


def page(
    title: str,
    template: str,
    *,
    status: int = 200,
    headers: dict[str, str] | None = None,
    raw: dict[str, str] | None = None,
    **values: str | int,
) -> HTMLResponse:
    """`templates/pages/<template>.html` in the layout; `values` are escaped, `raw` are HTML
    this module built."""
    content = _template(template).substitute(
        {k: escape(str(v)) for k, v in values.items()} | (raw or {})
    )
    html = _LAYOUT.substitute(title=escape(title), content=content)
    return HTMLResponse(html, status_code=status, headers={**(headers or {}), **PAGE_HEADERS})


def message(
    heading: str, text: str, *, status: int = 200, headers: dict[str, str] | None = None
) -> HTMLResponse:
    return page(heading, "message", status=status, headers=headers, heading=heading, message=text)


def error_list(errors: list[str]) -> str:
    if not errors:
        return ""
    items = "".join(f"<li>{escape(e)}</li>" for e in errors)
    return f'<ul class="error" role="alert">{items}</ul>'
