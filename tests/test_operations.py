from __future__ import annotations

import httpx
from asgi_lifespan import LifespanManager
from pydantic import SecretStr
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from app.config import Settings
from app.main import create_app
from app.models import User
from tests.conftest import running_app


async def test_liveness(client: httpx.AsyncClient) -> None:
    response = await client.get("/health")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


async def test_readiness_checks_the_database(client: httpx.AsyncClient) -> None:
    response = await client.get("/health/ready")
    assert response.status_code == 200
    assert response.json()["checks"]["database"] == "ok"


async def test_readiness_is_503_naming_the_database_when_it_is_unreachable(
    settings: Settings,
) -> None:
    broken = settings.model_copy(
        update={"database_url": "postgresql://nobody@127.0.0.1:1/none", "db_pool_size": 1}
    )
    async with running_app(broken) as (_, client):
        response = await client.get("/health/ready")
    assert response.status_code == 503
    assert response.headers["content-type"].startswith("application/problem+json")
    body = response.json()
    assert body["code"] == "dependency_unavailable"
    assert body["checks"]["database"] == "unavailable"
    assert "database" in body["detail"]


async def test_first_admin_from_settings_is_created_at_start_up(
    settings: Settings, db: AsyncSession
) -> None:
    configured = settings.model_copy(
        update={
            "first_admin_email": "Root@Example.com",
            "first_admin_username": "root",
            "first_admin_password": SecretStr("a strong admin password"),
        }
    )
    for _ in range(2):  # a restart finds the admin there and changes nothing
        app = create_app(configured, configure_logs=False)
        async with LifespanManager(app):
            pass
    admins = (await db.scalars(select(User).where(User.role == "admin"))).all()
    assert [(a.username, a.email) for a in admins] == [("root", "root@example.com")]


async def test_liveness_with_a_body_over_the_limit_is_still_413(
    client: httpx.AsyncClient, settings: Settings
) -> None:
    """`/health` is answered before routing, but not past the body limit."""
    body = b"x" * (settings.max_body_bytes + 1)
    response = await client.request("GET", "/health", content=body)

    assert response.status_code == 413
    assert response.headers["content-type"].startswith("application/problem+json")
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.headers["X-Request-ID"]


async def test_liveness_answers_cors_requests_with_the_cors_headers(settings: Settings) -> None:
    origin = "https://app.example"
    async with running_app(settings.model_copy(update={"cors_origins": [origin]})) as (_, client):
        response = await client.get("/health", headers={"Origin": origin})
        plain = await client.get("/health")

    for answer in (response, plain):
        assert answer.status_code == 200
        assert answer.json() == {"status": "ok"}
        assert answer.headers["X-Content-Type-Options"] == "nosniff"
        assert answer.headers["X-Request-ID"]
    assert response.headers["access-control-allow-origin"] == origin
