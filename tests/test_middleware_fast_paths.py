"""The middleware's per-request shortcuts keep their guarantees (both modes, no server needed):
a request with no body skips the body limit only where HTTP/1.x framing proves there is no
body; under HTTP/2 a body without Content-Length is still counted and refused past the limit.
"""

from __future__ import annotations

import pytest
from starlette.types import Message, Receive, Scope, Send

from app.web.middleware import BodyLimitMiddleware

LIMIT = 100


async def echo_length(scope: Scope, receive: Receive, send: Send) -> None:
    """An app that reads the whole body and answers with its length."""
    size = 0
    while True:
        message = await receive()
        size += len(message.get("body", b""))
        if not message.get("more_body", False):
            break
    body = str(size).encode()
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": body})


async def call(http_version: str, headers: list[tuple[bytes, bytes]], body: bytes) -> int:
    middleware = BodyLimitMiddleware(
        echo_length, max_body_bytes=LIMIT, max_upload_bytes=LIMIT, routes=[]
    )
    scope: Scope = {
        "type": "http",
        "http_version": http_version,
        "method": "POST",
        "path": "/api/posts",
        "root_path": "",
        "headers": headers,
        "query_string": b"",
    }
    chunks = [body[i : i + 50] for i in range(0, len(body), 50)] or [b""]
    sent: list[Message] = []

    async def receive() -> Message:
        chunk = chunks.pop(0)
        return {"type": "http.request", "body": chunk, "more_body": bool(chunks)}

    async def send(message: Message) -> None:
        sent.append(message)

    await middleware(scope, receive, send)
    status: int = next(m["status"] for m in sent if m["type"] == "http.response.start")
    return status


@pytest.mark.parametrize("version", ["2", "3"])
async def test_an_http2_body_without_a_length_is_still_bounded(version: str) -> None:
    assert await call(version, [], b"x" * (LIMIT + 1)) == 413
    assert await call(version, [], b"x" * LIMIT) == 200


async def test_an_http1_request_without_framing_headers_passes_untouched() -> None:
    assert await call("1.1", [], b"") == 200


@pytest.mark.parametrize(
    "headers",
    [
        [(b"transfer-encoding", b"chunked")],
        [(b"content-length", b"abc")],
        [(b"content-length", str(LIMIT + 1).encode())],
    ],
)
async def test_an_http1_body_announced_any_way_is_bounded(
    headers: list[tuple[bytes, bytes]],
) -> None:
    assert await call("1.1", headers, b"x" * (LIMIT + 1)) == 413
