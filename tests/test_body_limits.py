"""Every request body is bounded before it is read: `MAX_BODY_BYTES` for JSON and forms, the
upload limits (every part counted, a part count, bounded fields and part headers) for uploads,
413 problem+json either way, with or without a Content-Length. And every response, whoever
answers it, carries `X-Content-Type-Options: nosniff`."""

from __future__ import annotations

import http.client
import socket
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from asgi_lifespan import LifespanManager
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from app.config import Settings
from app.main import create_app
from app.models import AuthSession, User
from app.models import Image as ImageRow
from app.web.uploads import FORM_OVERHEAD_BYTES, MAX_FIELD_BYTES, MAX_PART_HEADER_LINE_BYTES
from tests import images
from tests.conftest import settings_env, settings_like
from tests.factories import PASSWORD, Account, create_post, register
from tests.live_server import LiveServer, live_server
from tests.problems import PROBLEM_JSON, assert_problem

MIB = 1024 * 1024
SIXTY_MIB = 60 * MIB
CHUNK_BYTES = 64 * 1024
BOUNDARY = "inkwellboundary7d3f"
MULTIPART = {"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"}
JSON = {"Content-Type": "application/json"}
FORM = {"Content-Type": "application/x-www-form-urlencoded"}
NOSNIFF = "nosniff"
# What the API process may grow by while it refuses a 60 MiB body: far less than the body.
MEMORY_ALLOWANCE_BYTES = 16 * MIB


class CountingBody:
    """`size` bytes (`prefix`, filler, `suffix`) sent as an async stream, counting how many the
    server pulled before it answered."""

    def __init__(self, size: int, prefix: bytes = b"", suffix: bytes = b"") -> None:
        self.size = size
        self.prefix = prefix
        self.suffix = suffix
        self.sent = 0

    def chunks(self) -> Iterator[bytes]:
        yield self.prefix
        filler = self.size - len(self.prefix) - len(self.suffix)
        chunk = b"a" * CHUNK_BYTES
        while filler > 0:
            yield chunk[: min(CHUNK_BYTES, filler)]
            filler -= CHUNK_BYTES
        yield self.suffix

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for chunk in self.chunks():
            self.sent += len(chunk)
            yield chunk


def json_login_body(size: int) -> CountingBody:
    """A login whose username makes the body `size` bytes long."""
    return CountingBody(size, b'{"username": "', b'", "password": "x"}')


def send_headers(body: CountingBody, declared: bool) -> dict[str, str]:
    """With `declared`, the body's length is announced; otherwise it is sent chunked."""
    return {"Content-Length": str(body.size)} if declared else {}


SENT_AS = pytest.mark.parametrize("declared", [True, False], ids=["content-length", "chunked"])


async def count(db: AsyncSession, model: type[Any]) -> int:
    await db.rollback()  # a fresh transaction: see what the API committed since
    return await db.scalar(select(func.count()).select_from(model)) or 0


@pytest.fixture
async def author(client: httpx.AsyncClient) -> Account:
    return await register(client, username="author")


@pytest.fixture
async def post(client: httpx.AsyncClient, author: Account) -> dict[str, Any]:
    return await create_post(client, author)


# -- JSON and form bodies ----------------------------------------------------------------------


@SENT_AS
async def test_sixty_mib_login_is_413_without_reading_the_body(
    client: httpx.AsyncClient, db: AsyncSession, settings: Settings, declared: bool
) -> None:
    body = json_login_body(SIXTY_MIB)

    response = await client.post(
        "/api/token", content=body, headers={**JSON, **send_headers(body, declared)}
    )

    assert_problem(response, 413, "body_too_large")
    if declared:
        assert body.sent == 0  # answered on the headers alone
    else:
        assert body.sent <= settings.max_body_bytes + 2 * CHUNK_BYTES
    assert await count(db, AuthSession) == 0


@SENT_AS
@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/api/users"),
        ("POST", "/api/token/"),
        ("POST", "/api/token/refresh"),
        ("POST", "/api/password-reset"),
        ("PATCH", "/api/users/me"),
        ("POST", "/api/posts"),
        ("PUT", "/api/posts/1"),
        ("GET", "/api/posts"),  # a body nobody asked for is bounded too
    ],
)
async def test_every_body_over_the_limit_is_413(
    client: httpx.AsyncClient,
    db: AsyncSession,
    settings: Settings,
    author: Account,
    method: str,
    path: str,
    declared: bool,
) -> None:
    body = CountingBody(2 * settings.max_body_bytes, b'{"title": "', b'"}')

    response = await client.request(
        method,
        path,
        content=body,
        headers={**JSON, **author.headers, **send_headers(body, declared)},
    )

    if method == "GET" and not declared:
        assert response.status_code == 200  # the route never reads it
        assert body.sent <= CHUNK_BYTES
        return
    assert_problem(response, 413, "body_too_large")
    assert body.sent <= settings.max_body_bytes + 2 * CHUNK_BYTES
    assert await count(db, User) == 1


