from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from app.dependencies import BackendsDep
from app.errors import problem
from app.schemas.common import problem_responses
from app.services import health as health_service

router = APIRouter(tags=["operations"])


@router.get(
    "/health",
    operation_id="health-live",
    summary="Liveness",
    description="The process is up and serving.",
)
async def health() -> dict[str, str]:
    return {"status": "ok"}


@router.get(
    "/health/ready",
    operation_id="health-ready",
    summary="Readiness",
    description="Checks every dependency; 503 names the failing one.",
    responses=problem_responses(503),
)
async def ready(backends: BackendsDep) -> JSONResponse:
    checks = await health_service.readiness(backends)
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
