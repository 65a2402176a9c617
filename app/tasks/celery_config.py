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
        # Bounds on every job: at the soft limit the job is stopped and records its failure;
        # at the hard limit its worker process is killed and replaced.
        task_soft_time_limit=settings.task_soft_time_limit_seconds,
        task_time_limit=settings.task_time_limit_seconds,
        # A publisher never waits long for a broker that is down: the outbox sends the job
        # again later (and the worker reconnects on its own).
        broker_connection_timeout=settings.celery_publish_timeout_seconds,
        task_publish_retry=False,
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
