"""Structured logs: one JSON object a line on stderr, quiet (warnings) by default. A line
written while a request is served carries its id as `request_id` (server.request_ids)."""

from __future__ import annotations

import json
import logging
import sys
import time

from server import request_ids


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        # Formatted where it was logged, in the caller's context: the request's own.
        if (ident := request_ids.current.get()) is not None:
            entry["request_id"] = ident
        entry.update(getattr(record, "fields", {}))
        if record.exc_info:
            entry["traceback"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def setup(level: str = "warning") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
