"""E-mail flows end to end, in both modes: a real SMTP server in the test process (aiosmtpd)
receives every message, sent by the in-process runner (embedded) or by the Celery worker
(services). Verification and password-reset links are read from the e-mails themselves."""

from __future__ import annotations

import asyncio
import email
import email.policy
import itertools
import re
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

import app.tasks.runner as task_runner
from app.config import Settings
from app.database.types import utcnow
from app.models import EmailToken, Task, TaskState, TokenPurpose, User
from tests.conftest import SERVICES, running_app, settings_like
from tests.factories import PASSWORD, Account, login, register
from tests.redis_server import free_port
from tests.services import SmtpServer, text_body

MAIL_TIMEOUT_S = 20.0
TOKEN = r"([A-Za-z0-9_\-]+)"
NEW_PASSWORD = "a brand new passphrase"
SETTLED_STATES = {TaskState.SUCCESS, TaskState.FAILURE}


# Helpers


async def mails_to(
    server: SmtpServer, to: str, count: int = 1, within: float = MAIL_TIMEOUT_S
) -> list[EmailMessage]:
    """Exactly the messages sent to `to` once `count` of them have arrived (waiting in a thread,
    so that in-process jobs keep running on the event loop)."""
    found = await asyncio.to_thread(server.wait_for, to, within, count)
    assert len(found) >= count, f"{len(found)} e-mail(s) to {to} within {within} s, not {count}"
    return found


def html_body(message: EmailMessage) -> str:
    part = message.get_body(preferencelist=("html",))
    assert part is not None, "the message has no HTML part"
    return str(part.get_content())


def link_token(settings: Settings, message: EmailMessage, page: str) -> str:
    """The token of the `{PUBLIC_URL}/<page>?token=...` link, found in both bodies."""
    pattern = re.compile(re.escape(f"{settings.public_url.rstrip('/')}/{page}?token=") + TOKEN)
    in_text = pattern.search(text_body(message))
    in_html = pattern.search(html_body(message))
    assert in_text is not None, f"no {page} link in the text body:\n{text_body(message)}"
    assert in_html is not None, f"no {page} link in the HTML body:\n{html_body(message)}"
    assert in_text.group(1) == in_html.group(1)
    return in_text.group(1)


def with_link(messages: list[EmailMessage], page: str) -> EmailMessage:
    """The one message linking to `page`: messages queued together may arrive in any order."""
    matching = [m for m in messages if f"/{page}?token=" in text_body(m)]
    assert len(matching) == 1, [m["Subject"] for m in messages]
    return matching[0]


async def email_tasks(app: FastAPI, user_id: int) -> list[Task]:
    """The user's send_email task rows, read in a session of their own (never a stale
    snapshot)."""
    session: AsyncSession
    async with app.state.session_factory() as session:
        rows = await session.scalars(
            select(Task)
            .where(Task.name == "send_email", Task.user_id == user_id)
            .order_by(Task.created_at)
        )
        return list(rows)


async def settle_emails(app: FastAPI, user_id: int, within: float = MAIL_TIMEOUT_S) -> None:
    """Wait until every e-mail job queued for the user has finished, in either mode."""
    await app.state.backends.runner.drain()
    deadline = time.monotonic() + within
    while True:
        states = [t.state for t in await email_tasks(app, user_id)]
        if all(s in SETTLED_STATES for s in states):
            return
        assert time.monotonic() < deadline, f"e-mail jobs still running: {states}"
        await asyncio.sleep(0.05)


async def wait_for_task_state(
    app: FastAPI, user_id: int, state: TaskState, within: float = MAIL_TIMEOUT_S
) -> Task:
    deadline = time.monotonic() + within
    while True:
        tasks = await email_tasks(app, user_id)
        if tasks and tasks[-1].state == state:
            return tasks[-1]
        seen = [t.state for t in tasks]
        assert time.monotonic() < deadline, f"no send_email task in {state}; saw {seen}"
        await asyncio.sleep(0.02)


async def registered_with_link(
    client: httpx.AsyncClient, settings: Settings, smtp: SmtpServer, **fields: Any
) -> tuple[Account, str]:
    account = await register(client, **fields)
    (message,) = await mails_to(smtp, account.email)
    return account, link_token(settings, message, "verify-email")