@SENT_AS
async def test_oauth2_form_login_over_the_limit_is_413(
    client: httpx.AsyncClient, db: AsyncSession, settings: Settings, declared: bool
) -> None:
    body = CountingBody(
        2 * settings.max_body_bytes, b"grant_type=password&username=", b"&password=x"
    )

    response = await client.post(
        "/api/token", content=body, headers={**FORM, **send_headers(body, declared)}
    )

    assert_problem(response, 413, "body_too_large")
    assert body.sent <= settings.max_body_bytes + 2 * CHUNK_BYTES
    assert await count(db, AuthSession) == 0


@SENT_AS
async def test_a_body_of_exactly_the_limit_is_read_and_one_byte_more_is_not(
    client: httpx.AsyncClient, settings: Settings, declared: bool
) -> None:
    await register(client, username="alice")
    login = b'{"username": "alice", "password": "%s"}' % PASSWORD.encode()
    padded = login + b" " * (settings.max_body_bytes - len(login))  # JSON allows the spaces
    at_limit = CountingBody(len(padded), padded)
    over_limit = CountingBody(len(padded) + 1, padded + b" ")

    accepted = await client.post(
        "/api/token", content=at_limit, headers={**JSON, **send_headers(at_limit, declared)}
    )
    refused = await client.post(
        "/api/token", content=over_limit, headers={**JSON, **send_headers(over_limit, declared)}
    )

    assert accepted.status_code == 200, accepted.text
    assert accepted.json()["token_type"] == "bearer"
    assert_problem(refused, 413, "body_too_large")


async def test_the_limit_is_a_setting(settings: Settings) -> None:
    application = create_app(settings_like(settings, max_body_bytes=100), configure_logs=False)
    transport = httpx.ASGITransport(app=application)
    async with (
        LifespanManager(application),
        httpx.AsyncClient(transport=transport, base_url="http://t") as client,
    ):
        small = await client.post("/api/token", json={"username": "a", "password": "b"})
        large = await client.post("/api/token", json={"username": "a" * 100, "password": "b"})

    assert small.status_code != 413
    body = assert_problem(large, 413, "body_too_large")
    assert "100 bytes" in body["detail"]


@SENT_AS
async def test_a_browser_can_read_the_413(settings: Settings, declared: bool) -> None:
    origin = "https://app.example.com"
    application = create_app(settings_like(settings, cors_origins=[origin]), configure_logs=False)
    body = json_login_body(2 * MIB)
    transport = httpx.ASGITransport(app=application)
    async with (
        LifespanManager(application),
        httpx.AsyncClient(transport=transport, base_url="http://t") as client,
    ):
        response = await client.post(
            "/api/token",
            content=body,
            headers={**JSON, "Origin": origin, **send_headers(body, declared)},
        )

    assert_problem(response, 413, "body_too_large")
    assert response.headers["Access-Control-Allow-Origin"] == origin


# -- uploads: every part counts ----------------------------------------------------------------


def part(name: str, content: bytes, *, filename: str | None = None, pad: int = 0) -> bytes:
    """One part of a multipart/form-data body; `pad` adds a header of that many bytes."""
    disposition = f'form-data; name="{name}"'
    headers = f"Content-Disposition: {disposition}\r\n"
    if filename is not None:
        headers = (
            f'Content-Disposition: {disposition}; filename="{filename}"\r\n'
            "Content-Type: image/png\r\n"
        )
    if pad:
        headers += f"X-Pad: {'p' * pad}\r\n"
    return f"--{BOUNDARY}\r\n{headers}\r\n".encode() + content + b"\r\n"


def form(*parts: bytes) -> bytes:
    return b"".join(parts) + f"--{BOUNDARY}--\r\n".encode()


async def post_form(
    client: httpx.AsyncClient, post_id: int, author: Account, body: bytes, declared: bool
) -> httpx.Response:
    sent = CountingBody(len(body), body)
    return await client.post(
        f"/api/posts/{post_id}/images",
        content=sent,
        headers={**MULTIPART, **author.headers, **send_headers(sent, declared)},
    )


@pytest.fixture
def nothing_stored(db: AsyncSession, settings: Settings) -> Callable[[], Any]:
    """Call before the request; await the result after it to check no row and no file stayed."""
    uploads = images.files_under(settings.uploads_path)

    async def check() -> None:
        assert await count(db, ImageRow) == 0
        assert images.files_under(settings.uploads_path) == uploads

    return check


