"""The OpenAPI document as a contract clients are generated from: its shape (stable operation
ids, problem+json errors, summaries, tags, examples, no dangling references), a Python client
that openapi-python-client generates from it without a warning and that runs the core flow
against a real server, and TypeScript types from openapi-typescript that `tsc` accepts.

The generated code lives in a temporary directory (and the TypeScript types in
clients/typescript, ignored by git): it is never committed."""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import pkgutil
import re
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from http import HTTPStatus
from pathlib import Path
from types import ModuleType
from typing import Any, NoReturn

import httpx
import pytest
from fastapi import FastAPI

from app.config import Settings
from tests.conftest import ON_CI, ROOT, settings_env
from tests.live_server import LiveServer, live_server

PACKAGE = "inkwell_client"
TS_CLIENT = ROOT / "clients" / "typescript"
HTTP_METHODS = frozenset({"get", "put", "post", "delete", "options", "head", "patch", "trace"})
OPERATION_ID = re.compile(r"^[a-z]+(-[a-z]+)+$")
PROBLEM_REF = "#/components/schemas/Problem"
PROBLEM_JSON = "application/problem+json"
# What openapi-python-client prints when it drops or degrades part of the document.
GENERATOR_WARNING = re.compile(r"warning|could not|cannot|unable|skipping|error", re.IGNORECASE)
GENERATE_TIMEOUT_S = 120
NPM_CI_TIMEOUT_S = 300
NPM_RUN_TIMEOUT_S = 120
REQUEST_TIMEOUT_S = 10.0
PASSWORD = "correct horse battery staple"


def skip_or_fail(message: str) -> NoReturn:
    """A missing tool skips the test on a laptop; on CI it fails, so nothing is skipped there."""
    if ON_CI:
        pytest.fail(f"{message} (CI=true: this test may not be skipped)")
    pytest.skip(message)