async def stored_user(db: AsyncSession, user_id: int) -> User:
    user = await db.scalar(
        select(User).where(User.id == user_id).execution_options(populate_existing=True)
    )
    assert user is not None
    return user


@asynccontextmanager
async def extra_app(settings: Settings, **overrides: Any) -> AsyncIterator[httpx.AsyncClient]:
    """Another app on the run's database (and Redis, broker and SMTP server, unless
    overridden), started and stopped with its lifespan; stopping drains its in-process jobs."""
    async with running_app(settings_like(settings, **overrides), shutdown_timeout=60) as (
        _,
        client,
    ):
        yield client


# Verification


async def test_registration_mails_a_verification_link_in_text_and_html(
    client: httpx.AsyncClient,
    app: FastAPI,
    settings: Settings,
    smtp_server: SmtpServer,
    db: AsyncSession,
) -> None:
    account = await register(client)
    assert account.body["user"]["is_verified"] is False

    (message,) = await mails_to(smtp_server, account.email)

    assert message["From"] == settings.smtp_from
    assert message["To"] == account.email
    assert message["Subject"]
    assert message.is_multipart()
    assert message.get_body(preferencelist=("plain",)) is not None
    assert message.get_body(preferencelist=("html",)) is not None
    token = link_token(settings, message, "verify-email")
    assert account.username in text_body(message)
    stored = await db.scalar(
        select(EmailToken).where(
            EmailToken.user_id == account.id, EmailToken.purpose == TokenPurpose.VERIFY_EMAIL
        )
    )
    assert stored is not None
    assert stored.token_hash != token  # only a digest is stored
    assert stored.used_at is None
    assert stored.expires_at > utcnow() + timedelta(hours=settings.email_verify_token_hours - 1)
    await settle_emails(app, account.id)
    (task,) = await email_tasks(app, account.id)
    assert task.state == TaskState.SUCCESS


async def test_verification_link_verifies_the_account(
    client: httpx.AsyncClient, settings: Settings, smtp_server: SmtpServer, db: AsyncSession
) -> None:
    account, token = await registered_with_link(client, settings, smtp_server)

    response = await client.post("/api/users/verify", json={"token": token})

    assert response.status_code == 200, response.text
    body = response.json()
    assert body["id"] == account.id
    assert body["email"] == account.email
    assert body["is_verified"] is True
    assert (await stored_user(db, account.id)).is_verified is True
    me = await client.get("/api/users/me", headers=account.headers)
    assert me.json()["is_verified"] is True


async def test_verification_link_works_only_once(
    client: httpx.AsyncClient, settings: Settings, smtp_server: SmtpServer, db: AsyncSession
) -> None:
    _, token = await registered_with_link(client, settings, smtp_server)
    first = await client.post("/api/users/verify", json={"token": token})
    assert first.status_code == 200

    again = await client.post("/api/users/verify", json={"token": token})

    assert again.status_code == 400
    assert again.headers["content-type"].startswith("application/problem+json")
    assert again.json()["code"] == "email_token_invalid"
    used = await db.scalar(select(func.count()).select_from(EmailToken))
    assert used == 1


@pytest.mark.parametrize("token", ["garbage", "x" * 512, "a" * 43])
async def test_unknown_verification_token_is_rejected(
    client: httpx.AsyncClient, db: AsyncSession, token: str
) -> None:
    account = await register(client)

    response = await client.post("/api/users/verify", json={"token": token})

    assert response.status_code == 400
    assert response.json()["code"] == "email_token_invalid"
    assert (await stored_user(db, account.id)).is_verified is False


async def test_expired_verification_link_is_rejected(
    client: httpx.AsyncClient, settings: Settings, smtp_server: SmtpServer, db: AsyncSession
) -> None:
    account, token = await registered_with_link(client, settings, smtp_server)
    await db.execute(
        update(EmailToken)
        .where(EmailToken.user_id == account.id)
        .values(expires_at=utcnow() - timedelta(seconds=1))
    )
    await db.commit()

    response = await client.post("/api/users/verify", json={"token": token})

    assert response.status_code == 400
    assert response.json()["code"] == "email_token_invalid"
    assert (await stored_user(db, account.id)).is_verified is False


