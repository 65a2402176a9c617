"""Tokens signed with the real key whose claims are absurd (an `exp` in the year 3e12, NaN,
a string, a list, a deeply nested payload...) are 401 problem+json on every route that reads a
token, never a 500 (SPEC 6: "never 500, whatever the claims")."""

from __future__ import annotations

import json
import time
from typing import Any

import httpx
import jwt
import pytest

from app.config import Settings
from tests.factories import Account, bearer, register
from tests.problems import assert_problem

TOKEN_ERRORS = ("token_invalid", "token_expired")
NOW = int(time.time())

# Claim values a signer should never produce; each replaces one claim of a valid token.
ABSURD_CLAIMS: list[tuple[str, Any]] = [
    ("exp", 10**20),
    ("exp", -(10**20)),
    ("exp", 2**63),
    ("exp", -1),
    ("exp", 0),
    ("exp", "tomorrow"),
    ("exp", str(NOW + 3600)),
    ("exp", float("nan")),
    ("exp", float("inf")),
    ("exp", float("-inf")),
    ("exp", 1e300),
    ("exp", True),
    ("exp", None),
    ("exp", [NOW + 3600]),
    ("exp", {"at": NOW + 3600}),
    ("iat", 10**20),
    ("iat", float("nan")),
    ("iat", float("inf")),
    ("iat", "now"),
    ("iat", [NOW]),
    ("nbf", 10**20),
    ("nbf", float("nan")),
    ("nbf", float("-inf")),
    ("nbf", "later"),
    ("nbf", {}),
    ("iss", ["inkwell"]),
    ("iss", {"inkwell": 1}),
    ("iss", 42),
    ("aud", ["inkwell-api", 42]),
    ("aud", {"inkwell-api": 1}),
    ("aud", 42),
    ("sub", 10**400),
    ("sub", float("nan")),
    ("sub", "1e999"),
    ("sub", ["1"]),
    ("sid", 12),
    ("sid", ["x"]),
    ("type", ["access"]),
    ("type", {"access": True}),
    ("jti", {"a": [1, 2]}),
]


def signed(settings: Settings, payload: bytes) -> str:
    """A token over these exact payload bytes, signed with the application's key."""
    return jwt.api_jws.encode(payload, settings.jwt_signing_key(), settings.jwt_algorithm)


def with_claim(settings: Settings, account: Account, claim: str, value: Any) -> str:
    claims: dict[str, Any] = jwt.decode(account.access_token, options={"verify_signature": False})
    claims[claim] = value
    return signed(settings, json.dumps(claims).encode())  # NaN and Infinity as Python writes them


async def assert_refused_everywhere(client: httpx.AsyncClient, token: str) -> None:
    assert_problem(await client.get("/api/users/me", headers=bearer(token)), 401, *TOKEN_ERRORS)
    verify = await client.post("/api/token/verify", json={"token": token})
    assert_problem(verify, 401, *TOKEN_ERRORS)
    refresh = await client.post("/api/token/refresh", json={"refresh_token": token})
    assert_problem(refresh, 401, *TOKEN_ERRORS)
    revoke = await client.post("/api/token/revoke", json={"refresh_token": token})
    assert revoke.status_code in (204, 401), revoke.text
    if revoke.status_code == 401:
        assert_problem(revoke, 401, *TOKEN_ERRORS)


@pytest.mark.parametrize(("claim", "value"), ABSURD_CLAIMS, ids=repr)
async def test_signed_token_with_an_absurd_claim_is_401(
    client: httpx.AsyncClient, settings: Settings, claim: str, value: Any
) -> None:
    account = await register(client)
    await assert_refused_everywhere(client, with_claim(settings, account, claim, value))
    # The account is untouched: its own token still works.
    assert (await client.get("/api/users/me", headers=account.headers)).status_code == 200


@pytest.mark.parametrize(
    "payload",
    [
        b"[1, 2, 3]",
        b'"a string"',
        b"null",
        b"{" + b'"a":{' * 500 + b"}" * 501,
        b"[" * 1400 + b"]" * 1400,
        b"\xff\xfe not json",
        b'{"exp": 1e99999}',
    ],
    ids=["list", "string", "null", "deep-object", "deep-list", "not-utf8", "float-overflow"],
)
async def test_signed_token_whose_payload_is_not_a_claims_object_is_401(
    client: httpx.AsyncClient, settings: Settings, payload: bytes
) -> None:
    await assert_refused_everywhere(client, signed(settings, payload))
