"""Rate limits on logins (per client IP; on failures per account and client, under an
account-wide ceiling) and registrations (per IP): 429 problem+json naming the limit, with the
real time left in its window as Retry-After, every limit a setting, all of them off with
RATE_LIMITS_ENABLED=false, and in the services mode one set of counters for every process.

The ASGI test client always comes from the same address; the per-test clean-up resets the
counters, and an extra client with another address stands for another machine."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from pydantic import ValidationError
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from app.config import Settings
from app.models import User
from tests.conftest import SERVICES, running_app, settings_like
from tests.factories import PASSWORD, register

WRONG = "not the password"
LIMIT_SETTINGS = [
    "rate_limit_login_ip",
    "rate_limit_login_account",
    "rate_limit_login_account_ceiling",
    "rate_limit_register_ip",
    "rate_limit_password_reset_ip",
]


# --- helpers ----------------------------------------------------------------------------------
async def attempt(client: httpx.AsyncClient, username: str, password: str) -> httpx.Response:
    return await client.post("/api/token", json={"username": username, "password": password})


async def sign_up(client: httpx.AsyncClient, n: int) -> httpx.Response:
    return await client.post(
        "/api/users",
        json={"username": f"signup{n}", "email": f"signup{n}@example.com", "password": PASSWORD},
    )


def assert_rate_limited(
    response: httpx.Response, window_seconds: int, code: str = "rate_limited"
) -> int:
    assert response.status_code == 429, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body = response.json()
    assert (body["status"], body["code"]) == (429, code)
    assert "access_token" not in body
    retry_after = response.headers["Retry-After"]
    assert retry_after.isdigit(), retry_after
    assert 1 <= int(retry_after) <= window_seconds
    return int(retry_after)


def assert_locked(response: httpx.Response, window_seconds: int = 15 * 60) -> int:
    return assert_rate_limited(response, window_seconds, "login_locked")


@asynccontextmanager
async def client_from(app: FastAPI, ip: str) -> AsyncIterator[httpx.AsyncClient]:
    """A client of the suite's app calling from another address."""
    transport = httpx.ASGITransport(app=app, client=(ip, 123))
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as other:
        yield other


async def user_count(db: AsyncSession) -> Any:
    await db.rollback()
    return await db.scalar(select(func.count()).select_from(User))


# --- login per IP -----------------------------------------------------------------------------
async def test_eleventh_login_attempt_in_a_minute_from_one_ip_is_429_with_retry_after(
    client: httpx.AsyncClient,
) -> None:
    alice = await register(client)
    first = time.time()
    for _ in range(10):
        response = await attempt(client, alice.username, PASSWORD)
        assert response.status_code == 200, response.text

    refused = await attempt(client, alice.username, PASSWORD)
    retry_after = assert_rate_limited(refused, 60)
    left = first + 60 - time.time()  # the first attempt leaves the minute's window then
    assert left - 2 <= retry_after <= left + 2, (retry_after, left)
    assert refused.json()["detail"] == (
        f"Too many login attempts from your address; try again in {retry_after} seconds."
    )
    # Still refused: a refused attempt does not open the door again.
    assert_rate_limited(await attempt(client, alice.username, PASSWORD), 60)


async def test_failed_and_unknown_logins_count_towards_the_ip_limit(
    client: httpx.AsyncClient,
) -> None:
    alice = await register(client)
    for n in range(10):  # ten different names: no account reaches its own limit
        response = await attempt(client, f"nobody{n}", WRONG)
        assert response.status_code == 401, response.text
    assert_rate_limited(await attempt(client, alice.username, PASSWORD), 60)