async def test_empty_or_unknown_fields_in_verify_body_are_422(client: httpx.AsyncClient) -> None:
    assert (await client.post("/api/users/verify", json={"token": ""})).status_code == 422
    assert (await client.post("/api/users/verify", json={})).status_code == 422
    extra = await client.post("/api/users/verify", json={"token": "t", "user_id": 1})
    assert extra.status_code == 422


def by_subject(messages: list[EmailMessage], subject: str) -> EmailMessage:
    matching = [m for m in messages if m["Subject"] == subject]
    assert len(matching) == 1, [m["Subject"] for m in messages]
    return matching[0]


async def change_email(client: httpx.AsyncClient, account: Account, address: str) -> dict[str, Any]:
    response = await client.patch(
        "/api/users/me",
        json={"email": address, "current_password": account.password},
        headers=account.headers,
    )
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def test_email_change_takes_effect_only_once_the_new_address_is_verified(
    client: httpx.AsyncClient,
    app: FastAPI,
    settings: Settings,
    smtp_server: SmtpServer,
    db: AsyncSession,
) -> None:
    account, token = await registered_with_link(client, settings, smtp_server)
    assert (await client.post("/api/users/verify", json={"token": token})).status_code == 200
    new_address = f"new-{account.username}@example.org"

    body = await change_email(client, account, new_address)

    assert (body["email"], body["pending_email"], body["is_verified"]) == (
        account.email,
        new_address,
        True,
    )
    old_mails = await mails_to(smtp_server, account.email, count=2)
    notice = by_subject(old_mails, "Your e-mail address is being changed")
    assert new_address in text_body(notice)
    assert "token=" not in text_body(notice)
    (message,) = await mails_to(smtp_server, new_address)
    new_token = link_token(settings, message, "verify-email")
    # Until the new address is verified, password resets go to the old one only.
    for address in (new_address, account.email):
        assert (
            await client.post("/api/password-reset", json={"email": address})
        ).status_code == 202
    reset = with_link(await mails_to(smtp_server, account.email, count=3), "reset-password")
    assert reset["To"] == account.email
    await settle_emails(app, account.id)
    assert len(smtp_server.wait_for(new_address, timeout=0)) == 1

    verified = await client.post("/api/users/verify", json={"token": new_token})

    assert verified.status_code == 200, verified.text
    assert (verified.json()["email"], verified.json()["pending_email"]) == (new_address, None)
    assert verified.json()["is_verified"] is True
    stored = await stored_user(db, account.id)
    assert (stored.email, stored.pending_email, stored.is_verified) == (new_address, None, True)
    assert (
        await client.post("/api/password-reset", json={"email": new_address})
    ).status_code == 202
    with_link(await mails_to(smtp_server, new_address, count=2), "reset-password")
    await login(client, new_address)


async def test_a_link_for_a_replaced_pending_address_no_longer_verifies(
    client: httpx.AsyncClient, settings: Settings, smtp_server: SmtpServer, db: AsyncSession
) -> None:
    account, first_token = await registered_with_link(client, settings, smtp_server)
    first, second = (f"{n}-{account.username}@example.org" for n in ("first", "second"))
    await change_email(client, account, first)
    (first_link,) = await mails_to(smtp_server, first)
    await change_email(client, account, second)
    (second_link,) = await mails_to(smtp_server, second)

    replaced = await client.post(
        "/api/users/verify", json={"token": link_token(settings, first_link, "verify-email")}
    )

    assert replaced.status_code == 400
    assert replaced.json()["code"] == "email_token_invalid"
    stored = await stored_user(db, account.id)
    assert (stored.email, stored.pending_email) == (account.email, second)
    # The registration link still proves the current address.
    current = await client.post("/api/users/verify", json={"token": first_token})
    assert current.status_code == 200
    assert (current.json()["email"], current.json()["pending_email"]) == (account.email, second)
    new = await client.post(
        "/api/users/verify", json={"token": link_token(settings, second_link, "verify-email")}
    )
    assert new.status_code == 200
    assert (await stored_user(db, account.id)).email == second


