"""Operations: request ids, Prometheus metrics, structured access and task logs, and readiness
naming each failing dependency. The same tests run in both modes; the Redis and broker checks
only exist in services mode.

Metrics are process-global (every app of the run counts into the same registry), so the tests
compare values before and after, never absolute ones."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
from asgi_lifespan import LifespanManager
from fastapi import FastAPI
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from app.config import Settings
from app.core.context import RequestContext, request_context
from app.core.logging import JsonFormatter, KeyValueFormatter, _RequestContextFilter
from app.core.metrics import UNMATCHED_ROUTE
from app.main import create_app
from app.models import Task
from app.routes import health as health_routes
from app.services import tasks as task_service
from app.tasks.jobs import PROCESS_IMAGE
from tests import images
from tests.conftest import SERVICES, running_app, settings_env
from tests.factories import PASSWORD, Account, create_post, register
from tests.live_server import live_server
from tests.problems import assert_problem
from tests.redis_server import free_port
from tests.services import CeleryWorker, SmtpServer, text_body

POST_ROUTE = "/api/posts/{post_id}"
GENERATED_ID = re.compile(r"^[0-9a-f]{32}$")
REQUESTS = "inkwell_http_requests_total"
DURATION = "inkwell_http_request_duration_seconds"
ACCESS_LOGGER = "app.access"
WORKER_LOG_TIMEOUT_S = 15.0

Labels = tuple[tuple[str, str], ...]


# -- helpers -----------------------------------------------------------------------------------


class Scrape:
    """One `/metrics` answer, parsed: every sample by its name and labels."""

    def __init__(self, text: str) -> None:
        self.families = {f.name: f for f in text_string_to_metric_families(text)}
        self.samples: dict[tuple[str, Labels], float] = {}
        for family in self.families.values():
            for sample in family.samples:
                self.samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value

    def series(self, name: str, **labels: str) -> dict[Labels, float]:
        """The samples of `name` whose labels include `labels`."""
        wanted = set(labels.items())
        return {
            sample_labels: value
            for (sample_name, sample_labels), value in self.samples.items()
            if sample_name == name and wanted <= set(sample_labels)
        }

    def value(self, name: str, **labels: str) -> float:
        """The one sample of `name` with exactly these labels; 0 when it does not exist yet."""
        return self.samples.get((name, tuple(sorted(labels.items()))), 0.0)

    def routes(self) -> set[str]:
        return {dict(labels)["route"] for labels in self.series(REQUESTS)}


async def scrape(client: httpx.AsyncClient) -> Scrape:
    response = await client.get("/metrics")
    assert response.status_code == 200, response.text
    return Scrape(response.text)


def grown(before: Scrape, after: Scrape, name: str) -> dict[Labels, float]:
    """The series of `name` that changed between two scrapes, and by how much."""
    changes = {}
    for labels, value in after.series(name).items():
        delta = value - before.samples.get((name, labels), 0.0)
        if delta:
            changes[labels] = delta
    return changes


def labels(**values: str) -> Labels:
    return tuple(sorted(values.items()))


def capture_with_request_context(caplog: pytest.LogCaptureFixture, *loggers: str) -> None:
    """Capture INFO records of `loggers` as the app's handler sees them: its filter adds the
    request id (and the user) from the request context. pytest makes a new capture handler for
    each test phase, so this must run in the test itself, not in a fixture."""
    for name in loggers:
        caplog.set_level(logging.INFO, logger=name)
    caplog.handler.addFilter(_RequestContextFilter())


def access_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == ACCESS_LOGGER and r.getMessage() == "request"]


def trace_id() -> str:
    return f"trace-{uuid.uuid4()}"


def closed_port_url(scheme: str = "redis") -> str:
    return f"{scheme}://127.0.0.1:{free_port()}/0"


@pytest.fixture
async def author(client: httpx.AsyncClient) -> Account:
    return await register(client)


# -- request ids -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/health"),
        ("GET", "/health/ready"),
        ("GET", "/metrics"),
        ("GET", "/api/posts"),
        ("GET", "/api/posts/987654"),  # 404 problem
        ("GET", "/api/users/me"),  # 401 problem
        ("POST", "/api/posts"),  # 401 before validation
        ("GET", "/no/such/path"),  # unmatched 404
        ("DELETE", "/health"),  # 405
    ],
)
async def test_every_response_has_a_generated_request_id(
    client: httpx.AsyncClient, method: str, path: str
) -> None:
    first = await client.request(method, path)
    second = await client.request(method, path)

    for response in (first, second):
        assert GENERATED_ID.match(response.headers["X-Request-ID"]), response.headers
    assert first.headers["X-Request-ID"] != second.headers["X-Request-ID"]


@pytest.mark.parametrize(
    "request_id",
    [
        "trace-0b9d1c2e-5f3a-4f7e-9a1b-2c3d4e5f6a7b",
        "a",
        "abc.DEF_123:xyz-9",
        "x" * 128,
    ],
    ids=["uuid", "one-char", "all-allowed-characters", "128-chars"],
)
async def test_a_valid_incoming_request_id_is_echoed(
    client: httpx.AsyncClient, request_id: str
) -> None:
    for path in ("/health", "/api/posts/987654"):
        response = await client.get(path, headers={"X-Request-ID": request_id})
        assert response.headers["X-Request-ID"] == request_id


@pytest.mark.parametrize(
    "request_id",
    ["x" * 129, "has space", "semi;colon", "slash/ed", "<script>", 'quote"d', ""],
    ids=["too-long", "space", "semicolon", "slash", "angle-brackets", "quote", "empty"],
)
async def test_an_invalid_incoming_request_id_is_replaced(
    client: httpx.AsyncClient, request_id: str
) -> None:
    response = await client.get("/health", headers={"X-Request-ID": request_id})

    assert response.status_code == 200
    assert response.headers["X-Request-ID"] != request_id
    assert GENERATED_ID.match(response.headers["X-Request-ID"])
    assert len(response.headers.get_list("X-Request-ID")) == 1


async def test_an_unexpected_error_answers_500_with_the_request_id_and_logs_it(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    application = create_app(settings, configure_logs=False)

    @application.get("/test-only/boom")
    async def boom() -> None:
        raise RuntimeError("boom")

    capture_with_request_context(caplog, "app")
    request_id = trace_id()
    transport = httpx.ASGITransport(app=application, raise_app_exceptions=False)
    async with (
        LifespanManager(application),
        httpx.AsyncClient(transport=transport, base_url="http://t") as client,
    ):
        response = await client.get("/test-only/boom", headers={"X-Request-ID": request_id})

    body = assert_problem(response, 500, "internal_error")
    assert "boom" not in response.text  # no traceback, no message
    assert body["detail"]
    assert response.headers.get("X-Request-ID") == request_id
    (error,) = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert error.exc_info is not None
    assert error.__dict__.get("request_id") == request_id  # the line to find the request by
    (access,) = access_records(caplog)
    assert access.__dict__["status"] == 500
    assert access.__dict__["request_id"] == request_id


async def test_a_non_ascii_request_id_is_replaced(client: httpx.AsyncClient) -> None:
    response = await client.get("/health", headers=[(b"X-Request-ID", "caf\u00e9".encode())])

    assert GENERATED_ID.match(response.headers["X-Request-ID"])


# -- metrics -----------------------------------------------------------------------------------


async def test_metrics_is_prometheus_text(client: httpx.AsyncClient) -> None:
    await client.get("/health")

    response = await client.get("/metrics")

    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    assert "version=" in response.headers["content-type"]
    families = {f.name: f.type for f in text_string_to_metric_families(response.text)}
    assert families["inkwell_http_requests"] == "counter"
    assert families[DURATION] == "histogram"
    assert families["inkwell_tasks_queued"] == "counter"
    assert families["inkwell_tasks"] == "gauge"
    # /health was answered before this scrape, so it is counted already
    after = Scrape(response.text)
    assert after.value(REQUESTS, method="GET", route="/health", status="200") >= 1


async def test_requests_are_counted_by_route_template_not_raw_path(
    client: httpx.AsyncClient, author: Account
) -> None:
    first = await create_post(client, author)
    second = await create_post(client, author)
    before = await scrape(client)

    for post in (first, second):
        response = await client.get(f"/api/posts/{post['id']}")
        assert response.status_code == 200
    after = await scrape(client)

    read = labels(method="GET", route=POST_ROUTE, status="200")
    scraped = labels(method="GET", route="/metrics", status="200")
    # one series for both ids (and the first scrape itself), nothing else moved
    assert grown(before, after, REQUESTS) == {read: 2.0, scraped: 1.0}
    routes = after.routes()
    for post in (first, second):
        assert f"/api/posts/{post['id']}" not in routes
    assert not [route for route in routes if re.search(r"/\d+(/|$)", route)], routes

    # the histogram has the same route label, with buckets, a count and a sum
    timing = labels(method="GET", route=POST_ROUTE)
    assert after.value(f"{DURATION}_count", **dict(timing)) - before.value(
        f"{DURATION}_count", **dict(timing)
    ) == pytest.approx(2)
    buckets = after.series(f"{DURATION}_bucket", method="GET", route=POST_ROUTE)
    assert len(buckets) > 1
    assert after.value(f"{DURATION}_bucket", **dict(timing), le="+Inf") - before.value(
        f"{DURATION}_bucket", **dict(timing), le="+Inf"
    ) == pytest.approx(2)
    assert after.value(f"{DURATION}_sum", **dict(timing)) > before.value(
        f"{DURATION}_sum", **dict(timing)
    )


async def test_status_is_a_label_of_the_request_counter(
    client: httpx.AsyncClient, author: Account
) -> None:
    post = await create_post(client, author)
    before = await scrape(client)

    assert (await client.get(f"/api/posts/{post['id']}")).status_code == 200
    assert (await client.get("/api/posts/987654")).status_code == 404
    etag = (await client.get(f"/api/posts/{post['id']}")).headers["ETag"]
    cached = await client.get(f"/api/posts/{post['id']}", headers={"If-None-Match": etag})
    assert cached.status_code == 304
    after = await scrape(client)

    changes = grown(before, after, REQUESTS)
    assert changes[labels(method="GET", route=POST_ROUTE, status="200")] == 2
    assert changes[labels(method="GET", route=POST_ROUTE, status="404")] == 1
    assert changes[labels(method="GET", route=POST_ROUTE, status="304")] == 1


async def test_unknown_paths_are_counted_as_unmatched(client: httpx.AsyncClient) -> None:
    before = await scrape(client)

    for n in range(3):
        response = await client.get(f"/no/such/path/{n}-{uuid.uuid4().hex}")
        assert_problem(response, 404)
    after = await scrape(client)

    unmatched = labels(method="GET", route=UNMATCHED_ROUTE, status="404")
    assert grown(before, after, REQUESTS)[unmatched] == 3
    assert not [route for route in after.routes() if "/no/such/path" in route]
    assert after.series(f"{DURATION}_count", route=UNMATCHED_ROUTE)


async def test_media_files_are_counted_under_the_mount_not_each_file(
    client: httpx.AsyncClient,
) -> None:
    before = await scrape(client)

    for n in range(2):
        response = await client.get(f"/media/images/nokey{n}/original.png")
        assert response.status_code == 404
    after = await scrape(client)

    changes = grown(before, after, REQUESTS)
    media = [dict(series)["route"] for series in changes if "/media" in dict(series)["route"]]
    assert len(media) == 1, changes
    assert media[0].startswith("/media")
    assert "nokey" not in media[0]
    assert not [route for route in after.routes() if "nokey" in route]


async def test_a_wrong_method_is_counted_under_the_route_template(
    client: httpx.AsyncClient,
) -> None:
    before = await scrape(client)

    response = await client.delete("/health")
    assert response.status_code == 405
    after = await scrape(client)

    changes = grown(before, after, REQUESTS)
    assert changes.get(labels(method="DELETE", route="/health", status="405")) == 1, changes


async def test_task_metrics_after_an_image_is_processed(
    client: httpx.AsyncClient, db: AsyncSession, author: Account
) -> None:
    post = await create_post(client, author)
    before = await scrape(client)

    response = await images.upload(client, post["id"], images.tiny_png(), author.headers)
    assert response.status_code == 202, response.text
    task_id = response.json()["task_id"]
    task = await images.wait_for_task(client, task_id, author.headers)
    assert task["state"] == "SUCCESS", task
    after = await scrape(client)

    stored = await db.scalar(select(Task.name).where(Task.id == task_id))
    assert stored == PROCESS_IMAGE
    assert after.value("inkwell_tasks", task=stored, state="SUCCESS") >= 1
    queued_before = before.value("inkwell_tasks_queued_total", task=stored)
    assert after.value("inkwell_tasks_queued_total", task=stored) == queued_before + 1
    # the gauge comes from the database: every series names a task and a state
    for series in after.series("inkwell_tasks"):
        assert set(dict(series)) == {"task", "state"}


async def test_task_gauge_counts_states_from_the_database(
    client: httpx.AsyncClient, db: AsyncSession, author: Account
) -> None:
    before = await scrape(client)
    db.add_all(
        [
            Task(id=str(uuid.uuid4()), name=PROCESS_IMAGE, state=state, user_id=author.id)
            for state in ("PENDING", "FAILURE", "FAILURE")
        ]
    )
    await db.commit()

    after = await scrape(client)

    for state, added in (("PENDING", 1), ("FAILURE", 2)):
        was = before.value("inkwell_tasks", task=PROCESS_IMAGE, state=state)
        assert after.value("inkwell_tasks", task=PROCESS_IMAGE, state=state) == was + added


async def test_metrics_can_be_turned_off(settings: Settings) -> None:
    async with running_app(settings.model_copy(update={"metrics_enabled": False})) as (_, client):
        response = await client.get("/metrics")
        health = await client.get("/health")

    assert_problem(response, 404)
    assert "X-Request-ID" in response.headers
    assert health.status_code == 200


# -- access logs -------------------------------------------------------------------------------


async def test_one_access_log_line_per_request(
    client: httpx.AsyncClient, author: Account, caplog: pytest.LogCaptureFixture
) -> None:
    post = await create_post(client, author)
    capture_with_request_context(caplog, ACCESS_LOGGER)
    ids = [trace_id() for _ in range(3)]

    anonymous = await client.get(f"/api/posts/{post['id']}", headers={"X-Request-ID": ids[0]})
    signed_in = await client.get(
        "/api/users/me", headers={"X-Request-ID": ids[1], **author.headers}
    )
    unknown = await client.get("/no/such/thing", headers={"X-Request-ID": ids[2]})

    assert [r.status_code for r in (anonymous, signed_in, unknown)] == [200, 200, 404]
    records = access_records(caplog)
    assert [getattr(r, "request_id", None) for r in records] == ids
    expected = [
        ("GET", POST_ROUTE, f"/api/posts/{post['id']}", 200, None),
        ("GET", "/api/users/me", "/api/users/me", 200, author.id),
        ("GET", UNMATCHED_ROUTE, "/no/such/thing", 404, None),
    ]
    for record, (method, route, path, status, user_id) in zip(records, expected, strict=True):
        fields = record.__dict__
        assert record.levelno == logging.INFO
        assert (fields["method"], fields["route"], fields["path"]) == (method, route, path)
        assert fields["status"] == status
        assert fields["user_id"] == user_id
        assert isinstance(fields["duration_ms"], float)
        assert fields["duration_ms"] >= 0
        assert fields["client"]


async def test_access_log_of_a_signed_in_write_names_the_user(
    client: httpx.AsyncClient, author: Account, caplog: pytest.LogCaptureFixture
) -> None:
    capture_with_request_context(caplog, ACCESS_LOGGER)
    request_id = trace_id()

    response = await client.post(
        "/api/posts",
        json={"title": "Logged", "content": "Body."},
        headers={"X-Request-ID": request_id, **author.headers},
    )

    assert response.status_code == 201
    (record,) = access_records(caplog)
    assert record.__dict__["request_id"] == request_id
    assert record.__dict__["user_id"] == author.id
    assert (record.__dict__["method"], record.__dict__["route"]) == ("POST", "/api/posts")
    assert record.__dict__["status"] == 201


async def test_a_rejected_token_logs_no_user(
    client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    capture_with_request_context(caplog, ACCESS_LOGGER)

    response = await client.get("/api/users/me", headers={"Authorization": "Bearer nonsense"})

    assert response.status_code == 401
    (record,) = access_records(caplog)
    assert record.__dict__["user_id"] is None
    assert record.__dict__["status"] == 401
    assert record.__dict__["request_id"] == response.headers["X-Request-ID"]


def access_record(**extra: Any) -> logging.LogRecord:
    """A record as the middleware makes it."""
    fields = {
        "method": "GET",
        "route": POST_ROUTE,
        "path": "/api/posts/7",
        "status": 200,
        "duration_ms": 1.25,
        "user_id": None,
        "client": "127.0.0.1",
        **extra,
    }
    return logging.getLogger(ACCESS_LOGGER).makeRecord(
        ACCESS_LOGGER, logging.INFO, __file__, 1, "request", (), None, extra=fields
    )


def filtered(record: logging.LogRecord, context: RequestContext | None) -> logging.LogRecord:
    token = request_context.set(context)
    try:
        assert _RequestContextFilter().filter(record)
    finally:
        request_context.reset(token)
    return record


def test_json_access_line_has_the_request_id_and_user() -> None:
    record = filtered(access_record(user_id=42), RequestContext("trace-json", user_id=42))

    line = JsonFormatter().format(record)

    assert "\n" not in line
    entry = json.loads(line)
    assert entry["message"] == "request"
    assert entry["logger"] == ACCESS_LOGGER
    assert entry["level"] == "info"
    assert entry["time"]
    assert entry["request_id"] == "trace-json"
    assert entry["user_id"] == 42
    assert entry["route"] == POST_ROUTE
    assert entry["path"] == "/api/posts/7"
    assert entry["status"] == 200
    assert entry["duration_ms"] == 1.25
    assert entry["method"] == "GET"


def test_json_access_line_of_an_anonymous_request() -> None:
    record = filtered(access_record(), RequestContext("trace-anon"))

    entry = json.loads(JsonFormatter().format(record))

    assert entry["request_id"] == "trace-anon"
    assert entry["user_id"] is None


def test_lines_outside_a_request_have_a_placeholder_request_id() -> None:
    record = logging.getLogger("app.test").makeRecord(
        "app.test", logging.INFO, __file__, 1, "started", (), None
    )

    entry = json.loads(JsonFormatter().format(filtered(record, None)))

    assert entry["request_id"] == "-"
    assert "user_id" not in entry


def test_other_lines_of_a_request_get_its_user_from_the_context() -> None:
    record = logging.getLogger("app.services.posts").makeRecord(
        "app.services.posts", logging.WARNING, __file__, 1, "post %s", (7,), None
    )

    entry = json.loads(JsonFormatter().format(filtered(record, RequestContext("r-1", 9))))

    assert (entry["message"], entry["request_id"], entry["user_id"]) == ("post 7", "r-1", 9)


def test_a_record_naming_its_own_request_id_keeps_it() -> None:
    record = logging.getLogger("app.tasks").makeRecord(
        "app.tasks", logging.INFO, __file__, 1, "task started", (), None,
        extra={"request_id": "queued-by"},
    )  # fmt: skip

    assert filtered(record, RequestContext("other")).__dict__["request_id"] == "queued-by"


def test_key_value_lines_quote_what_could_forge_another_field_or_line() -> None:
    record = logging.getLogger("app.access").makeRecord(
        "app.access", logging.INFO, __file__, 1, "request", (), None,
        extra={"path": "/a\rINFO forged=1", "agent": "curl/8 (x)", "plain": "ok"},
    )  # fmt: skip

    line = KeyValueFormatter().format(record)

    assert "\r" not in line
    assert "\n" not in line
    assert 'path="/a\\rINFO forged=1"' in line
    assert 'agent="curl/8 (x)"' in line
    assert "plain=ok" in line.split()


def test_key_value_access_line() -> None:
    record = filtered(access_record(user_id=5), RequestContext("trace-kv", user_id=5))

    line = KeyValueFormatter().format(record)

    assert line.startswith("INFO    app.access: request ")
    for pair in (
        "request_id=trace-kv",
        "user_id=5",
        f"route={POST_ROUTE}",
        "path=/api/posts/7",
        "status=200",
        "duration_ms=1.25",
        "method=GET",
    ):
        assert pair in line.split(), line


# -- task logs ---------------------------------------------------------------------------------


async def test_task_logs_carry_the_request_id_that_queued_them(
    app: FastAPI,
    client: httpx.AsyncClient,
    author: Account,
    celery_worker: CeleryWorker | None,
    caplog: pytest.LogCaptureFixture,
) -> None:
    post = await create_post(client, author)
    capture_with_request_context(caplog, "app.tasks")
    request_id = trace_id()
    offset = _log_size(celery_worker)

    response = await images.upload(
        client, post["id"], images.tiny_png(), {"X-Request-ID": request_id, **author.headers}
    )

    assert response.status_code == 202, response.text
    assert response.headers["X-Request-ID"] == request_id
    task_id = response.json()["task_id"]
    image = await images.wait_until_processed(client, response.headers["Location"], author.headers)
    assert image["status"] == "ready", image
    if celery_worker is None:
        await app.state.backends.runner.drain()  # "task finished" follows the image's commit
        for message in ("task started", "task finished"):
            (record,) = [
                r
                for r in caplog.records
                if r.getMessage() == message and r.__dict__.get("task_id") == task_id
            ]
            assert record.__dict__["request_id"] == request_id, message
            assert record.__dict__["task"] == PROCESS_IMAGE
        return
    for message in ("task started", "task finished"):
        line = await _worker_line(celery_worker, offset, message, task_id)
        assert f"request_id={request_id}" in line.split(), line


async def test_task_logs_never_show_the_secrets_a_job_carries(
    app: FastAPI,
    client: httpx.AsyncClient,
    smtp_server: SmtpServer,
    celery_worker: CeleryWorker | None,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # The e-mail jobs carry single-use links: whoever reads the logs must not be able to verify
    # someone's address or reset their password with them.
    caplog.set_level(logging.DEBUG)
    offset = _log_size(celery_worker)
    account = await register(client)
    response = await client.post("/api/password-reset", json={"email": account.email})
    assert response.status_code == 202

    messages = await asyncio.to_thread(smtp_server.wait_for, account.email, 20.0, 2)
    tokens = [_link_token(text_body(m)) for m in messages]
    assert len(tokens) == 2, [m["Subject"] for m in messages]
    if celery_worker is None:
        await app.state.backends.runner.drain()
        formatter = KeyValueFormatter()
        text = "\n".join(formatter.format(r) for r in caplog.records)
    else:
        async with app.state.session_factory() as db:
            task_ids = list(await db.scalars(select(Task.id).where(Task.user_id == account.id)))
        assert len(task_ids) == 2
        for task_id in task_ids:
            await _worker_line(celery_worker, offset, "task finished", task_id)
        with celery_worker.log_path.open("rb") as log:
            log.seek(offset)
            text = log.read().decode(errors="replace")
    for token in tokens:
        leaks = [line for line in text.splitlines() if token in line]
        assert not leaks, "\n".join(leaks)


async def test_lines_logged_inside_a_job_carry_the_request_id_of_its_own_request(
    app: FastAPI,
    client: httpx.AsyncClient,
    smtp_server: SmtpServer,
    celery_worker: CeleryWorker | None,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # The e-mail job logs "e-mail sent" from inside the job. One request after another: a
    # worker process must not keep the request id of the first job it ever ran.
    capture_with_request_context(caplog, "app.core.mail")
    offset = _log_size(celery_worker)
    request_ids = [trace_id() for _ in range(3)]
    for request_id in request_ids:
        email = f"{request_id}@example.com"
        response = await client.post(
            "/api/users",
            json={
                "username": request_id.replace("-", "_")[:32],
                "email": email,
                "password": PASSWORD,
            },
            headers={"X-Request-ID": request_id},
        )
        assert response.status_code == 201, response.text
        assert await asyncio.to_thread(smtp_server.wait_for, email, 20.0)
    if celery_worker is None:
        await app.state.backends.runner.drain()
        seen = [r.__dict__["request_id"] for r in caplog.records if r.getMessage() == "e-mail sent"]
        assert seen == request_ids
        return
    for request_id in request_ids:
        await _worker_text_with(celery_worker, offset, f"request_id={request_id}", "e-mail sent")


async def _worker_text_with(worker: CeleryWorker, offset: int, *needles: str) -> str:
    """The first worker log line (after `offset`) that has every one of `needles`."""
    deadline = time.monotonic() + WORKER_LOG_TIMEOUT_S
    while True:
        with worker.log_path.open("rb") as log:
            log.seek(offset)
            text = log.read().decode(errors="replace")
        for line in text.splitlines():
            if all(needle in line for needle in needles):
                return line
        if time.monotonic() > deadline:
            tail = "\n".join(text.splitlines()[-40:])
            pytest.fail(f"no line with {needles} in the worker log:\n{tail}")
        await asyncio.sleep(0.1)


def _link_token(body: str) -> str:
    found = re.search(r"/(?:verify-email|reset-password)\?token=([A-Za-z0-9_\-]+)", body)
    assert found is not None, body
    return found.group(1)


def _log_size(worker: CeleryWorker | None) -> int:
    if worker is None or not worker.log_path.exists():
        return 0
    return worker.log_path.stat().st_size


async def _worker_line(worker: CeleryWorker, offset: int, message: str, task_id: str) -> str:
    """The worker's log line with `message` about the task, waiting for it to be written."""
    return await _worker_text_with(worker, offset, f"{message} ", f"task_id={task_id}")


