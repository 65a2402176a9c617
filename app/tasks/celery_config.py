from __future__ import annotations

from celery import Celery

from app.config import Settings


def create_celery(settings: Settings) -> Celery:
    """A Celery app configured from settings: the worker's, or the API's for publishing."""
    app = Celery("inkwell", broker=settings.celery_broker_url)
    visibility = settings.celery_visibility_timeout_seconds
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
        broker_transport_options={
            "visibility_timeout": visibility,
            # kombu's Redis transport looks for unacknowledged tasks to restore only every
            # 10 s, and acts on one look in 10: restore as often as the timeout needs.
            "unacked_restore_interval": max(1, min(10, visibility // 2)),
            "unacked_restore_throttle": 1,
        },
        worker_hijack_root_logger=False,
        enable_utc=True,
    )
    return app
