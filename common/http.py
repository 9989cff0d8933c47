"""HTTP glue for every function: request ids, body parsing, and the one error -> response map.

A function is built with `make_function(name, routes)`: the result is a plain
`async def (starlette.Request) -> Response` that functions-framework's ASGI (`aio`) flavour
serves, and that the dev router calls directly. It dispatches on the exact path, sets the
request id for logs, turns every `BrokerError` into its JSON answer (the spec's shape, or
OpenAI's shape under /v1/), turns anything else into a generic 500, and stamps X-Request-ID.
"""

from __future__ import annotations

import ipaddress
import random
import re
import secrets
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any, Protocol, TypeVar

import orjson
from pydantic import BaseModel, ValidationError
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

from common import openapi
from common.errors import (
    BadRequest,
    BrokerError,
    MethodNotAllowed,
    NotFound,
    PayloadTooLarge,
    UnsupportedMediaType,
)
from common.logs import function_var, get_logger, request_id_var, request_log_var
from common.openapi import Operation

Handler = Callable[[Request], Awaitable[Response]]
ModelT = TypeVar("ModelT", bound=BaseModel)


class RequestTelemetry(Protocol):
    """What a function reports about each request it serves."""

    def request_started(self) -> None: ...

    def request_finished(self, method: str, route: str, status: int, seconds: float) -> None: ...


# Request ids need uniqueness, not secrecy: a PRNG seeded from the OS is enough and much
# cheaper than a system call per request.
_ids = random.Random(secrets.randbits(128))
_stamp: tuple[int, str] = (0, "")


def new_request_id(now: datetime | None = None) -> str:
    """A fresh request id: req_YYYYMMDD_HHMMSS_<12 hex>."""
    global _stamp
    if now is not None:
        prefix = f"req_{now:%Y%m%d_%H%M%S}_"
    else:
        second = int(time.time())
        if _stamp[0] != second:
            _stamp = (second, f"req_{datetime.fromtimestamp(second, UTC):%Y%m%d_%H%M%S}_")
        prefix = _stamp[1]
    return f"{prefix}{_ids.getrandbits(48):012x}"


class JSONResponse(Response):
    """A JSON response serialised with orjson (Decimals as strings are the caller's job)."""

    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content, default=str)


def is_openai_path(path: str) -> bool:
    """True for the OpenAI-compatible surface, whose errors use OpenAI's shape."""
    return path.startswith("/v1/")


# Anthropic's error types, by status (what the anthropic SDK maps to its error classes).
ANTHROPIC_PATHS = frozenset({"/v1/messages", "/v1/messages/count_tokens"})
_ANTHROPIC_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    415: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
    503: "overloaded_error",
    504: "timeout_error",
}


def anthropic_error_body(exc: BrokerError) -> dict[str, Any]:
    """The JSON body for a BrokerError in Anthropic's shape (our code kept in `code`)."""
    kind = _ANTHROPIC_TYPES.get(exc.status, "api_error")
    return {"type": "error", "error": {"type": kind, "message": exc.message, "code": exc.code}}


def error_body(exc: BrokerError, request_id: str, openai_shape: bool) -> dict[str, Any]:
    """The JSON body for a BrokerError, in the spec's shape or OpenAI's."""
    if openai_shape:
        return {
            "error": {
                "message": exc.message,
                "type": exc.openai_type,
                "param": exc.param,
                "code": exc.code,
            }
        }
    body: dict[str, Any] = {"code": exc.code, "message": exc.message, "request_id": request_id}
    body.update(exc.details)
    return {"error": body}


def error_response(exc: BrokerError, request_id: str, path: str) -> Response:
    """The HTTP answer for a BrokerError: its status, headers and JSON body."""
    headers = dict(exc.headers)
    headers["X-Request-ID"] = request_id
    if path in ANTHROPIC_PATHS:
        headers["request-id"] = request_id
        body = anthropic_error_body(exc)
    else:
        body = error_body(exc, request_id, is_openai_path(path))
    return JSONResponse(body, status_code=exc.status, headers=headers)


