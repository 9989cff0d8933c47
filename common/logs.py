"""Structured JSON logs in the spec's shape, through powertools Logger.

Every line is one JSON object: timestamp, level, logger, message and `extra`, which holds the
request_id of the request being served (from a context variable, so concurrent requests never
mix) and whatever fields the call passed. Secrets are never logged: callers pass ids, never
credentials or prompt text, and the formatter masks any field whose name says it holds one
(defence in depth). Project ids are masked (`proj_...c3d4`); money fields are JSON numbers.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import logging
import sys
import traceback
from collections.abc import Iterable
from contextvars import ContextVar
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Any

import orjson
from aws_lambda_powertools import Logger
from aws_lambda_powertools.logging.formatter import BasePowertoolsFormatter

LOGGER_NAME = "bradax.broker"

request_id_var: ContextVar[str | None] = ContextVar("bradax_request_id", default=None)
function_var: ContextVar[str | None] = ContextVar("bradax_function", default=None)
# Fields of the one line logged when the current request completes (see common.http).
request_log_var: ContextVar[dict[str, Any] | None] = ContextVar("bradax_request_log", default=None)


def log_outcome(message: str, **fields: Any) -> None:
    """Describe the current request's outcome: merged into its completion line when a request
    is being served (one line per request), else logged now (e.g. a stream settling later)."""
    pending = request_log_var.get()
    if pending is not None:
        pending["message"] = message
        pending.update(fields)
    else:
        get_logger().info(message, **fields)


_STANDARD_ATTRS = frozenset(
    logging.LogRecord("x", 0, "x", 0, "x", None, None).__dict__.keys()
    | {"message", "asctime", "taskName", "service", "sampling_rate"}
)
# Keys powertools appends on its own; `logger` already names the service.
_POWERTOOLS_KEYS = frozenset({"service", "sampling_rate"})
# Fields the spec shows as JSON numbers, whatever type the caller passed.
_NUMBER_FIELDS = frozenset({"cost_usd"})
# Field names that would hold a credential or client text: their value is never written.
_SECRET_FIELDS = frozenset(
    {
        "api_key",
        "access_token",
        "refresh_token",
        "token",
        "authorization",
        "password",
        "secret",
        "jwt_secret_key",
        "openai_api_key",
        "database_url",
        "redis_url",
        "prompt",
        "messages",
        "content",
    }
)
REDACTED = "***"


def mask_project(project_id: str | None) -> str | None:
    """The project id as logs show it: `proj_...c3d4` (prefix and last four characters).

    The tail is left out when it would leave fewer than four characters hidden.
    """
    if not project_id:
        return project_id
    head, sep, _ = project_id.partition("_")
    prefix = head + sep if sep and len(head) <= 5 else project_id[:2]
    tail = project_id[-4:]
    if len(project_id) - len(prefix) - len(tail) < 4:
        tail = ""
    return f"{prefix}...{tail}"


def _number(value: Any) -> Any:
    if isinstance(value, bool) or not isinstance(value, str | Decimal):
        return value
    try:
        amount = Decimal(value)
    except InvalidOperation:
        return value
    return float(amount) if amount.is_finite() else value


def _field(key: str, value: Any) -> Any:
    if key.lower() in _SECRET_FIELDS:
        return REDACTED
    if key in _NUMBER_FIELDS:
        return _number(value)
    return value


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
        for key, value in self._static.items():
            extra[key] = _field(key, value)
        for key, value in record.__dict__.items():
            if key not in _STANDARD_ATTRS and not key.startswith("_"):
                extra[key] = _field(key, value)
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
        self._static.update({k: v for k, v in additional_keys.items() if k not in _POWERTOOLS_KEYS})

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


class TurnBufferedHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes the lines of one event-loop turn in a single write (one system call per turn
    instead of one per line); outside a running loop it writes at once."""

    def __init__(self) -> None:
        super().__init__(sys.stdout)
        self._lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record) + self.terminator
        except Exception:
            self.handleError(record)
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self._write(line)
            return
        if not self._lines:
            loop.call_soon(self.flush)
        self._lines.append(line)

    def flush(self) -> None:
        if self._lines:
            lines, self._lines = self._lines, []
            self._write("".join(lines))

    def _write(self, text: str) -> None:
        # A closed or broken stdout must not break requests.
        with contextlib.suppress(Exception):
            self.stream.write(text)
            self.stream.flush()


def get_logger() -> Logger:
    """The process' broker logger (created on first use at INFO; `configure` sets the level)."""
    global _logger
    if _logger is None:
        _logger = Logger(
            service=LOGGER_NAME,
            level="INFO",
            logger_formatter=SpecFormatter(),
            logger_handler=TurnBufferedHandler(),
        )
        atexit.register(_logger.registered_handler.flush)
    return _logger


def configure(level: str) -> Logger:
    """Set the log level (LOG_LEVEL)."""
    logger = get_logger()
    logger.setLevel(level)
    return logger