@SENT_AS
async def test_two_thousand_empty_parts_are_413(
    client: httpx.AsyncClient,
    author: Account,
    post: dict[str, Any],
    nothing_stored: Callable[[], Any],
    declared: bool,
) -> None:
    empty_parts = [part(f"field{i}", b"") for i in range(2000)]
    body = form(*empty_parts, part("file", images.tiny_png(), filename="p.png"))

    response = await post_form(client, post["id"], author, body, declared)

    problem = assert_problem(response, 413, "payload_too_large")
    assert "parts" in problem["detail"]
    await nothing_stored()


@SENT_AS
async def test_a_text_field_over_its_bound_is_413(
    client: httpx.AsyncClient,
    author: Account,
    post: dict[str, Any],
    nothing_stored: Callable[[], Any],
    declared: bool,
) -> None:
    body = form(
        part("alt", b"x" * (MAX_FIELD_BYTES + 1)),
        part("file", images.tiny_png(), filename="p.png"),
    )

    response = await post_form(client, post["id"], author, body, declared)

    problem = assert_problem(response, 413, "payload_too_large")
    assert "alt" in problem["detail"]
    await nothing_stored()


@SENT_AS
async def test_part_headers_over_their_bound_are_refused(
    client: httpx.AsyncClient,
    author: Account,
    post: dict[str, Any],
    nothing_stored: Callable[[], Any],
    declared: bool,
) -> None:
    body = form(part("file", images.tiny_png(), filename="p.png", pad=MAX_PART_HEADER_LINE_BYTES))

    response = await post_form(client, post["id"], author, body, declared)

    assert_problem(response, 422, "invalid_upload")
    await nothing_stored()


@SENT_AS
async def test_text_fields_and_part_headers_count_toward_the_upload_limit(
    client: httpx.AsyncClient,
    settings: Settings,
    author: Account,
    post: dict[str, Any],
    nothing_stored: Callable[[], Any],
    declared: bool,
) -> None:
    # A file of exactly the limit is accepted alone; nine fields, each within its own bounds,
    # take the form past the limit's allowance.
    data = images.tiny_png()
    data += b"\0" * (settings.max_upload_bytes - len(data))
    field_bytes = MAX_FIELD_BYTES - 100
    fields = [
        part(f"note{i}", b"n" * field_bytes, pad=MAX_PART_HEADER_LINE_BYTES - 100) for i in range(9)
    ]
    assert sum(map(len, fields)) > FORM_OVERHEAD_BYTES
    body = form(*fields, part("file", data, filename="p.png"))

    response = await post_form(client, post["id"], author, body, declared)

    assert_problem(response, 413, "payload_too_large")
    await nothing_stored()


@SENT_AS
async def test_an_upload_over_the_limit_is_413_without_reading_the_body(
    client: httpx.AsyncClient,
    settings: Settings,
    author: Account,
    post: dict[str, Any],
    nothing_stored: Callable[[], Any],
    declared: bool,
) -> None:
    head = part("file", images.tiny_png(), filename="p.png")[:-2]
    body = CountingBody(SIXTY_MIB, head, f"\r\n--{BOUNDARY}--\r\n".encode())

    response = await client.post(
        f"/api/posts/{post['id']}/images",
        content=body,
        headers={**MULTIPART, **author.headers, **send_headers(body, declared)},
    )

    assert_problem(response, 413, "payload_too_large")
    if declared:
        assert body.sent == 0
    else:
        assert body.sent <= settings.max_upload_bytes + FORM_OVERHEAD_BYTES + 2 * CHUNK_BYTES
    await nothing_stored()


@SENT_AS
async def test_a_normal_upload_with_alt_text_still_works(
    client: httpx.AsyncClient,
    db: AsyncSession,
    author: Account,
    post: dict[str, Any],
    declared: bool,
) -> None:
    body = form(
        part("alt", "A cup of tea ☕".encode()),
        part("file", images.jpeg((320, 200)), filename="tea.jpg"),
    )

    response = await post_form(client, post["id"], author, body, declared)

    assert response.status_code == 202, response.text
    assert response.json()["alt"] == "A cup of tea ☕"
    await db.rollback()
    stored = await db.scalar(select(ImageRow).where(ImageRow.post_id == post["id"]))
    assert stored is not None
    assert stored.alt == "A cup of tea ☕"
    image = await images.wait_until_processed(client, response.headers["Location"])
    assert image["status"] == "ready"


# -- the contract ------------------------------------------------------------------------------


async def test_every_operation_that_takes_a_body_documents_413(client: httpx.AsyncClient) -> None:
    schema = (await client.get("/openapi.json")).json()

    with_body = {
        (method, path): operation
        for path, operations in schema["paths"].items()
        for method, operation in operations.items()
        if "requestBody" in operation
    }

    assert ("post", "/api/token") in with_body
    assert ("post", "/api/posts/{post_id}/images") in with_body
    for (method, path), operation in with_body.items():
        documented = operation["responses"].get("413")
        assert documented is not None, f"{method.upper()} {path} does not document 413"
        assert list(documented["content"]) == [PROBLEM_JSON], (method, path)