# -- readiness ---------------------------------------------------------------------------------


async def test_readiness_checks_every_configured_dependency(client: httpx.AsyncClient) -> None:
    response = await client.get("/health/ready")

    assert response.status_code == 200, response.text
    body = response.json()
    assert body["status"] == "ok"
    if SERVICES:
        assert body["checks"] == {"database": "ok", "redis": "ok", "broker": "ok"}
    else:  # no Redis and no broker in the embedded mode: nothing to check but the database
        assert body["checks"] == {"database": "ok"}


services_only = pytest.mark.skipif(not SERVICES, reason="Redis and a broker: services mode")


@services_only
async def test_readiness_is_503_naming_redis_when_it_is_unreachable(settings: Settings) -> None:
    async with running_app(settings.model_copy(update={"redis_url": closed_port_url()})) as (
        _,
        client,
    ):
        response = await client.get("/health/ready")

    body = assert_problem(response, 503, "dependency_unavailable")
    assert body["checks"] == {"database": "ok", "redis": "unavailable", "broker": "ok"}
    assert "redis" in body["detail"]
    assert "broker" not in body["detail"]
    assert "database" not in body["detail"]


@services_only
async def test_readiness_is_503_naming_the_broker_when_it_is_unreachable(
    settings: Settings,
) -> None:
    broken = settings.model_copy(update={"celery_broker_url": closed_port_url()})
    async with running_app(broken) as (_, client):
        response = await client.get("/health/ready")

    body = assert_problem(response, 503, "dependency_unavailable")
    assert body["checks"] == {"database": "ok", "redis": "ok", "broker": "unavailable"}
    assert "broker" in body["detail"]
    assert "redis" not in body["detail"]