def _describe_validation(exc: ValidationError) -> tuple[str, str | None]:
    error = exc.errors(include_url=False)[0]
    loc = ".".join(str(part) for part in error.get("loc", ()) if part != "__root__")
    msg = str(error.get("msg", "invalid value")).removeprefix("Value error, ")
    if error.get("type") == "json_invalid":
        return "request body is not valid JSON", None
    if not loc:
        return msg, None
    return f"{loc}: {msg}", loc


async def read_body(request: Request, max_bytes: int) -> bytes:
    """The raw body, refusing anything over max_bytes (413) without reading it all."""
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            if int(declared) > max_bytes:
                raise PayloadTooLarge(f"request body exceeds {max_bytes} bytes")
        except ValueError:
            raise BadRequest("Content-Length is not a number") from None
    chunks: list[bytes] = []
    size = 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > max_bytes:
                raise PayloadTooLarge(f"request body exceeds {max_bytes} bytes")
            chunks.append(chunk)
    except ClientDisconnect:
        raise BadRequest("client disconnected while sending the body") from None
    return b"".join(chunks)


async def read_json_body(request: Request, max_bytes: int) -> bytes:
    """The raw body of a JSON request: not JSON -> 415, empty -> 400, too big -> 413."""
    content_type = request.headers.get("content-type", "application/json")
    if "json" not in content_type.lower():
        raise UnsupportedMediaType("Content-Type must be application/json")
    raw = await read_body(request, max_bytes)
    if not raw:
        raise BadRequest("request body is empty; a JSON object is required")
    return raw


async def parse_body(request: Request, model: type[ModelT], max_bytes: int) -> ModelT:
    """The body validated as `model`; invalid JSON or fields -> 400, too big -> 413."""
    raw = await read_json_body(request, max_bytes)
    try:
        return model.model_validate_json(raw)
    except ValidationError as exc:
        message, param = _describe_validation(exc)
        raise BadRequest(message, param=param) from None


def validation_error(exc: ValidationError) -> BadRequest:
    """The 400 error for a pydantic ValidationError raised outside parse_body."""
    message, param = _describe_validation(exc)
    return BadRequest(message, param=param)


@lru_cache(maxsize=64)
def _networks(
    trusted: tuple[str, ...],
) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    return tuple(ipaddress.ip_network(item, strict=False) for item in trusted)


def _is_trusted(address: str, trusted: tuple[str, ...]) -> bool:
    try:
        ip = ipaddress.ip_address(address.strip())
    except ValueError:
        return False
    return any(ip in net for net in _networks(trusted))


def client_ip(request: Request, trusted: tuple[str, ...]) -> str:
    """The caller's IP: the peer, or X-Forwarded-For read right to left through trusted proxies."""
    peer = request.client.host if request.client else "unknown"
    if not trusted or not _is_trusted(peer, trusted):
        return peer
    forwarded = request.headers.get("x-forwarded-for", "")
    hops = [hop.strip() for hop in forwarded.split(",") if hop.strip()]
    for hop in reversed(hops):
        if not _is_trusted(hop, trusted):
            try:
                return str(ipaddress.ip_address(hop))
            except ValueError:
                return peer
    return hops[0] if hops else peer


@dataclass(frozen=True)
class Route:
    """One exact path of a function, the methods it accepts, its handler and its contract."""

    path: str
    handler: Handler
    methods: Sequence[str] = ("GET",)
    doc: Operation | None = None


