"""Structured logs: JSON in production, key=value lines in development. Every line has the
request id of the request it belongs to."""

from __future__ import annotations

import json
import logging
import re
from datetime import UTC, datetime
from typing import Any

from app.core.context import request_context

_STANDARD = set(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {
    "message",
    "asctime",
    "color_message",  # uvicorn's copy of the message with terminal colours
}


# A value written bare in a key=value line: no spaces, quotes or `=` (one regex, not a check
# per character: every access-log line goes through here).
_BARE = re.compile(r'[^\s"=]+')


class _RequestContextFilter(logging.Filter):
    """Adds the request id (and the user, once known) to every record, unless the record
    already names them (a task logs with the id of the request that queued it)."""

    def filter(self, record: logging.LogRecord) -> bool:
        context = request_context.get()
        if not hasattr(record, "request_id"):
            record.request_id = context.request_id if context else "-"
        if context and context.user_id is not None and not hasattr(record, "user_id"):
            record.user_id = context.user_id
        return True


def _extras(record: logging.LogRecord) -> dict[str, Any]:
    extras = {k: v for k, v in record.__dict__.items() if k not in _STANDARD}
    if record.name.startswith("celery."):
        # Celery attaches each task's arguments as `data`: e-mail links with their single-use
        # tokens, addresses. Its message already names the task and its id.
        extras.pop("data", None)
    return extras


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
            **_extras(record),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


class KeyValueFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        fields = " ".join(f"{k}={_value(v)}" for k, v in _extras(record).items())
        line = f"{record.levelname:<7} {record.name}: {record.getMessage()} {fields}".rstrip()
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


def _value(value: Any) -> str:
    """A bare value when it has no spaces, quotes or `=`, else a JSON string: lines stay
    parseable as key=value."""
    text = str(value)
    if text.isprintable() and _BARE.fullmatch(text):
        return text
    return json.dumps(text)


def configure_logging(json_lines: bool, level: str = "INFO") -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if json_lines else KeyValueFormatter())
    handler.addFilter(_RequestContextFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    logging.getLogger("uvicorn.access").disabled = True  # our access log has the request id