@services_only
async def test_readiness_names_every_failing_dependency(settings: Settings) -> None:
    broken = settings.model_copy(
        update={"redis_url": closed_port_url(), "celery_broker_url": closed_port_url()}
    )
    async with running_app(broken) as (_, client):
        response = await client.get("/health/ready")
        live = await client.get("/health")

    body = assert_problem(response, 503, "dependency_unavailable")
    assert body["checks"] == {"database": "ok", "redis": "unavailable", "broker": "unavailable"}
    assert "redis" in body["detail"]
    assert "broker" in body["detail"]
    assert live.status_code == 200  # liveness does not depend on them


# -- several worker processes ------------------------------------------------------------------


def metric_files(directory: Path, pattern: str) -> list[Path]:
    return list(directory.glob(pattern))


async def test_metrics_add_up_every_worker_process_of_one_server(
    settings: Settings, tmp_path: Path
) -> None:
    """`run --workers 2`: each process counts its own requests into PROMETHEUS_MULTIPROC_DIR,
    and whichever process answers /metrics reports the sum of both."""
    # `run` makes its metrics directory under TMPDIR.
    env = settings_env(settings) | {"WEB_CONCURRENCY": "2", "TMPDIR": str(tmp_path)}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    labels = {"method": "GET", "route": "/health", "status": "200"}

    async def fresh_get(url: str) -> httpx.Response:
        # A connection of its own each time, so that both processes take some.
        async with httpx.AsyncClient(timeout=10) as client:
            return await client.get(url)

    with live_server("two-workers", env, tmp_path / "api.log") as server:
        deadline = time.monotonic() + 20
        while len(metric_files(tmp_path, "inkwell-metrics-*/counter_*.db")) < 2:  # both answered
            assert time.monotonic() < deadline, f"one process answers all\n{server.output()}"
            assert (await fresh_get(f"{server.url}/health")).status_code == 200
        before = Scrape((await fresh_get(f"{server.url}/metrics")).text)
        for _ in range(40):
            assert (await fresh_get(f"{server.url}/health")).status_code == 200
        scrapes = [Scrape((await fresh_get(f"{server.url}/metrics")).text) for _ in range(6)]
    for after in scrapes:  # the same sum, whichever process answered
        assert after.value(REQUESTS, **labels) - before.value(REQUESTS, **labels) == 40
    assert not metric_files(tmp_path, "inkwell-metrics-*"), "removed when the server stops"


async def test_metrics_answer_without_task_counts_when_the_database_is_slow(
    client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A scrape is most wanted when the database struggles: it must not wait on it.
    async def stuck(db: AsyncSession) -> list[tuple[str, str, int]]:
        await asyncio.sleep(60)
        return []

    monkeypatch.setattr(task_service, "counts_by_state", stuck)
    monkeypatch.setattr(health_routes, "TASK_COUNT_TIMEOUT_S", 0.2)
    assert (await client.get("/health")).status_code == 200
    started = time.monotonic()

    scraped = await scrape(client)

    assert time.monotonic() - started < 5
    assert scraped.series(REQUESTS), "the request metrics are there"
    assert not scraped.series("inkwell_tasks")
