from __future__ import annotations

import logging

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from sqlalchemy import text

from app.dependencies import DbSession, SettingsDep, StoresDep
from app.errors import problem
from app.schemas.common import problem_responses
from app.tasks.broker import broker_reachable

router = APIRouter(tags=["operations"])
logger = logging.getLogger(__name__)


@router.get("/health", summary="Liveness", description="The process is up and serving.")
async def health() -> dict[str, str]:
    return {"status": "ok"}


@router.get(
    "/health/ready",
    summary="Readiness",
    description="Checks every dependency; 503 names the failing one.",
    responses=problem_responses(503),
)
async def ready(db: DbSession, stores: StoresDep, settings: SettingsDep) -> JSONResponse:
    checks: dict[str, str] = {}
    try:
        await db.execute(text("SELECT 1"))
        checks["database"] = "ok"
    except Exception:
        logger.warning("readiness: database unavailable", exc_info=True)
        checks["database"] = "unavailable"
    if stores.redis is not None:
        checks["redis"] = "ok" if await stores.redis.ping() else "unavailable"
    if settings.celery_broker_url:
        checks["broker"] = "ok" if await broker_reachable(settings) else "unavailable"
    failing = [name for name, state in checks.items() if state != "ok"]
    if failing:
        return problem(
            503,
            "dependency_unavailable",
            "Not ready",
            f"Unavailable: {', '.join(failing)}.",
            checks=checks,
        )
    return JSONResponse({"status": "ok", "checks": checks})
