"""A password-reset request (and a verification resend) answers before anything depends on
whether the account exists (or is verified): the answer is sent while the e-mail work is still
held back, and the work done before it — every SQL statement — is the same either way. A
structural check, not a stopwatch: nothing here depends on the machine's speed."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from app.models import EmailToken, TokenPurpose, User
from tests.conftest import QueryCounter
from tests.factories import Account, register

ANSWER_TIMEOUT_S = 30.0


class Answer:
    def __init__(self) -> None:
        self.status: int | None = None
        self.statements_before: list[str] = []
        self.sent = asyncio.Event()


async def call(
    app: FastAPI, path: str, body: dict[str, Any], headers: dict[str, str], queries: QueryCounter
) -> tuple[Answer, asyncio.Task[None]]:
    """POST `body` to `path` straight through ASGI; returns once the answer is fully sent,
    with the app call (and whatever it does after the answer) still running."""
    raw = json.dumps(body).encode()
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": [
            (b"host", b"test"),
            (b"content-type", b"application/json"),
            (b"content-length", str(len(raw)).encode()),
            *((k.lower().encode(), v.encode()) for k, v in headers.items()),
        ],
        "client": ("127.0.0.1", 50000),
        "server": ("test", 80),
        "state": {},
    }
    answer = Answer()
    received = False
    first = queries.count

    async def receive() -> dict[str, Any]:
        nonlocal received
        if not received:
            received = True
            return {"type": "http.request", "body": raw, "more_body": False}
        await asyncio.Event().wait()  # the client never disconnects
        raise AssertionError("unreachable")

    async def send(message: MutableMapping[str, Any]) -> None:
        if message["type"] == "http.response.start":
            answer.status = message["status"]
        elif message["type"] == "http.response.body" and not message.get("more_body"):
            answer.statements_before = queries.statements[first:]
            answer.sent.set()

    task = asyncio.create_task(app(scope, receive, send))
    sent = asyncio.create_task(answer.sent.wait())
    done, _ = await asyncio.wait(
        {task, sent}, timeout=ANSWER_TIMEOUT_S, return_when="FIRST_COMPLETED"
    )
    if task in done:
        task.result()  # raise what the app raised
    sent.cancel()
    assert answer.sent.is_set(), f"no answer to {path} while the e-mail work was held back"
    return answer, task


async def answered_before_the_e_mail_work(
    monkeypatch: pytest.MonkeyPatch,
    app: FastAPI,
    queries: QueryCounter,
    path: str,
    body: dict[str, Any],
    headers: dict[str, str],
) -> Answer:
    """The answer to one request, which must come while queueing an e-mail is held back; the
    work is then let through and finishes before this returns (so calls never overlap)."""
    release = asyncio.Event()
    outbox = app.state.backends.outbox
    dispatch: Callable[..., Awaitable[None]] = outbox.dispatch

    async def held_back(*args: Any, **kwargs: Any) -> None:
        await release.wait()
        await dispatch(*args, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(outbox, "dispatch", held_back)
        try:
            answer, work = await call(app, path, body, headers, queries)
        finally:
            release.set()
        await asyncio.wait_for(work, ANSWER_TIMEOUT_S)
    await app.state.backends.runner.drain()
    return answer


async def reset_tokens(db: AsyncSession, user_id: int) -> int:
    rows = await db.scalars(
        select(EmailToken.id).where(
            EmailToken.user_id == user_id, EmailToken.purpose == TokenPurpose.RESET_PASSWORD
        )
    )
    count = len(list(rows))
    await db.rollback()
    return count


async def test_reset_answers_the_same_before_looking_the_address_up(
    app: FastAPI,
    client: httpx.AsyncClient,
    db: AsyncSession,
    count_queries: QueryCounter,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    account = await register(client)
    await app.state.backends.runner.drain()  # the verification e-mail is out of the way
    known, unknown = [
        await answered_before_the_e_mail_work(
            monkeypatch, app, count_queries, "/api/password-reset", {"email": email}, {}
        )
        for email in (account.email, "nobody@example.com")
    ]
    assert known.status == unknown.status == 202
    assert known.statements_before == unknown.statements_before
    # The counter does see the app's statements (the work after the answers): equal lists above
    # are not merely two empty records.
    assert count_queries.count > len(known.statements_before)
    # The work did happen afterwards, for the real account only.
    assert await reset_tokens(db, account.id) == 1


async def test_resend_answers_the_same_whether_or_not_the_address_is_verified(
    app: FastAPI,
    client: httpx.AsyncClient,
    db: AsyncSession,
    count_queries: QueryCounter,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    unverified: Account = await register(client)
    verified: Account = await register(client)
    await db.execute(update(User).where(User.id == verified.id).values(is_verified=True))
    await db.commit()
    await app.state.backends.runner.drain()
    sends, skips = [
        await answered_before_the_e_mail_work(
            monkeypatch, app, count_queries, "/api/users/me/verify/resend", {}, account.headers
        )
        for account in (unverified, verified)
    ]
    assert sends.status == skips.status == 202
    assert sends.statements_before == skips.statements_before
    # The counter does see the app's statements (the work after the answers): equal lists above
    # are not merely two empty records.
    assert count_queries.count > len(sends.statements_before)
