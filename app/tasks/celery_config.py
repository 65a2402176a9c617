from __future__ import annotations

from celery import Celery

from app.config import Settings


def create_celery(settings: Settings) -> Celery:
    """A Celery app configured from settings: the worker's, or the API's for publishing."""
    app = Celery("inkwell", broker=settings.celery_broker_url)
    app.conf.update(
        result_backend=settings.celery_result_backend,
        task_ignore_result=settings.celery_result_backend is None,
        task_serializer="json",
        accept_content=["json"],
        result_serializer="json",
        task_default_queue=settings.celery_queue,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        broker_connection_retry_on_startup=True,
        broker_transport_options={"visibility_timeout": settings.celery_visibility_timeout_seconds},
        worker_hijack_root_logger=False,
        enable_utc=True,
    )
    return app
