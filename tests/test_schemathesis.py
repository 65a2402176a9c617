"""The OpenAPI document is a contract the server keeps: Schemathesis (`--checks all`) sends it
schema-valid and schema-violating requests of every operation, follows its links statefully
(create a post, then read, change, like and delete it), and fails on any answer the document
does not promise: an undeclared status, a body or header that does not match, a valid request
refused, an invalid one accepted, a wrong `Allow`, a 500.

It runs against `python -m app run` with the run's settings (SQLite and memory, or PostgreSQL
and Redis), rate limits off (every request comes from 127.0.0.1), and a time budget
(`SCHEMATHESIS_MAX_TIME`, seconds): fuzzing and the stateful phase repeat until it is spent.
Settings and the authentication hook: tests/schemathesis.toml, tests/schemathesis_hooks.py.
A failure prints Schemathesis' report, with a `curl` line that reproduces each finding."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from app.config import Settings
from app.schemas.post import PostPatch
from app.schemas.user import AdminUserUpdate, ProfileUpdate
from tests.conftest import ROOT, settings_env
from tests.factories import register
from tests.live_server import LiveServer, live_server
from tests.problems import assert_problem

SCHEMATHESIS = Path(sys.executable).with_name("schemathesis")
CONFIG = ROOT / "tests" / "schemathesis.toml"
MAX_TIME_S = int(os.environ.get("SCHEMATHESIS_MAX_TIME", "45"))
# A fixed seed by default, so that a run can be repeated; SCHEMATHESIS_SEED=random explores.
SEED = os.environ.get("SCHEMATHESIS_SEED", "20261125")
MAX_EXAMPLES = 10
# Room for the phases that are not repeated (examples, coverage) to finish on a busy machine.
TIMEOUT_S = MAX_TIME_S * 3 + 120


@pytest.fixture(scope="module")
def server(settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    env = settings_env(settings) | {"RATE_LIMITS_ENABLED": "false"}
    log = tmp_path_factory.mktemp("schemathesis") / "api.log"
    with live_server("schemathesis", env, log) as api:
        yield api


@pytest.mark.timeout(TIMEOUT_S + 30)
async def test_the_server_keeps_every_promise_of_its_openapi_document(
    server: LiveServer,
    tmp_path: Path,
    app: FastAPI,  # the suite's per-test clean-up (rows, Redis) comes with it
) -> None:
    command = [
        str(SCHEMATHESIS),
        "--config-file",
        str(CONFIG),
        "--no-color",
        "run",
        f"{server.url}/openapi.json",
        "--checks",
        "all",
        "--max-examples",
        str(MAX_EXAMPLES),
        "--max-time",
        str(MAX_TIME_S),
        "--report",
        "junit",
        "--report-dir",
        str(tmp_path),
    ]
    if SEED != "random":
        command += ["--seed", SEED]
    result = await asyncio.to_thread(
        subprocess.run,
        command,
        cwd=ROOT,  # the config names its hooks file relative to the repository
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
        check=False,
    )
    report = result.stdout[result.stdout.find("=== FAILURES ===") :] or result.stdout
    assert result.returncode == 0, (
        f"Schemathesis found the server and its OpenAPI document disagreeing "
        f"(exit {result.returncode}):\n{report[-20_000:]}\n{result.stderr[-4000:]}\n"
        f"server log:\n{server.output()}"
    )
    assert "No test cases were generated" not in result.stdout, result.stdout


# ---------------------------------------------------------------------------------------------
# What the run above found once, one mechanism at a time (fast, in-process)


@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [
        ("OPTIONS", "/api/posts", "GET, POST"),
        ("OPTIONS", "/api/posts/1", "DELETE, GET, PATCH, PUT"),
        ("DELETE", "/api/users", "GET, POST"),
        ("PATCH", "/api/users/verify", "POST"),  # not PATCH /api/users/{user_id}'s admin check
        ("POST", "/api/users/3", "DELETE, GET, PATCH"),
        ("POST", "/media/x.webp", "GET, HEAD"),
    ],
)
async def test_405_allows_every_method_of_the_path(
    client: httpx.AsyncClient, method: str, path: str, allow: str
) -> None:
    account = await register(client)
    response = await client.request(method, path, headers=account.headers)

    assert_problem(response, 405, "method_not_allowed")
    assert response.headers["allow"] == allow


@pytest.mark.parametrize("path", ["/api/users", "/api/token/refresh", "/api/posts"])
@pytest.mark.parametrize("body", [b"\xc3\x28", b'{"title": "\xff"}'], ids=["latin", "in-string"])
async def test_a_body_that_is_not_utf8_is_the_declared_422(
    client: httpx.AsyncClient, path: str, body: bytes
) -> None:
    account = await register(client)
    response = await client.post(
        path, content=body, headers={"Content-Type": "application/json", **account.headers}
    )

    problem = assert_problem(response, 422, "validation_error")
    assert problem["errors"][0]["type"] == "json_invalid"


async def test_a_query_parameter_taking_one_value_is_refused_twice(
    client: httpx.AsyncClient,
) -> None:
    twice = await client.get("/api/posts", params=[("q", "a"), ("q", "b")])
    problem = assert_problem(twice, 422, "validation_error")
    assert problem["errors"][0]["loc"] == ["query", "q"]
    assert_problem(await client.get("/api/tags?limit=1&limit=2"), 422, "validation_error")
    # A list repeats; what a route does not take is ignored, repeated or not.
    assert (await client.get("/api/posts?tag=a&tag=b&x=1&x=2")).status_code == 200


async def test_booleans_are_json_booleans(client: httpx.AsyncClient) -> None:
    account = await register(client)
    response = await client.post(
        "/api/posts",
        json={"title": "t", "content": "c", "published": 0},
        headers=account.headers,
    )

    assert_problem(response, 422, "validation_error")


@pytest.fixture
async def document(client: httpx.AsyncClient) -> dict[str, Any]:
    schema: dict[str, Any] = (await client.get("/openapi.json")).json()
    return schema


async def test_an_empty_202_documents_no_body(document: dict[str, Any]) -> None:
    for path in ("/api/password-reset", "/api/users/me/verify/resend"):
        accepted = document["paths"][path]["post"]["responses"]["202"]
        assert "content" not in accepted, path


async def test_patch_fields_are_optional_not_nullable(document: dict[str, Any]) -> None:
    schemas = document["components"]["schemas"]
    for model in (PostPatch, ProfileUpdate, AdminUserUpdate):
        name = model.__name__
        for field, schema in schemas[name]["properties"].items():
            assert "default" not in schema, f"{name}.{field}"
            if field in model.NULLABLE:  # where null means something: clear it
                assert {"type": "null"} in schema["anyOf"], f"{name}.{field}"
                continue
            assert "null" not in str(schema.get("anyOf", "")), f"{name}.{field}"
            assert schema.get("type") != "null", f"{name}.{field}"
            assert "default" not in schema, f"{name}.{field}"


async def test_text_that_refuses_nul_says_so(document: dict[str, Any]) -> None:
    schemas = document["components"]["schemas"]
    assert schemas["TokenBody"]["properties"]["token"]["pattern"] == r"^[^\u0000]*$"
    assert schemas["PostCreate"]["properties"]["title"]["pattern"].startswith(r"^[^\u0000]*")
    parameters = document["paths"]["/api/posts"]["get"]["parameters"]
    q = next(p for p in parameters if p["name"] == "q")["schema"]
    assert q["anyOf"][0]["pattern"] == r"^[^\u0000]*$"


async def test_tags_are_documented_as_validated(document: dict[str, Any]) -> None:
    tags = document["components"]["schemas"]["PostCreate"]["properties"]["tags"]
    assert tags["maxItems"] == 10
    assert tags["items"]["pattern"] == "^[A-Za-z0-9_-]{1,32}$"


async def test_what_a_post_creates_links_to_what_uses_it(document: dict[str, Any]) -> None:
    created = document["paths"]["/api/posts"]["post"]["responses"]["201"]["links"]
    assert created["posts-read"] == {
        "operationId": "posts-read",
        "parameters": {"post_id": "$response.body#/id"},
    }
    assert {"posts-update", "posts-delete", "posts-like", "images-upload"} <= set(created)
    uploaded = document["paths"]["/api/posts/{post_id}/images"]["post"]["responses"]["202"]
    assert uploaded["links"]["images-read"]["parameters"] == {
        "post_id": "$request.path.post_id",
        "image_id": "$response.body#/id",
    }
    assert uploaded["links"]["tasks-read"]["parameters"] == {"task_id": "$response.body#/task_id"}
