from __future__ import annotations

import asyncio
from urllib.parse import urlsplit

from app.config import Settings

BROKER_TIMEOUT_SECONDS = 2.0
DEFAULT_PORTS = {"redis": 6379, "rediss": 6380, "amqp": 5672, "amqps": 5671, "pyamqp": 5672}


async def broker_reachable(settings: Settings) -> bool:
    """Whether the Celery broker accepts a TCP connection, within two seconds."""
    url = urlsplit(settings.celery_broker_url or "")
    port = url.port or DEFAULT_PORTS.get(url.scheme)
    if not url.hostname or port is None:
        return False
    try:
        _, writer = await asyncio.wait_for(
            asyncio.open_connection(url.hostname, port), BROKER_TIMEOUT_SECONDS
        )
    except (OSError, TimeoutError):
        return False
    writer.close()
    return True
