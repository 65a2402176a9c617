from __future__ import annotations

import asyncio
import logging

from fastapi import APIRouter, Response
from sqlalchemy.exc import SQLAlchemyError

from app.core import metrics as prometheus
from app.dependencies import BackendsDep
from app.errors import NotFound, NotReady
from app.schemas.common import problem_responses
from app.services import health as health_service
from app.services import tasks

logger = logging.getLogger(__name__)
TASK_COUNT_TIMEOUT_S = 2.0
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
async def ready(backends: BackendsDep) -> dict[str, object]:
    checks = await health_service.readiness(backends)
    if any(state != "ok" for state in checks.values()):
        raise NotReady(checks)
    return {"status": "ok", "checks": checks}


@router.get(
    "/metrics",
    operation_id="metrics-read",
    summary="Prometheus metrics",
    description="Requests by route template and status, latency histograms, and background "
    "tasks by state. `METRICS_ENABLED=false` turns it off; keep it off the public internet.",
    response_class=Response,
    responses={200: {"content": {prometheus.CONTENT_TYPE: {"schema": {"type": "string"}}}}},
)
async def metrics(backends: BackendsDep) -> Response:
    if not backends.settings.metrics_enabled:
        raise NotFound
    try:
        async with backends.read_sessions() as db:
            task_counts = await asyncio.wait_for(tasks.counts_by_state(db), TASK_COUNT_TIMEOUT_S)
    except (OSError, SQLAlchemyError):  # TimeoutError included: the rest is worth scraping
        logger.warning("metrics: could not count the tasks", exc_info=True)
        task_counts = []
    return Response(prometheus.render(task_counts), media_type=prometheus.CONTENT_TYPE)