async def test_login_limit_is_per_ip_so_another_address_still_logs_in(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    alice = await register(client)
    for _ in range(10):
        assert (await attempt(client, alice.username, PASSWORD)).status_code == 200
    assert_rate_limited(await attempt(client, alice.username, PASSWORD), 60)

    async with client_from(app, "203.0.113.7") as elsewhere:
        response = await attempt(elsewhere, alice.username, PASSWORD)
    assert response.status_code == 200, response.text
    assert response.json()["access_token"]


# --- login per account and client -------------------------------------------------------------
async def test_failures_lock_out_the_address_they_came_from_even_with_the_right_password(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    alice = await register(client)
    for _ in range(5):
        response = await attempt(client, alice.username, WRONG)
        assert response.status_code == 401, response.text

    assert_locked(await attempt(client, alice.username, PASSWORD))
    assert_locked(await attempt(client, alice.email, PASSWORD))  # same account
    # The same address keeps being locked: refused attempts neither end nor extend the lock.
    for _ in range(3):
        assert_locked(await attempt(client, alice.username, PASSWORD))
    # The owner elsewhere is not locked out.
    async with client_from(app, "198.51.100.9") as elsewhere:
        response = await attempt(elsewhere, alice.username, PASSWORD)
    assert response.status_code == 200, response.text


async def test_failures_from_five_addresses_do_not_lock_the_owner_out(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    alice = await register(client)
    for n in range(5):
        async with client_from(app, f"203.0.113.{n + 1}") as attacker:
            response = await attempt(attacker, alice.username, WRONG)
        assert response.status_code == 401, response.text

    async with client_from(app, "198.51.100.6") as owner:
        response = await attempt(owner, alice.username, PASSWORD)
    assert response.status_code == 200, response.text
    assert response.json()["access_token"]


async def test_the_locked_out_429_says_what_is_limited_and_for_how_long(
    client: httpx.AsyncClient,
) -> None:
    alice = await register(client)
    first = time.time()
    for _ in range(5):
        assert (await attempt(client, alice.username, WRONG)).status_code == 401

    refused = await attempt(client, alice.username, PASSWORD)
    retry_after = assert_locked(refused)
    # The real time left: the first failure leaves the 15-minute window then.
    left = first + 15 * 60 - time.time()
    assert left - 2 <= retry_after <= left + 2, (retry_after, left)
    detail = refused.json()["detail"]
    assert "failed logins for this account from your address" in detail, detail
    assert detail.endswith(f"try again in {-(-retry_after // 60)} minutes."), detail


async def test_retry_after_is_the_time_left_not_the_whole_window(
    client: httpx.AsyncClient, settings: Settings
) -> None:
    alice = await register(client)
    quick = settings_like(settings, rate_limit_login_account="2 per 4 seconds")
    async with running_app(quick) as (_, other):
        for _ in range(2):
            assert (await attempt(other, alice.username, WRONG)).status_code == 401
        await asyncio.sleep(2.1)
        refused = await attempt(other, alice.username, PASSWORD)
        assert assert_locked(refused, 4) == 2, refused.headers
        assert refused.json()["detail"].endswith("try again in 2 seconds."), refused.text


async def test_ipv6_addresses_of_one_network_count_as_one_client(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    alice = await register(client)
    for n in range(5):  # one host, five addresses of its /64
        async with client_from(app, f"2001:db8:1:2::{n + 1}") as attacker:
            assert (await attempt(attacker, alice.username, WRONG)).status_code == 401
    async with client_from(app, "2001:db8:1:2:ffff::9") as attacker:
        assert_locked(await attempt(attacker, alice.username, PASSWORD))
    async with client_from(app, "2001:db8:1:3::1") as owner:  # the next network
        assert (await attempt(owner, alice.username, PASSWORD)).status_code == 200


# --- the account-wide ceiling -----------------------------------------------------------------
async def test_account_ceiling_stops_a_distributed_attack_but_not_the_owner(
    client: httpx.AsyncClient, settings: Settings
) -> None:
    alice = await register(client)
    tight = settings_like(settings, rate_limit_login_account_ceiling="6/hour")
    attackers = [f"203.0.113.{n}" for n in range(1, 4)]
    async with running_app(tight) as (application, _):
        # Three addresses, each far below its own lock-out, fill the account's ceiling together.
        for ip in attackers:
            async with client_from(application, ip) as attacker:
                for _ in range(2):
                    assert (await attempt(attacker, alice.username, WRONG)).status_code == 401
        # Now each of them waits, even with the right password...
        first = time.time()
        for ip in attackers:
            async with client_from(application, ip) as attacker:
                refused = await attempt(attacker, alice.username, PASSWORD)
            retry_after = assert_rate_limited(refused, 3600, "login_throttled")
            assert retry_after >= 3600 - (time.time() - first) - 60
            assert "for this account" in refused.json()["detail"]
        # ...a fresh address gets one guess, then waits too...
        async with client_from(application, "192.0.2.77") as fresh:
            assert (await attempt(fresh, alice.username, WRONG)).status_code == 401
            assert_rate_limited(
                await attempt(fresh, alice.username, WRONG), 3600, "login_throttled"
            )
        # ...and the owner, from an address that never failed, logs in.
        async with client_from(application, "198.51.100.6") as owner:
            response = await attempt(owner, alice.username, PASSWORD)
        assert response.status_code == 200, response.text


@pytest.mark.parametrize(("days", "exempt"), [(30, True), (0, False)])
async def test_an_address_the_owner_logged_in_from_is_exempt_from_the_ceiling(
    client: httpx.AsyncClient, settings: Settings, days: int, exempt: bool
) -> None:
    """A typo at home during an attack does not lock the owner out (LOGIN_KNOWN_ADDRESS_DAYS)."""
    alice = await register(client)
    tight = settings_like(
        settings, rate_limit_login_account_ceiling="6/hour", login_known_address_days=days
    )
    async with running_app(tight, ip="198.51.100.6") as (application, home):
        assert (await attempt(home, alice.username, PASSWORD)).status_code == 200
        for n in range(3):
            async with client_from(application, f"203.0.113.{n}") as attacker:
                for _ in range(2):
                    assert (await attempt(attacker, alice.username, WRONG)).status_code == 401
        assert (await attempt(home, alice.username, WRONG)).status_code == 401  # a typo

        response = await attempt(home, alice.username, PASSWORD)
        if exempt:
            assert response.status_code == 200, response.text
        else:
            assert_rate_limited(response, 3600, "login_throttled")
        # The attackers' addresses never logged in: they still wait.
        async with client_from(application, "203.0.113.0") as attacker:
            assert_rate_limited(
                await attempt(attacker, alice.username, WRONG), 3600, "login_throttled"
            )


async def test_an_address_that_failed_may_try_again_once_the_ceiling_has_room(
    client: httpx.AsyncClient, settings: Settings
) -> None:
    alice = await register(client)
    quick = settings_like(settings, rate_limit_login_account_ceiling="2 per 3 seconds")
    async with running_app(quick) as (application, other):
        async with client_from(application, "203.0.113.1") as attacker:
            assert (await attempt(attacker, alice.username, WRONG)).status_code == 401
        assert (await attempt(other, alice.username, WRONG)).status_code == 401
        retry_after = assert_rate_limited(
            await attempt(other, alice.username, PASSWORD), 3, "login_throttled"
        )

        await asyncio.sleep(retry_after + 0.2)

        response = await attempt(other, alice.username, PASSWORD)
        assert response.status_code == 200, response.text


async def test_account_lock_out_leaves_other_accounts_alone(client: httpx.AsyncClient) -> None:
    alice, bob = await register(client), await register(client)
    for _ in range(5):
        assert (await attempt(client, alice.username, WRONG)).status_code == 401
    assert_locked(await attempt(client, alice.username, PASSWORD))

    response = await attempt(client, bob.username, PASSWORD)
    assert response.status_code == 200, response.text


async def test_failures_below_the_account_limit_do_not_lock_it(client: httpx.AsyncClient) -> None:
    alice = await register(client)
    for _ in range(4):
        assert (await attempt(client, alice.username, WRONG)).status_code == 401
    assert (await attempt(client, alice.username, PASSWORD)).status_code == 200
    # Successful logins are not failures: they do not bring the lock-out closer.
    assert (await attempt(client, alice.username, PASSWORD)).status_code == 200


async def test_unknown_account_is_locked_like_a_real_one(client: httpx.AsyncClient) -> None:
    """The answers for a name nobody has match a real account's: no account enumeration."""
    for _ in range(5):
        assert (await attempt(client, "ghost", WRONG)).status_code == 401
    assert_locked(await attempt(client, "ghost", WRONG))


async def test_account_lock_out_ends_when_its_window_passes(
    client: httpx.AsyncClient, settings: Settings
) -> None:
    alice = await register(client)
    quick = settings_like(settings, rate_limit_login_account="2 per 2 seconds")
    async with running_app(quick) as (_, other):
        for _ in range(2):
            assert (await attempt(other, alice.username, WRONG)).status_code == 401
        retry_after = assert_locked(await attempt(other, alice.username, PASSWORD), 2)

        await asyncio.sleep(retry_after + 0.2)

        response = await attempt(other, alice.username, PASSWORD)
        assert response.status_code == 200, response.text


# --- registration per IP ----------------------------------------------------------------------
async def test_eleventh_registration_in_a_minute_from_one_ip_is_429(
    app: FastAPI, client: httpx.AsyncClient, db: AsyncSession
) -> None:
    for n in range(10):
        response = await sign_up(client, n)
        assert response.status_code == 201, response.text

    assert_rate_limited(await sign_up(client, 10), 60)
    assert await user_count(db) == 10  # the refused one was not created
    async with client_from(app, "192.0.2.44") as elsewhere:
        assert (await sign_up(elsewhere, 11)).status_code == 201
    assert await user_count(db) == 11


# --- settings ---------------------------------------------------------------------------------
async def test_rate_limits_disabled_by_setting_never_answer_429(
    client: httpx.AsyncClient, settings: Settings, db: AsyncSession
) -> None:
    alice = await register(client)
    async with running_app(settings_like(settings, rate_limits_enabled=False)) as (_, other):
        for _ in range(30):
            response = await attempt(other, alice.username, WRONG)
            assert response.status_code == 401, response.text
        assert (await attempt(other, alice.username, PASSWORD)).status_code == 200
        for n in range(15):
            response = await sign_up(other, n)
            assert response.status_code == 201, response.text
    assert await user_count(db) == 16


async def test_custom_limits_from_settings_are_honoured(
    client: httpx.AsyncClient, settings: Settings
) -> None:
    alice = await register(client)
    custom = settings_like(
        settings,
        rate_limit_login_ip="3/minute",
        rate_limit_login_account="2 per 15 minutes",
        rate_limit_register_ip="2/hour",
    )
    async with running_app(custom, ip="203.0.113.50") as (_, other):
        for n in range(2):
            assert (await sign_up(other, n)).status_code == 201
        assert_rate_limited(await sign_up(other, 2), 3600)

        for _ in range(2):
            assert (await attempt(other, alice.username, WRONG)).status_code == 401
        assert_locked(await attempt(other, alice.username, PASSWORD))  # account and address

    async with running_app(custom, ip="203.0.113.51") as (_, other):
        for _ in range(3):
            assert (await attempt(other, "signup0", PASSWORD)).status_code == 200
        assert_rate_limited(await attempt(other, "signup0", PASSWORD), 60)  # IP


@pytest.mark.parametrize("name", LIMIT_SETTINGS)
@pytest.mark.parametrize("value", ["lots", "10 per fortnight", "", "-1/minute"])
def test_invalid_rate_limit_setting_is_a_validation_error(
    settings: Settings, name: str, value: str
) -> None:
    with pytest.raises(ValidationError, match=name):
        settings_like(settings, **{name: value})


@pytest.mark.parametrize("value", ["10/minute", "5 per 15 minutes", "100/hour;1000/day"])
def test_valid_rate_limit_notations_are_accepted(settings: Settings, value: str) -> None:
    assert settings_like(settings, rate_limit_login_ip=value).rate_limit_login_ip == value


def test_invalid_rate_limit_from_the_environment_is_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("RATE_LIMIT_LOGIN_IP", "ten a minute")
    with pytest.raises(ValidationError, match="rate_limit_login_ip"):
        Settings(_env_file=None)


def test_default_limits_are_the_documented_ones(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (*LIMIT_SETTINGS, "RATE_LIMITS_ENABLED", "LOGIN_KNOWN_ADDRESS_DAYS"):
        monkeypatch.delenv(name.upper(), raising=False)
    defaults = Settings(_env_file=None)
    assert defaults.rate_limits_enabled is True
    assert defaults.rate_limit_login_ip == "10/minute"
    assert defaults.rate_limit_login_account == "5/15 minutes"
    assert defaults.rate_limit_login_account_ceiling == "100/hour"
    assert defaults.login_known_address_days == 30
    assert defaults.rate_limit_register_ip == "10/minute"


# --- several processes ------------------------------------------------------------------------
@pytest.mark.skipif(not SERVICES, reason="counters are per process in the embedded mode")
async def test_two_processes_share_login_ip_counters(
    client: httpx.AsyncClient, settings: Settings
) -> None:
    alice = await register(client)
    async with running_app(settings) as (_, other):
        for n in range(10):
            process = client if n % 2 else other
            assert (await attempt(process, alice.username, PASSWORD)).status_code == 200
        assert_rate_limited(await attempt(client, alice.username, PASSWORD), 60)
        assert_rate_limited(await attempt(other, alice.username, PASSWORD), 60)


@pytest.mark.skipif(not SERVICES, reason="counters are per process in the embedded mode")
async def test_two_processes_share_account_lock_outs(
    client: httpx.AsyncClient, settings: Settings
) -> None:
    alice = await register(client)
    async with running_app(settings) as (_, other):  # the same address, another process
        for n in range(5):
            process = client if n < 3 else other
            assert (await attempt(process, alice.username, WRONG)).status_code == 401
        assert_locked(await attempt(client, alice.username, PASSWORD))
        assert_locked(await attempt(other, alice.username, PASSWORD))


@pytest.mark.skipif(not SERVICES, reason="counters are per process in the embedded mode")
async def test_two_processes_share_the_account_ceiling(
    client: httpx.AsyncClient, settings: Settings
) -> None:
    alice = await register(client)
    tight = settings_like(settings, rate_limit_login_account_ceiling="4/hour")
    async with running_app(tight) as (first, _), running_app(tight) as (second, _):
        for n in range(4):
            async with client_from(first if n % 2 else second, f"203.0.113.{n}") as attacker:
                assert (await attempt(attacker, alice.username, WRONG)).status_code == 401
        for process in (first, second):
            async with client_from(process, "203.0.113.0") as attacker:
                refused = await attempt(attacker, alice.username, PASSWORD)
            assert_rate_limited(refused, 3600, "login_throttled")


@pytest.mark.skipif(not SERVICES, reason="counters are per process in the embedded mode")
async def test_two_processes_share_registration_counters(
    client: httpx.AsyncClient, settings: Settings
) -> None:
    async with running_app(settings) as (_, other):
        for n in range(10):
            process = client if n % 2 else other
            assert (await sign_up(process, n)).status_code == 201
        assert_rate_limited(await sign_up(other, 10), 60)
        assert_rate_limited(await sign_up(client, 11), 60)
