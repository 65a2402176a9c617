"""Prometheus metrics: requests by route template (never the raw path, whose ids would make a
series per post), and background tasks by state.

With several API worker processes (`python -m app run --workers N`), `PROMETHEUS_MULTIPROC_DIR`
makes every process write its samples there and `/metrics` adds them up; `run` sets it.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Histogram,
    disable_created_metrics,
    generate_latest,
    multiprocess,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

UNMATCHED_ROUTE = "<unmatched>"

disable_created_metrics()  # type: ignore[no-untyped-call]  # no `_created` series

HTTP_REQUESTS = Counter(
    "inkwell_http_requests",
    "HTTP requests answered, by method, route template and status code.",
    ["method", "route", "status"],
)
HTTP_DURATION = Histogram(
    "inkwell_http_request_duration_seconds",
    "Time to answer an HTTP request, by method and route template.",
    ["method", "route"],
    buckets=(0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)
TASKS_QUEUED = Counter(
    "inkwell_tasks_queued",
    "Background tasks queued by this API, by task name.",
    ["task"],
)

CONTENT_TYPE = CONTENT_TYPE_LATEST


def observe_request(method: str, route: str, status: int, seconds: float) -> None:
    HTTP_REQUESTS.labels(method, route, str(status)).inc()
    HTTP_DURATION.labels(method, route).observe(seconds)


class _TaskStates(Collector):
    """Task counts by name and state, read from the database at scrape time: the whole
    deployment's tasks, whichever worker ran them."""

    def __init__(self, counts: Iterable[tuple[str, str, int]]) -> None:
        self._counts = list(counts)

    def collect(self) -> Iterator[Metric]:
        family = GaugeMetricFamily(
            "inkwell_tasks", "Background tasks by name and state.", labels=["task", "state"]
        )
        for name, state, count in self._counts:
            family.add_metric([name, state], count)
        yield family


def render(task_counts: Iterable[tuple[str, str, int]]) -> bytes:
    """The exposition text: this process's (or every process's) metrics, then the task states."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        process_metrics = generate_latest(registry)
    else:
        process_metrics = generate_latest(REGISTRY)
    tasks = CollectorRegistry(auto_describe=False)
    tasks.register(_TaskStates(task_counts))
    return process_metrics + generate_latest(tasks)