async def test_of_two_accounts_waiting_for_one_address_the_first_to_verify_gets_it(
    client: httpx.AsyncClient, settings: Settings, smtp_server: SmtpServer, db: AsyncSession
) -> None:
    alice = await register(client)
    bob = await register(client)
    shared = f"shared-{alice.username}@example.org"
    await change_email(client, alice, shared)
    await change_email(client, bob, shared)
    links = await mails_to(smtp_server, shared, count=2)
    tokens = {
        name: link_token(settings, m, "verify-email")
        for m in links
        for name in (alice.username, bob.username)
        if f"Hello {name}," in text_body(m)
    }

    first = await client.post("/api/users/verify", json={"token": tokens[alice.username]})
    second = await client.post("/api/users/verify", json={"token": tokens[bob.username]})

    assert first.status_code == 200, first.text
    assert second.status_code == 409
    assert second.json()["code"] == "email_taken"
    assert (await stored_user(db, alice.id)).email == shared
    assert (await stored_user(db, bob.id)).email == bob.email


async def test_a_change_to_a_taken_address_mails_its_owner_a_notice_and_no_link(
    client: httpx.AsyncClient,
    app: FastAPI,
    settings: Settings,
    smtp_server: SmtpServer,
    db: AsyncSession,
) -> None:
    carol, _ = await registered_with_link(client, settings, smtp_server)
    alice = await register(client)

    body = await change_email(client, alice, carol.email)

    assert body["pending_email"] == carol.email  # the same answer as for a free address
    carols = await mails_to(smtp_server, carol.email, count=2)
    notice = by_subject(carols, "Someone tried to use your e-mail address")
    assert f"Hello {carol.username}," in text_body(notice)
    assert "token=" not in text_body(notice)
    await settle_emails(app, alice.id)
    await settle_emails(app, carol.id)
    assert len(smtp_server.wait_for(carol.email, timeout=0)) == 2
    by_subject(
        await mails_to(smtp_server, alice.email, count=2), "Your e-mail address is being changed"
    )
    assert (await stored_user(db, carol.id)).email == carol.email


async def test_resend_sends_the_link_for_the_pending_address(
    client: httpx.AsyncClient, settings: Settings, smtp_server: SmtpServer, db: AsyncSession
) -> None:
    account = await register(client)
    new_address = f"resent-{account.username}@example.org"
    await change_email(client, account, new_address)
    await mails_to(smtp_server, new_address)

    response = await client.post("/api/users/me/verify/resend", headers=account.headers)

    assert response.status_code == 202
    second = (await mails_to(smtp_server, new_address, count=2))[1]
    verified = await client.post(
        "/api/users/verify", json={"token": link_token(settings, second, "verify-email")}
    )
    assert verified.status_code == 200
    assert (await stored_user(db, account.id)).email == new_address


async def test_resend_mails_another_verification_link(
    client: httpx.AsyncClient, settings: Settings, smtp_server: SmtpServer, db: AsyncSession
) -> None:
    account, first_token = await registered_with_link(client, settings, smtp_server)

    response = await client.post("/api/users/me/verify/resend", headers=account.headers)

    assert response.status_code == 202
    messages = await mails_to(smtp_server, account.email, count=2)
    assert len(messages) == 2
    second_token = link_token(settings, messages[1], "verify-email")
    assert second_token != first_token
    verified = await client.post("/api/users/verify", json={"token": second_token})
    assert verified.status_code == 200
    assert (await stored_user(db, account.id)).is_verified is True


async def test_resend_needs_a_signed_in_user(client: httpx.AsyncClient) -> None:
    response = await client.post("/api/users/me/verify/resend")
    assert response.status_code == 401