# -- nosniff on every response -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("GET", "/health", 200),
        ("GET", "/health/ready", 200),
        ("GET", "/metrics", 200),
        ("GET", "/api/posts", 200),
        ("GET", "/api/tags", 200),
        ("GET", "/openapi.json", 200),
        ("GET", "/docs", 200),
        ("GET", "/redoc", 200),
        ("GET", "/api/users/me", 401),
        ("GET", "/api/posts/999999", 404),
        ("GET", "/no/such/route", 404),
        ("DELETE", "/health", 405),
        ("POST", "/api/token", 422),
        ("GET", "/media/no-such-file.png", 404),
    ],
)
async def test_every_response_says_nosniff(
    client: httpx.AsyncClient, method: str, path: str, status: int
) -> None:
    response = await client.request(method, path, json={} if method == "POST" else None)

    assert response.status_code == status, response.text
    assert response.headers["X-Content-Type-Options"] == NOSNIFF
    assert response.headers.get_list("X-Content-Type-Options") == [NOSNIFF]


# A served media file's nosniff: tests/test_media_access.py (assert_public, assert_private).


@SENT_AS
async def test_a_413_says_nosniff_and_carries_the_request_id(
    client: httpx.AsyncClient, declared: bool
) -> None:
    body = json_login_body(2 * MIB)

    response = await client.post(
        "/api/token",
        content=body,
        headers={**JSON, "X-Request-ID": "big-body-1", **send_headers(body, declared)},
    )

    assert response.status_code == 413
    assert response.headers["X-Content-Type-Options"] == NOSNIFF
    assert response.headers["X-Request-ID"] == "big-body-1"


async def test_a_500_says_nosniff(settings: Settings) -> None:
    application = create_app(settings, configure_logs=False)

    @application.get("/test-only/boom")
    async def boom() -> None:
        raise RuntimeError("boom")

    transport = httpx.ASGITransport(app=application, raise_app_exceptions=False)
    async with (
        LifespanManager(application),
        httpx.AsyncClient(transport=transport, base_url="http://t") as client,
    ):
        response = await client.get("/test-only/boom")

    assert_problem(response, 500, "internal_error")
    assert response.headers["X-Content-Type-Options"] == NOSNIFF


# -- a real server: memory stays flat ----------------------------------------------------------


@pytest.fixture(scope="module")
def server(settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    env = settings_env(settings) | {"RATE_LIMITS_ENABLED": "false"}
    log = tmp_path_factory.mktemp("body-limits") / "api.log"
    with live_server("body-limits", env, log) as api:
        yield api


def proc_status(pid: int, field: str) -> int:
    """A `/proc/<pid>/status` memory figure (VmRSS, VmHWM), in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no {field} in /proc/{pid}/status")


def reset_peak_memory(pid: int) -> None:
    """Makes VmHWM start again from the current resident size (Linux 4.0 and later)."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")


def raw_post(port: int, path: str, body: CountingBody, declared: bool) -> tuple[int, bytes]:
    """POSTs over a plain socket, sending all of `body` whatever the server answers meanwhile,
    and reads the answer."""
    framing = f"Content-Length: {body.size}" if declared else "Transfer-Encoding: chunked"
    head = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"{framing}\r\n\r\n"
    ).encode()
    with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
        answer: dict[str, Any] = {}

        def read() -> None:
            response = http.client.HTTPResponse(sock)
            response.begin()
            answer["status"], answer["body"] = response.status, response.read()

        reader = threading.Thread(target=read)
        reader.start()
        try:
            sock.sendall(head)
            for chunk in body.chunks():
                if chunk:
                    sock.sendall(chunk if declared else b"%x\r\n%s\r\n" % (len(chunk), chunk))
            if not declared:
                sock.sendall(b"0\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server may close once it answered
        reader.join(timeout=60)
    return answer["status"], answer["body"]


@SENT_AS
def test_a_sixty_mib_login_leaves_the_server_memory_flat(
    server: LiveServer, declared: bool
) -> None:
    pid = server.process.pid
    warm_up = json_login_body(1024)
    assert raw_post(server.port, "/api/token", warm_up, declared)[0] in (401, 422)
    time.sleep(0.2)
    before = proc_status(pid, "VmRSS")
    reset_peak_memory(pid)

    status, answer = raw_post(server.port, "/api/token", json_login_body(SIXTY_MIB), declared)

    peak = proc_status(pid, "VmHWM")
    assert status == 413, answer[:300]
    assert b"body_too_large" in answer
    assert peak - before < MEMORY_ALLOWANCE_BYTES, f"grew by {(peak - before) // MIB} MiB"
