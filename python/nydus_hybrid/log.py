"""Structured logs: one JSON object per line on stderr (``ts``, ``level``, ``event``, fields)."""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any, Optional, TextIO

LOGGER_NAME = "nydus_hybrid"


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "event": record.getMessage(),
        }
        out.update(getattr(record, "fields", {}))
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def setup(
    level: str = "info", stream: Optional[TextIO] = None, handler: Optional[logging.Handler] = None
) -> logging.Logger:
    """JSON lines to `stream` (stderr by default), or to `handler` (a log file)."""
    logger = logging.getLogger(LOGGER_NAME)
    logger.handlers.clear()
    handler = handler or logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter())
    logger.addHandler(handler)
    logger.setLevel(level.upper())
    logger.propagate = False
    return logger


def event(name: str, level: int = logging.INFO, **fields: Any) -> None:
    """Log one event with structured fields."""
    logging.getLogger(LOGGER_NAME).log(level, name, extra={"fields": fields})
