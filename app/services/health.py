"""Readiness: is each dependency this process needs answering, within a short time?"""

from __future__ import annotations

import asyncio
import logging

from sqlalchemy import text

from app.core.broker import broker_reachable
from app.services.backends import Backends

logger = logging.getLogger(__name__)
CHECK_TIMEOUT_SECONDS = 3.0


async def readiness(backends: Backends) -> dict[str, str]:
    """`ok` or `unavailable` for the database and, when configured, Redis and the broker."""
    checks = {"database": await _database(backends)}
    if backends.stores.redis is not None:
        checks["redis"] = "ok" if await backends.stores.redis.ping() else "unavailable"
    if backends.settings.celery_broker_url:
        reachable = await broker_reachable(backends.settings)
        checks["broker"] = "ok" if reachable else "unavailable"
    return checks


async def _database(backends: Backends) -> str:
    try:
        # An autocommit session: no transaction stays open while the other checks run.
        async with backends.read_sessions() as db:
            await asyncio.wait_for(db.execute(text("SELECT 1")), CHECK_TIMEOUT_SECONDS)
    except Exception:  # any failure means "not ready"
        logger.warning("readiness: database unavailable", exc_info=True)
        return "unavailable"
    return "ok"