@dataclass
class FunctionApp:
    """A deployable function: exact-path dispatch plus the shared request/response glue."""

    name: str
    routes: Iterable[Route]
    telemetry: Callable[[], RequestTelemetry] | None = None
    on_first_request: Callable[[], None] | None = None

    def __post_init__(self) -> None:
        self._table: dict[str, dict[str, Handler]] = {}
        # Paths with a trailing `{name}` segment (GET /v1/models/{model}): its value is the
        # rest of the path, slashes included, in `request.path_params[name]`.
        self._templates: list[tuple[str, re.Pattern[str]]] = []
        for route in self.routes:
            methods = self._table.setdefault(route.path, {})
            for method in route.methods:
                methods[method.upper()] = route.handler
            if "GET" in methods:
                methods.setdefault("HEAD", methods["GET"])
            if "{" in route.path and all(t != route.path for t, _ in self._templates):
                self._templates.append((route.path, _template(route.path)))
        self._started = False

    @property
    def paths(self) -> list[str]:
        """The exact paths this function answers."""
        return list(self._table)

    def openapi(self) -> dict[str, Any]:
        """This function's OpenAPI 3.1 document (from its routes' operations)."""
        operations = [(route.path, route.methods, route.doc) for route in self.routes if route.doc]
        return openapi.document(f"bradax {self.name}", operations, self.name)

    def serve_openapi(self, path: str) -> None:
        """Answer GET `path` with this function's OpenAPI document."""
        document = orjson.dumps(self.openapi())

        async def handler(request: Request) -> Response:
            return Response(document, media_type="application/json")

        self._table.setdefault(path, {})["GET"] = handler

    async def __call__(self, request: Request) -> Response:
        if not self._started:
            self._started = True
            if self.on_first_request is not None:
                self.on_first_request()
        started = time.perf_counter()
        telemetry = self.telemetry() if self.telemetry is not None else None
        if telemetry is not None:
            telemetry.request_started()
        request_id = new_request_id()
        token = request_id_var.set(request_id)
        function_token = function_var.set(self.name)
        outcome: dict[str, Any] = {}
        log_token = request_log_var.set(outcome)
        request.state.request_id = request_id
        path: str = request.scope["path"]
        route_label = path if path in self._table else self._template_of(path) or "other"
        status = 499  # if the task is cancelled before an answer exists
        try:
            try:
                response = await self._dispatch(request, path)
            except BrokerError as exc:
                response = error_response(exc, request_id, path)
                outcome.setdefault("error_code", exc.code)
            except Exception:
                get_logger().exception("unhandled error", path=route_label)
                response = error_response(
                    BrokerError("internal error; quote the request id to support"),
                    request_id,
                    path,
                )
            response.headers.setdefault("X-Request-ID", request.state.request_id)
            status = response.status_code
            elapsed_ms = round((time.perf_counter() - started) * 1000, 3)
            message = outcome.pop("message", "request completed")
            outcome.setdefault("latency_ms", elapsed_ms)
            get_logger().info(
                message,
                method=request.method,
                endpoint=route_label,
                http_status=status,
                **outcome,
            )
            return response
        finally:
            request_id_var.reset(token)
            function_var.reset(function_token)
            request_log_var.reset(log_token)
            if telemetry is not None:
                elapsed = time.perf_counter() - started
                telemetry.request_finished(request.method, route_label, status, elapsed)

    def _template_of(self, path: str) -> str | None:
        """The template path `path` matches, if any."""
        for template, pattern in self._templates:
            if pattern.fullmatch(path):
                return template
        return None

    async def _dispatch(self, request: Request, path: str) -> Response:
        methods = self._table.get(path)
        if methods is None:
            for template, pattern in self._templates:
                found = pattern.fullmatch(path)
                if found is not None:
                    request.scope["path_params"] = found.groupdict()
                    methods = self._table[template]
                    break
        if methods is None:
            raise NotFound(f"no route for {path}")
        handler = methods.get(request.method)
        if handler is None:
            allowed = ", ".join(sorted(methods))
            raise MethodNotAllowed(
                f"{request.method} is not allowed on {path}", headers={"Allow": allowed}
            )
        return await handler(request)


def _template(path: str) -> re.Pattern[str]:
    """The pattern of a path whose last segment is `{name}` (a non-empty rest of the path)."""
    head, _, tail = path.rpartition("/")
    if "{" in head or not (tail.startswith("{") and tail.endswith("}")):
        raise ValueError(f"only a trailing {{name}} segment is supported: {path}")
    return re.compile(re.escape(head + "/") + f"(?P<{tail[1:-1]}>.+)", re.DOTALL)


def make_function(name: str, routes: Iterable[Route], **kwargs: Any) -> FunctionApp:
    """Build a function's entry point from its routes (see FunctionApp)."""
    return FunctionApp(name, list(routes), **kwargs)
