"""Structured JSON logs in the spec's shape, through powertools Logger.

Every line is one JSON object: timestamp, level, logger, message and `extra`, which holds the
request_id of the request being served (from a context variable, so concurrent requests never
mix) and whatever fields the call passed. Secrets are never logged; project ids are masked.
"""

from __future__ import annotations

import logging
import traceback
from collections.abc import Iterable
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any

import orjson
from aws_lambda_powertools import Logger
from aws_lambda_powertools.logging.formatter import BasePowertoolsFormatter

LOGGER_NAME = "bradax.broker"

request_id_var: ContextVar[str | None] = ContextVar("bradax_request_id", default=None)
function_var: ContextVar[str | None] = ContextVar("bradax_function", default=None)

_STANDARD_ATTRS = frozenset(
    logging.LogRecord("x", 0, "x", 0, "x", None, None).__dict__.keys()
    | {"message", "asctime", "taskName", "service", "sampling_rate"}
)


def mask_project(project_id: str | None) -> str | None:
    """The project id as logs show it: `proj_...c3d4` (prefix and last four characters)."""
    if not project_id:
        return project_id
    if len(project_id) <= 8:
        return project_id[:2] + "..."
    prefix = project_id.split("_", 1)[0] + "_" if "_" in project_id else project_id[:2]
    return f"{prefix}...{project_id[-4:]}"


class SpecFormatter(BasePowertoolsFormatter):
    """Formats a record as {timestamp, level, logger, message, extra{request_id, ...}}."""

    def __init__(self) -> None:
        super().__init__()
        self._static: dict[str, Any] = {}

    def format(self, record: logging.LogRecord) -> str:
        extra: dict[str, Any] = {}
        request_id = request_id_var.get()
        if request_id is not None:
            extra["request_id"] = request_id
        function = function_var.get()
        if function is not None:
            extra["function"] = function
        extra.update(self._static)
        for key, value in record.__dict__.items():
            if key not in _STANDARD_ATTRS and not key.startswith("_"):
                extra[key] = value
        line: dict[str, Any] = {
            "timestamp": datetime.fromtimestamp(record.created, UTC)
            .isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "extra": extra,
        }
        if record.exc_info and record.exc_info[0] is not None:
            line["exception"] = "".join(traceback.format_exception(*record.exc_info))
        return orjson.dumps(line, default=str).decode()

    # powertools' key-management hooks: we keep per-request keys in a context variable.
    def append_keys(self, **additional_keys: Any) -> None:
        self._static.update(additional_keys)

    def get_current_keys(self) -> dict[str, Any]:
        return dict(self._static)

    def remove_keys(self, keys: Iterable[str]) -> None:
        for key in keys:
            self._static.pop(key, None)

    def clear_state(self) -> None:
        self._static.clear()

    def thread_safe_append_keys(self, **additional_keys: Any) -> None:
        self.append_keys(**additional_keys)

    def thread_safe_get_current_keys(self) -> dict[str, Any]:
        return self.get_current_keys()

    def thread_safe_remove_keys(self, keys: Iterable[str]) -> None:
        self.remove_keys(keys)

    def thread_safe_clear_keys(self) -> None:
        self.clear_state()


_logger: Logger | None = None


def get_logger() -> Logger:
    """The process' broker logger (created on first use at INFO; `configure` sets the level)."""
    global _logger
    if _logger is None:
        _logger = Logger(service=LOGGER_NAME, level="INFO", logger_formatter=SpecFormatter())
    return _logger


def configure(level: str) -> Logger:
    """Set the log level (LOG_LEVEL)."""
    logger = get_logger()
    logger.setLevel(level)
    return logger