async def test_resend_is_rate_limited_per_user(
    client: httpx.AsyncClient, app: FastAPI, settings: Settings, smtp_server: SmtpServer
) -> None:
    assert settings.rate_limit_verify_resend == "3/hour"
    account = await register(client)
    other = await register(client)

    statuses = [
        (await client.post("/api/users/me/verify/resend", headers=account.headers)).status_code
        for _ in range(3)
    ]
    limited = await client.post("/api/users/me/verify/resend", headers=account.headers)

    assert statuses == [202, 202, 202]
    assert limited.status_code == 429
    assert limited.json()["code"] == "rate_limited"
    assert int(limited.headers["Retry-After"]) > 0
    # Another user has a budget of their own.
    assert (
        await client.post("/api/users/me/verify/resend", headers=other.headers)
    ).status_code == 202
    await settle_emails(app, account.id)
    assert len(await email_tasks(app, account.id)) == 4  # registration and three resends
    assert len(await mails_to(smtp_server, account.email, count=4)) == 4


async def test_resend_for_a_verified_user_sends_nothing(
    client: httpx.AsyncClient, app: FastAPI, settings: Settings, smtp_server: SmtpServer
) -> None:
    account, token = await registered_with_link(client, settings, smtp_server)
    assert (await client.post("/api/users/verify", json={"token": token})).status_code == 200

    response = await client.post("/api/users/me/verify/resend", headers=account.headers)

    assert response.status_code == 202
    await settle_emails(app, account.id)
    assert len(await email_tasks(app, account.id)) == 1  # the registration's only
    assert len(smtp_server.wait_for(account.email, timeout=0)) == 1


# Password reset


async def test_password_reset_mails_a_reset_link(
    client: httpx.AsyncClient, settings: Settings, smtp_server: SmtpServer, db: AsyncSession
) -> None:
    account = await register(client)
    await mails_to(smtp_server, account.email)  # the verification e-mail

    response = await client.post("/api/password-reset", json={"email": account.email.upper()})

    assert response.status_code == 202
    messages = await mails_to(smtp_server, account.email, count=2)
    reset = messages[1]
    assert reset["From"] == settings.smtp_from
    assert reset.get_body(preferencelist=("html",)) is not None
    token = link_token(settings, reset, "reset-password")
    stored = await db.scalar(
        select(EmailToken).where(
            EmailToken.user_id == account.id, EmailToken.purpose == TokenPurpose.RESET_PASSWORD
        )
    )
    assert stored is not None
    assert stored.used_at is None
    assert stored.token_hash != token
    assert stored.expires_at <= utcnow() + timedelta(minutes=settings.password_reset_token_minutes)


async def test_password_reset_for_an_unknown_address_looks_the_same_and_sends_nothing(
    client: httpx.AsyncClient, app: FastAPI, smtp_server: SmtpServer, db: AsyncSession
) -> None:
    account = await register(client)
    await mails_to(smtp_server, account.email)
    known = await client.post("/api/password-reset", json={"email": account.email})
    nobody = "nobody-at-all@example.com"

    unknown = await client.post("/api/password-reset", json={"email": nobody})

    assert unknown.status_code == known.status_code == 202
    assert unknown.content == known.content
    ignored = {"x-request-id", "date"}
    assert {k: v for k, v in unknown.headers.items() if k not in ignored} == {
        k: v for k, v in known.headers.items() if k not in ignored
    }
    await mails_to(smtp_server, account.email, count=2)
    await settle_emails(app, account.id)
    assert await db.scalar(select(func.count()).select_from(Task)) == 2  # none for nobody
    assert smtp_server.wait_for(nobody, timeout=0.5) == []