def operations(schema: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    for path, item in schema["paths"].items():
        for method, operation in item.items():
            if method in HTTP_METHODS:
                yield f"{method.upper()} {path}", operation


def references(node: object) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref" and isinstance(value, str):
                yield value
            else:
                yield from references(value)
    elif isinstance(node, list):
        for value in node:
            yield from references(value)


def resolve(schema: dict[str, Any], node: dict[str, Any]) -> dict[str, Any]:
    """A `#/components/schemas/X` reference's target ({} when it is missing), else the node."""
    ref = node.get("$ref")
    if not isinstance(ref, str):
        return node
    target: dict[str, Any] = schema["components"]["schemas"].get(ref.rsplit("/", 1)[-1], {})
    return target


# ---------------------------------------------------------------------------------------------
# The document, as the running server serves it


@pytest.fixture(scope="module")
def server(settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    # The run's settings (database, Redis and broker in services mode, JWT secret, SMTP); no
    # rate limits: every request comes from 127.0.0.1.
    env = settings_env(settings) | {"RATE_LIMITS_ENABLED": "false"}
    log = tmp_path_factory.mktemp("generated-client") / "api.log"
    with live_server("generated-client", env, log) as api:
        yield api


@pytest.fixture(scope="module")
def schema(server: LiveServer) -> dict[str, Any]:
    response = httpx.get(f"{server.url}/openapi.json", timeout=REQUEST_TIMEOUT_S)
    assert response.status_code == 200, response.text
    document: dict[str, Any] = response.json()
    return document


@pytest.fixture(scope="module")
def schema_file(schema: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("openapi") / "openapi.json"
    path.write_text(json.dumps(schema, indent=2) + "\n")
    return path


def test_operation_ids_are_kebab_case_and_unique(schema: dict[str, Any]) -> None:
    ids = [(name, str(op.get("operationId", ""))) for name, op in operations(schema)]
    malformed = [f"{name}: {op_id!r}" for name, op_id in ids if not OPERATION_ID.match(op_id)]
    assert not malformed, "operation ids not like `posts-create`:\n" + "\n".join(malformed)
    seen: dict[str, str] = {}
    duplicates = []
    for name, op_id in ids:
        if op_id in seen:
            duplicates.append(f"{op_id}: {seen[op_id]} and {name}")
        seen[op_id] = name
    assert not duplicates, "duplicate operation ids:\n" + "\n".join(duplicates)


def test_every_error_response_is_a_problem_document(schema: dict[str, Any]) -> None:
    wrong = []
    for name, operation in operations(schema):
        for status, response in operation["responses"].items():
            if not status.startswith(("4", "5")):
                continue
            content = response.get("content", {})
            if list(content) != [PROBLEM_JSON] or content[PROBLEM_JSON].get("schema") != {
                "$ref": PROBLEM_REF
            }:
                wrong.append(f"{name} {status}: {json.dumps(content)}")
    assert not wrong, f"error responses that are not only {PROBLEM_JSON} -> Problem:\n" + (
        "\n".join(wrong)
    )


def test_no_fastapi_validation_error_schema(schema: dict[str, Any]) -> None:
    assert "HTTPValidationError" not in json.dumps(schema)
    assert "ValidationError" not in schema["components"]["schemas"]


def test_every_operation_has_a_summary_and_tags(schema: dict[str, Any]) -> None:
    bare = [
        name
        for name, operation in operations(schema)
        if not operation.get("summary") or not operation.get("tags")
    ]
    assert not bare, "operations without a summary or tags:\n" + "\n".join(bare)


def test_every_request_body_has_an_example(schema: dict[str, Any]) -> None:
    missing = []
    for name, operation in operations(schema):
        for media_type, media in operation.get("requestBody", {}).get("content", {}).items():
            body_schema = resolve(schema, media.get("schema", {}))
            if not any(
                key in where for key in ("example", "examples") for where in (media, body_schema)
            ):
                missing.append(f"{name} {media_type}")
    assert not missing, "request bodies without an example:\n" + "\n".join(missing)


def test_every_reference_resolves(schema: dict[str, Any]) -> None:
    components = schema["components"]
    dangling = []
    for ref in sorted(set(references(schema))):
        section, _, name = ref.removeprefix("#/components/").partition("/")
        if not ref.startswith("#/components/") or name not in components.get(section, {}):
            dangling.append(ref)
    assert not dangling, "references to nothing:\n" + "\n".join(dangling)


# ---------------------------------------------------------------------------------------------
# A Python client generated from it


@dataclass
class GeneratedClient:
    package: ModuleType
    output: str

    def module(self, name: str) -> ModuleType:
        return importlib.import_module(f"{PACKAGE}.{name}")

    def endpoint(self, tag: str, operation_id: str) -> ModuleType:
        """The module openapi-python-client writes for an operation: `api.<tag>.<id>`."""
        return self.module(f"api.{tag}.{operation_id.replace('-', '_')}")


def python_generator() -> str | None:
    """openapi-python-client from this interpreter's environment, else from PATH."""
    here = str(Path(sys.executable).parent)
    return shutil.which("openapi-python-client", path=os.pathsep.join([here, os.defpath])) or (
        shutil.which("openapi-python-client")
    )


@pytest.fixture(scope="module")
def generated(
    schema_file: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GeneratedClient]:
    generator = python_generator()
    if generator is None:
        skip_or_fail("openapi-python-client is not installed (it is a dev dependency)")
    root = tmp_path_factory.mktemp("python-client")
    config = root / "config.json"
    # No post hooks: the generated code is imported, not committed, so it need not be formatted.
    config.write_text(
        json.dumps(
            {
                "project_name_override": "inkwell-client",
                "package_name_override": PACKAGE,
                "post_hooks": [],
            }
        )
    )
    command = [
        generator,
        "generate",
        "--path",
        str(schema_file),
        "--output-path",
        str(root / PACKAGE),  # with --meta none this is the package itself
        "--meta",
        "none",
        "--config",
        str(config),
    ]
    result = subprocess.run(  # noqa: S603 - our own fixed arguments
        command, cwd=root, capture_output=True, text=True, timeout=GENERATE_TIMEOUT_S, check=False
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"openapi-python-client failed:\n{output}"
    sys.path.insert(0, str(root))
    importlib.invalidate_caches()
    try:
        yield GeneratedClient(importlib.import_module(PACKAGE), output)
    finally:
        sys.path.remove(str(root))
        for name in [n for n in sys.modules if n == PACKAGE or n.startswith(f"{PACKAGE}.")]:
            del sys.modules[name]


def test_python_client_generates_without_warnings(generated: GeneratedClient) -> None:
    warnings = [line for line in generated.output.splitlines() if GENERATOR_WARNING.search(line)]
    assert not warnings, (
        "openapi-python-client warned about the schema:\n" + generated.output.strip()
    )


def test_every_generated_module_imports(generated: GeneratedClient) -> None:
    broken = []
    for module in pkgutil.walk_packages(generated.package.__path__, f"{PACKAGE}."):
        try:
            importlib.import_module(module.name)
        except Exception as exc:  # the generator can write code that does not run
            broken.append(f"{module.name}: {type(exc).__name__}: {exc}")
    assert not broken, "generated modules that do not import:\n" + "\n".join(broken)


async def test_core_flow_through_the_generated_client(
    server: LiveServer,
    generated: GeneratedClient,
    app: FastAPI,  # the suite's per-test clean-up (rows, Redis) comes with it
) -> None:
    models = generated.module("models")
    users_register = generated.endpoint("users", "users-register")
    token_obtain = generated.endpoint("tokens", "token-obtain")
    token_refresh = generated.endpoint("tokens", "token-refresh")
    token_verify = generated.endpoint("tokens", "token-verify")
    posts_create = generated.endpoint("posts", "posts-create")
    posts_list = generated.endpoint("posts", "posts-list")
    posts_update = generated.endpoint("posts", "posts-update")
    posts_delete = generated.endpoint("posts", "posts-delete")
    posts_read = generated.endpoint("posts", "posts-read")
    login_model = getattr(models, "LoginRequest", None)
    assert login_model is not None, (
        "token-obtain has no JSON body model in the generated client (see the generator's "
        f"warnings):\n{generated.output.strip()}"
    )
    timeout = httpx.Timeout(REQUEST_TIMEOUT_S)
    username = f"gen_{uuid.uuid4().hex[:12]}"

    async with generated.package.Client(base_url=server.url, timeout=timeout) as anonymous:
        # users-register: 201 with the account and a first token pair.
        registered = await users_register.asyncio_detailed(
            client=anonymous,
            body=models.UserCreate(
                email=f"{username}@example.com", username=username, password=PASSWORD
            ),
        )
        assert registered.status_code == HTTPStatus.CREATED, registered.content
        assert isinstance(registered.parsed, models.Registered)
        user = registered.parsed.user
        assert (user.username, user.email) == (username, f"{username}@example.com")
        assert registered.headers["location"] == f"/api/users/{user.id}"
        first_pair = registered.parsed.tokens

        # token-obtain, with the JSON body (the OAuth2 form is the other variant).
        login = await token_obtain.asyncio_detailed(
            client=anonymous, body=login_model(username=username, password=PASSWORD)
        )
        assert login.status_code == HTTPStatus.OK, login.content
        assert isinstance(login.parsed, models.TokenPair)
        assert login.parsed.token_type == "bearer"
        login_pair = login.parsed

        # token-refresh rotates: a new pair, and the spent refresh token is refused (which ends
        # that login's session, so the posts below use the registration's tokens).
        refreshed = await token_refresh.asyncio_detailed(
            client=anonymous, body=models.RefreshRequest(refresh_token=login_pair.refresh_token)
        )
        assert refreshed.status_code == HTTPStatus.OK, refreshed.content
        assert isinstance(refreshed.parsed, models.TokenPair)
        assert refreshed.parsed.refresh_token != login_pair.refresh_token
        assert refreshed.parsed.access_token != login_pair.access_token
        replayed = await token_refresh.asyncio_detailed(
            client=anonymous, body=models.RefreshRequest(refresh_token=login_pair.refresh_token)
        )
        assert replayed.status_code == HTTPStatus.UNAUTHORIZED, replayed.content
        assert isinstance(replayed.parsed, models.Problem)
        assert (replayed.parsed.status, replayed.parsed.code) == (401, "token_reused")
        revoked = await token_verify.asyncio_detailed(
            client=anonymous, body=models.VerifyRequest(token=refreshed.parsed.access_token)
        )
        assert revoked.status_code == HTTPStatus.UNAUTHORIZED, revoked.content
        assert isinstance(revoked.parsed, models.Problem)
        assert revoked.parsed.code == "token_revoked"

    async with generated.package.AuthenticatedClient(
        base_url=server.url, token=first_pair.access_token, timeout=timeout
    ) as author:
        # posts-create: 201, a parsed PostOut with the tags lower-cased and de-duplicated.
        created = await posts_create.asyncio_detailed(
            client=author,
            body=models.PostCreate(
                title="  Generated clients  ",
                content="Typed functions from the **OpenAPI** document.",
                tags=["OpenAPI", "python", "openapi"],
            ),
        )
        assert created.status_code == HTTPStatus.CREATED, created.content
        post = created.parsed
        assert isinstance(post, models.PostOut)
        assert post.title == "Generated clients"
        assert sorted(post.tags) == ["openapi", "python"]
        assert (post.author.username, post.published, post.likes) == (username, True, 0)
        assert created.headers["location"] == f"/api/posts/{post.id}"

        # posts-list with query filters finds it.
        listed = await posts_list.asyncio_detailed(
            client=author,
            q="typed functions",
            tag=["python", "openapi"],
            author=username,
            sort=models.PostsListSort("-created_at"),
            limit=5,
        )
        assert listed.status_code == HTTPStatus.OK, listed.content
        assert isinstance(listed.parsed, models.PostPage)
        assert [p.id for p in listed.parsed.items] == [post.id]
        assert (listed.parsed.total, listed.parsed.limit, listed.parsed.offset) == (1, 5, 0)
        assert listed.parsed.total_exact

        # ... and by cursor: the other shape of the same operation.
        by_cursor = await posts_list.asyncio_detailed(client=author, author=username, cursor="")
        assert by_cursor.status_code == HTTPStatus.OK, by_cursor.content
        assert isinstance(by_cursor.parsed, models.CursorPagePostOut)
        assert [p.id for p in by_cursor.parsed.items] == [post.id]

        # posts-update changes the title only.
        updated = await posts_update.asyncio_detailed(
            post.id, client=author, body=models.PostPatch(title="Generated, then patched")
        )
        assert updated.status_code == HTTPStatus.OK, updated.content
        assert isinstance(updated.parsed, models.PostOut)
        assert updated.parsed.title == "Generated, then patched"
        assert updated.parsed.content == post.content

        # posts-delete, then posts-read answers 404 with the Problem document.
        deleted = await posts_delete.asyncio_detailed(post.id, client=author)
        assert deleted.status_code == HTTPStatus.NO_CONTENT, deleted.content
        gone = await posts_read.asyncio_detailed(post.id, client=author)
        assert gone.status_code == HTTPStatus.NOT_FOUND, gone.content
        assert isinstance(gone.parsed, models.Problem)
        assert (gone.parsed.status, gone.parsed.code) == (404, "post_not_found")


# ---------------------------------------------------------------------------------------------
# TypeScript types generated from it


def npm(
    executable: str, *args: str, timeout: float, env: dict[str, str]
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(  # noqa: S603 - our own fixed arguments
        [executable, *args],
        cwd=TS_CLIENT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert result.returncode == 0, f"npm {' '.join(args)} failed:\n{result.stdout}{result.stderr}"
    return result


def install_node_modules(executable: str, env: dict[str, str]) -> None:
    """`npm ci` unless node_modules was installed from this very package-lock.json."""
    lock = hashlib.sha256((TS_CLIENT / "package-lock.json").read_bytes()).hexdigest()
    marker = TS_CLIENT / "node_modules" / ".inkwell-lock.sha256"
    if marker.is_file() and marker.read_text().strip() == lock:
        return
    npm(executable, "ci", "--prefer-offline", timeout=NPM_CI_TIMEOUT_S, env=env)
    marker.write_text(lock + "\n")


def test_typescript_types_compile(schema: dict[str, Any]) -> None:
    executable = shutil.which("npm")
    if executable is None:
        skip_or_fail("npm is not installed (Node.js 20 or later is needed)")
    env = {
        **os.environ,
        "npm_config_audit": "false",
        "npm_config_fund": "false",
        "npm_config_update_notifier": "false",
    }
    (TS_CLIENT / "openapi.json").write_text(json.dumps(schema, indent=2) + "\n")
    install_node_modules(executable, env)
    generated = TS_CLIENT / "src" / "inkwell.d.ts"
    generated.unlink(missing_ok=True)
    npm(executable, "run", "generate", timeout=NPM_RUN_TIMEOUT_S, env=env)
    assert "export interface paths" in generated.read_text()
    npm(executable, "run", "check", timeout=NPM_RUN_TIMEOUT_S, env=env)
