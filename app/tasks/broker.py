from __future__ import annotations

import anyio.to_thread
from kombu import Connection

from app.config import Settings

BROKER_TIMEOUT_SECONDS = 2.0


async def broker_reachable(settings: Settings) -> bool:
    """Whether the Celery broker accepts a connection (checked in a thread: kombu blocks)."""

    url = settings.celery_broker_url
    if not url:
        return False

    def check() -> bool:
        try:
            with Connection(url, connect_timeout=BROKER_TIMEOUT_SECONDS) as conn:
                conn.ensure_connection(max_retries=1, timeout=int(BROKER_TIMEOUT_SECONDS))
            return True
        except Exception:  # any failure means "not ready"
            return False

    return await anyio.to_thread.run_sync(check)