async def test_password_reset_confirm_sets_the_password_and_ends_every_session(
    client: httpx.AsyncClient, settings: Settings, smtp_server: SmtpServer, db: AsyncSession
) -> None:
    account = await register(client)
    second_login = await login(client, account.username)
    requested = await client.post("/api/password-reset", json={"email": account.email})
    assert requested.status_code == 202
    messages = await mails_to(smtp_server, account.email, count=2)
    token = link_token(settings, with_link(messages, "reset-password"), "reset-password")
    hash_before = (await stored_user(db, account.id)).password_hash

    response = await client.post(
        "/api/password-reset/confirm", json={"token": token, "new_password": NEW_PASSWORD}
    )

    assert response.status_code == 204
    assert response.content == b""
    assert (await stored_user(db, account.id)).password_hash != hash_before
    # The new password works, the old one does not.
    fresh = await login(client, account.username, NEW_PASSWORD)
    old_password = await client.post(
        "/api/token", json={"username": account.username, "password": PASSWORD}
    )
    assert old_password.status_code == 401
    # Every session that existed before the reset has ended.
    for access in (account.access_token, second_login["access_token"]):
        me = await client.get("/api/users/me", headers={"Authorization": f"Bearer {access}"})
        assert me.status_code == 401
    for refresh in (account.refresh_token, second_login["refresh_token"]):
        refreshed = await client.post("/api/token/refresh", json={"refresh_token": refresh})
        assert refreshed.status_code == 401
    me = await client.get(
        "/api/users/me", headers={"Authorization": f"Bearer {fresh['access_token']}"}
    )
    assert me.status_code == 200
    # The link is spent.
    again = await client.post(
        "/api/password-reset/confirm", json={"token": token, "new_password": "yet another one"}
    )
    assert again.status_code == 400
    assert again.json()["code"] == "email_token_invalid"
    await login(client, account.username, NEW_PASSWORD)


async def test_concurrent_uses_of_one_reset_link_succeed_once(
    client: httpx.AsyncClient, settings: Settings, smtp_server: SmtpServer
) -> None:
    account = await register(client)
    await client.post("/api/password-reset", json={"email": account.email})
    messages = await mails_to(smtp_server, account.email, count=2)
    token = link_token(settings, with_link(messages, "reset-password"), "reset-password")
    passwords = [f"racing password {n}" for n in range(4)]

    responses = await asyncio.gather(
        *(
            client.post(
                "/api/password-reset/confirm", json={"token": token, "new_password": password}
            )
            for password in passwords
        )
    )

    statuses = sorted(r.status_code for r in responses)
    assert statuses == [204, 400, 400, 400]
    winner = passwords[[r.status_code for r in responses].index(204)]
    await login(client, account.username, winner)


async def test_a_newer_reset_spends_every_older_reset_link(
    client: httpx.AsyncClient, settings: Settings, smtp_server: SmtpServer
) -> None:
    account = await register(client)
    for _ in range(2):
        await client.post("/api/password-reset", json={"email": account.email})
    messages = await mails_to(smtp_server, account.email, count=3)
    first, second = (link_token(settings, m, "reset-password") for m in messages[1:])
    used = await client.post(
        "/api/password-reset/confirm", json={"token": second, "new_password": NEW_PASSWORD}
    )
    assert used.status_code == 204

    older = await client.post(
        "/api/password-reset/confirm", json={"token": first, "new_password": "sneaky password"}
    )

    assert older.status_code == 400
    await login(client, account.username, NEW_PASSWORD)


async def test_reset_link_of_one_user_cannot_change_another(
    client: httpx.AsyncClient, settings: Settings, smtp_server: SmtpServer, db: AsyncSession
) -> None:
    alice = await register(client, username="alice_reset")
    bob = await register(client, username="bob_reset")
    await client.post("/api/password-reset", json={"email": alice.email})
    messages = await mails_to(smtp_server, alice.email, count=2)
    token = link_token(settings, with_link(messages, "reset-password"), "reset-password")
    bob_hash = (await stored_user(db, bob.id)).password_hash

    response = await client.post(
        "/api/password-reset/confirm", json={"token": token, "new_password": NEW_PASSWORD}
    )

    assert response.status_code == 204
    assert (await stored_user(db, bob.id)).password_hash == bob_hash
    await login(client, bob.username)  # bob keeps his password ...
    me = await client.get("/api/users/me", headers=bob.headers)
    assert me.status_code == 200  # ... and his sessions
    await login(client, alice.username, NEW_PASSWORD)
    bob_as_new = await client.post(
        "/api/token", json={"username": bob.username, "password": NEW_PASSWORD}
    )
    assert bob_as_new.status_code == 401


