"""Logging for all three programs: JSON lines by default (KRESIZE_LOG_FORMAT=json), plain text for people
(KRESIZE_LOG_FORMAT=text). Fields a line carries in `extra=` (job, index, image, ...) become JSON keys.
"""

from __future__ import annotations

import logging
import os
import sys

from pythonjsonlogger.json import JsonFormatter

FORMATS = ("json", "text")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"


def log_format() -> str:
    value = os.environ.get("KRESIZE_LOG_FORMAT", "json").strip().lower() or "json"
    if value not in FORMATS:
        raise ValueError(f"KRESIZE_LOG_FORMAT must be json or text, got {value!r}")
    return value


def json_formatter() -> logging.Formatter:
    return JsonFormatter(TEXT_FORMAT, rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
                         timestamp=False)


def setup(fmt: str, level: int = logging.INFO) -> None:
    """Send every logger's records to stderr in `fmt` (json or text)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(json_formatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)


class _Context(logging.Filter):
    def __init__(self, fields: dict[str, object]) -> None:
        super().__init__()
        self.fields = fields

    def filter(self, record: logging.LogRecord) -> bool:
        for key, value in self.fields.items():
            if not hasattr(record, key):
                setattr(record, key, value)
        return True


def add_context(**fields: object) -> None:
    """Every line from now on carries these fields (in JSON, as keys), e.g. the resizer's job and index."""
    for handler in logging.getLogger().handlers:
        handler.addFilter(_Context(fields))
