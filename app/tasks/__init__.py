"""Background jobs (image processing, e-mail): the jobs, their runners and the Celery app.

`celery -A app.tasks worker` (and `celery -A app.tasks flower`) find the Celery application as
this package's `celery` attribute, made on first use: importing the package builds nothing."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from celery import Celery


def __getattr__(name: str) -> Celery:
    if name != "celery":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from app.tasks.celery_app import celery_app

    return celery_app