async def test_verification_token_is_not_a_reset_token_and_vice_versa(
    client: httpx.AsyncClient, settings: Settings, smtp_server: SmtpServer, db: AsyncSession
) -> None:
    account, verify_token = await registered_with_link(client, settings, smtp_server)
    await client.post("/api/password-reset", json={"email": account.email})
    messages = await mails_to(smtp_server, account.email, count=2)
    reset_token = link_token(settings, with_link(messages, "reset-password"), "reset-password")

    as_reset = await client.post(
        "/api/password-reset/confirm",
        json={"token": verify_token, "new_password": NEW_PASSWORD},
    )
    as_verify = await client.post("/api/users/verify", json={"token": reset_token})

    assert as_reset.status_code == 400
    assert as_verify.status_code == 400
    assert (await stored_user(db, account.id)).is_verified is False
    await login(client, account.username)  # the password did not change


async def test_expired_reset_link_is_rejected(
    client: httpx.AsyncClient, settings: Settings, smtp_server: SmtpServer, db: AsyncSession
) -> None:
    account = await register(client)
    await client.post("/api/password-reset", json={"email": account.email})
    messages = await mails_to(smtp_server, account.email, count=2)
    token = link_token(settings, with_link(messages, "reset-password"), "reset-password")
    await db.execute(
        update(EmailToken)
        .where(EmailToken.purpose == TokenPurpose.RESET_PASSWORD)
        .values(expires_at=utcnow() - timedelta(seconds=1))
    )
    await db.commit()

    response = await client.post(
        "/api/password-reset/confirm", json={"token": token, "new_password": NEW_PASSWORD}
    )

    assert response.status_code == 400
    assert response.json()["code"] == "email_token_invalid"
    me = await client.get("/api/users/me", headers=account.headers)
    assert me.status_code == 200  # no session ended
    await login(client, account.username)


async def test_reset_confirm_checks_the_new_password(
    client: httpx.AsyncClient, settings: Settings, smtp_server: SmtpServer
) -> None:
    account = await register(client)
    await client.post("/api/password-reset", json={"email": account.email})
    messages = await mails_to(smtp_server, account.email, count=2)
    token = link_token(settings, with_link(messages, "reset-password"), "reset-password")

    short = await client.post(
        "/api/password-reset/confirm", json={"token": token, "new_password": "short"}
    )

    assert short.status_code == 422
    ok = await client.post(
        "/api/password-reset/confirm", json={"token": token, "new_password": NEW_PASSWORD}
    )
    assert ok.status_code == 204  # the rejected request did not spend the link


async def test_password_reset_requests_are_rate_limited_per_ip(
    client: httpx.AsyncClient, app: FastAPI, settings: Settings, db: AsyncSession
) -> None:
    assert settings.rate_limit_password_reset_ip == "5/minute"
    account = await register(client)
    addresses = [account.email] + [f"ghost{i}@example.com" for i in range(4)]

    statuses = [
        (await client.post("/api/password-reset", json={"email": address})).status_code
        for address in addresses
    ]
    limited = await client.post("/api/password-reset", json={"email": account.email})

    assert statuses == [202] * 5
    assert limited.status_code == 429
    assert limited.json()["code"] == "rate_limited"
    assert "Retry-After" in limited.headers
    await settle_emails(app, account.id)
    resets = await db.scalar(
        select(func.count())
        .select_from(EmailToken)
        .where(EmailToken.purpose == TokenPurpose.RESET_PASSWORD)
    )
    assert resets == 1  # the limited request queued nothing


# REQUIRE_EMAIL_VERIFICATION


async def test_unverified_users_may_publish_by_default(
    client: httpx.AsyncClient, settings: Settings
) -> None:
    assert settings.require_email_verification is False
    account = await register(client)
    response = await client.post(
        "/api/posts", json={"title": "Hi", "content": "Hello"}, headers=account.headers
    )
    assert response.status_code == 201


