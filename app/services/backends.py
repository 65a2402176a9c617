from __future__ import annotations

from dataclasses import dataclass

from app.config import Settings
from app.media import LocalMedia
from app.stores import Stores
from app.tasks.runner import TaskRunner


@dataclass(frozen=True, slots=True)
class Backends:
    """The pluggable parts a service may need beside the database, chosen once at start-up:
    stores (cache, sessions, limits), media storage and the task runner."""

    settings: Settings
    stores: Stores
    media: LocalMedia
    runner: TaskRunner
