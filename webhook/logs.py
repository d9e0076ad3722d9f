"""Structured logs: one JSON object a line on stderr, every line bounded (named logs.py: not to shadow logging).
Imports nothing of the project. Data goes in `extra=`; keys LogRecord reserves ("name") in `extra={"fields": {...}}`.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

import orjson

# Attributes every LogRecord has; anything else on a record came from `extra=` and becomes a field.
# Callers clip request data to Kubernetes' own lengths already; these bounds catch whatever they missed.
MAX_FIELD_CHARS = 4096
MAX_EXCEPTION_CHARS = 16384
_RECORD_ATTRIBUTES = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message", "asctime", "fields",
    "color_message",  # uvicorn's copy of the message with terminal colour codes
}


class JsonFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__()
        self._second = -1
        self._second_text = ""  # the time of day up to the second: it changes once a second, not each line

    def format(self, record: logging.LogRecord) -> str:
        second = int(record.created)
        if second != self._second:
            self._second_text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
            self._second = second
        entry: dict[str, Any] = {
            "time": f"{self._second_text}.{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": _clip(record.getMessage(), MAX_FIELD_CHARS),
        }
        for key, value in vars(record).items():
            if key not in _RECORD_ATTRIBUTES and not key.startswith("_"):
                entry[key] = _clip(value, MAX_FIELD_CHARS)
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            entry.update((key, _clip(value, MAX_FIELD_CHARS)) for key, value in fields.items())
        if record.exc_info:
            entry["exception"] = _clip_middle(self.formatException(record.exc_info), MAX_EXCEPTION_CHARS)
        return orjson.dumps(entry, default=_bounded_str).decode()


def _clip(value: Any, limit: int) -> Any:
    if isinstance(value, str):
        return clip(value, limit)
    if value is None or isinstance(value, bool | int | float):
        return value
    # A list or mapping (rare: fields are scalars) is kept as it is unless its JSON is too long.
    text = orjson.dumps(value, default=str).decode()
    return value if len(text) <= limit else clip(text, limit)


def clip(text: str, limit: int) -> str:
    """`text`, or its first `limit` - 1 characters and "…" when it is longer than `limit`."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _clip_middle(text: str, limit: int) -> str:
    # A traceback's first lines say where it started, its last lines what went wrong: keep both ends.
    if len(text) <= limit:
        return text
    half = limit // 2
    return f"{text[:half]}\n…\n{text[-half:]}"


def _bounded_str(value: Any) -> str:
    return clip(str(value), MAX_FIELD_CHARS)


def configure_logging(level: str = "info") -> None:
    """Route every logger, uvicorn's included, through one JSON handler on stderr."""
    # Nothing the JSON lines show needs the calling frame, thread or process of each record: leave them out
    # ("Optimization" in the logging HOWTO); they cost a frame walk and three lookups per line.
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error"):
        uvicorn_logger = logging.getLogger(name)
        uvicorn_logger.handlers.clear()
        uvicorn_logger.propagate = True
    # No access log: each admission has its decision line already. uvicorn writes access lines whenever
    # "uvicorn.access" has a handler, its own or the root's through propagation, whatever access_log says.
    access = logging.getLogger("uvicorn.access")
    access.handlers.clear()
    access.propagate = False