async def test_required_verification_keeps_unverified_users_to_drafts(
    client: httpx.AsyncClient, settings: Settings, smtp_server: SmtpServer, db: AsyncSession
) -> None:
    async with extra_app(settings, require_email_verification=True) as strict:
        account, token = await registered_with_link(strict, settings, smtp_server)
        post = {"title": "Hello", "content": "World"}

        published = await strict.post("/api/posts", json=post, headers=account.headers)
        draft = await strict.post(
            "/api/posts", json=post | {"published": False}, headers=account.headers
        )
        assert draft.status_code == 201, draft.text
        draft_id = draft.json()["id"]
        publish = await strict.patch(
            f"/api/posts/{draft_id}", json={"published": True}, headers=account.headers
        )

        assert published.status_code == 403
        assert published.json()["code"] == "email_not_verified"
        assert draft.json()["published"] is False
        assert publish.status_code == 403
        assert publish.json()["code"] == "email_not_verified"
        listed = await strict.get("/api/posts")
        assert listed.json()["total"] == 0  # nothing was published

        assert (await strict.post("/api/users/verify", json={"token": token})).status_code == 200
        after = await strict.post("/api/posts", json=post, headers=account.headers)
        assert after.status_code == 201
        assert after.json()["published"] is True
        publish = await strict.patch(
            f"/api/posts/{draft_id}", json={"published": True}, headers=account.headers
        )
        assert publish.status_code == 200
        assert publish.json()["published"] is True
        assert (await strict.get("/api/posts")).json()["total"] == 2


# Delivery: the outbox, and an SMTP server that is down


@pytest.mark.skipif(SERVICES, reason="in services mode the worker sends with its own settings")
async def test_without_smtp_host_emails_go_to_the_outbox(
    client: httpx.AsyncClient, settings: Settings, tmp_path: Path
) -> None:
    async with extra_app(settings, smtp_host=None, data_dir=tmp_path) as local:
        account = await register(local)
    # Stopping the app drained its jobs.
    files = sorted((tmp_path / "outbox").glob("*.eml"))
    assert len(files) == 1
    message = email.message_from_bytes(files[0].read_bytes(), policy=email.policy.default)
    assert isinstance(message, EmailMessage)
    assert message["To"] == account.email
    token = link_token(settings, message, "verify-email")
    verified = await client.post("/api/users/verify", json={"token": token})
    assert verified.status_code == 200


def test_email_retry_delays_back_off_exponentially() -> None:
    delays = [task_runner.retry_delay(n) for n in range(10)]
    assert delays[:4] == [2.0, 4.0, 8.0, 16.0]
    assert all(b >= a for a, b in itertools.pairwise(delays))
    assert max(delays) == task_runner.TRANSIENT_RETRY_MAX_SECONDS


@pytest.mark.skipif(SERVICES, reason="in services mode the worker sends with its own settings")
async def test_email_is_retried_while_smtp_is_down_and_sent_once_it_is_up(
    client: httpx.AsyncClient,
    app: FastAPI,
    settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    retries: list[int] = []

    def quick_delay(n: int) -> float:
        retries.append(n)
        return 0.3

    monkeypatch.setattr(task_runner, "retry_delay", quick_delay)
    late = SmtpServer()  # its port stays closed until start()
    started = False
    try:
        async with extra_app(settings, smtp_port=late.port) as down:
            account = await register(down)

            retrying = await wait_for_task_state(app, account.id, TaskState.RETRY)
            assert retrying.result is not None
            assert "refused" in retrying.result["error"].lower()

            late.start()
            started = True
            (message,) = await mails_to(late, account.email)
            done = await wait_for_task_state(app, account.id, TaskState.SUCCESS)
        assert done.result == {"to": account.email, "template": "verify_email"}
        assert link_token(settings, message, "verify-email")
        assert retries[0] == 0
        assert retries == list(range(len(retries)))  # each retry waits longer than the last
    finally:
        if started:
            late.stop()


@pytest.mark.skipif(SERVICES, reason="in services mode the worker sends with its own settings")
async def test_email_fails_after_its_retries_when_smtp_stays_down(
    client: httpx.AsyncClient, app: FastAPI, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(task_runner, "retry_delay", lambda n: 0.01)
    async with extra_app(settings, smtp_port=free_port()) as down:
        account = await register(down)
    # Stopping the app waited for the job: every retry is spent.
    (task,) = await email_tasks(app, account.id)
    assert task.state == TaskState.FAILURE
    assert task.result is not None
    assert "error" in task.result
