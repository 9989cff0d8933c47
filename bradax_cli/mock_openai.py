"""An OpenAI-compatible mock upstream: a real aiohttp HTTP server for tests, benchmarks and demos.

It serves `GET /v1/models` and `POST /v1/chat/completions` (JSON and Server-Sent Events) with
deterministic token counts, and can misbehave on purpose: latency, 429 with Retry-After, 500,
hanging requests, streams cut mid-way, and lying about usage (a one-shot `usage` replaces
the reported usage object verbatim, "absent" leaves it out; `trailing_zero_usage` sends a
second, all-zero usage chunk after a stream's real one). Behaviours come either from random rates in
`MockConfig` or from a queue of one-shot behaviours posted to `/_mock/enqueue`. Control
endpoints (no auth) live under `/_mock/`: `config`, `enqueue`, `reset`, `stats`.

Hostile one-shot behaviours (for the broker's upstream-trust rules), each counted in
`by_outcome` under its name:

* `{"redirect": true}` answers 302 to `/_mock/elsewhere/...` on `localhost` (another origin
  than 127.0.0.1); `{"redirect": "<url>"}` to any URL. Hits there are counted in the stats'
  `elsewhere` (with how many carried an Authorization header).
* `{"status": 401, "echo_headers": true}` answers an error whose message, code and type
  echo the request's headers, Authorization included.
* `{"oversize_bytes": n}` pads a JSON answer to at least n bytes, or sends one SSE event of at
  least n bytes in a stream (then the rest of the stream as usual).
* `{"malformed": true}` answers 200 with a truncated JSON body.

The server closes connections idle for `--keepalive-timeout` seconds (a request head that
never completes included) and gives a request `--body-timeout` seconds to send its body.

Token arithmetic (so callers can assert exact numbers):

* prompt_tokens = 3 + sum over messages of (4 + whitespace-separated words of the text);
  list contents count the words of their `{"type": "text"}` parts; `tools`, `functions`,
  `response_format` and `prediction` add a token per 4 bytes of their JSON (as billed).
* `/_mock/stats` token sums are what the mock would bill, whatever usage it reports.
* `/_mock/stats` also shows `last_messages`, the messages of the last chat request as received.
* scripted replies: `POST /_mock/reply {"text": ..., "refusal": ..., "tool_arguments": ...,
  "chunk_chars": 3}` makes every chat answer carry exactly that text (streams split it into
  chunks of `chunk_chars` characters; completion_tokens = number of chunks), until
  `{"text": null}` or a reset; `GET /_mock/last_request` is the last chat body as received.
* the reply is "w0 w1 w2 ..."; completion_tokens = min(reply_words, max_completion_tokens or
  max_tokens); finish_reason is "length" when max tokens cut the reply short, else "stop".

Run it with `python -m bradax_cli.mock_openai --port 8090` (or `bradax mock-openai`).
The hot path avoids pydantic and per-request allocations it can precompute, and uses orjson.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hmac
import random
import signal
import sys
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any, Final, cast

import orjson
from aiohttp import web

__all__ = ["MockConfig", "build_app", "main"]

DEFAULT_MODELS: Final = ("gpt-4.1", "gpt-4.1-mini", "gpt-4.1-nano", "gpt-4o", "gpt-4o-mini")
MAX_CALLS: Final = 100_000
"""How many per-call records `/_mock/stats` keeps (the token sums cover every call)."""

_MODEL_CREATED: Final = 1_700_000_000
_HANG_POLL_S: Final = 0.05
_JSON_CT: Final = "application/json"
_SSE_HEADERS: Final = {
    "Content-Type": "text/event-stream",
    "Cache-Control": "no-cache",
    "X-Accel-Buffering": "no",
}
_DONE: Final = b"data: [DONE]\n\n"
_QUEUE_KEYS: Final = frozenset(
    {
        "status",
        "retry_after",
        "hang",
        "cut_after_chunks",
        "latency_ms",
        "redirect",
        "echo_headers",
        "oversize_bytes",
        "malformed",
        "usage",
        "trailing_zero_usage",
    }
)
_BILLED_PARAMS: Final = ("tools", "functions", "response_format", "prediction")
_ABSENT: Final = "absent"
_HONEST: Final = object()
ELSEWHERE: Final = "/_mock/elsewhere"
_MALFORMED: Final = b'{"id":"chatcmpl-x","object":"chat.completion","choices":[{"index":0,'

BODY_TIMEOUT: Final = 30.0
KEEPALIVE_TIMEOUT: Final = 15.0
_ERROR_TYPES: Final = {
    400: "invalid_request_error",
    401: "invalid_request_error",
    403: "permission_error",
    404: "invalid_request_error",
    409: "conflict_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
}
_ERROR_MESSAGES: Final = {
    429: "Rate limit reached for requests (mock).",
    500: "The server had an error while processing your request. (mock)",
    502: "Bad gateway. (mock)",
    503: "The engine is currently overloaded, please try again later. (mock)",
    504: "Gateway timeout. (mock)",
}


@dataclass
class MockConfig:
    """Knobs of the mock: latency, random failure rates, reply size, auth and known models."""

    latency_ms: float = 0
    fail_rate_429: float = 0
    fail_rate_500: float = 0
    hang_rate: float = 0
    cut_rate: float = 0
    cut_after_chunks: int = 2
    reply_words: int = 12
    retry_after: int | None = 1
    api_key: str | None = None
    models: tuple[str, ...] = field(default=DEFAULT_MODELS)
    seed: int | None = None


class _BadConfig(ValueError):
    """A `/_mock/config` or `/_mock/enqueue` body that cannot be applied."""


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_config(cfg: MockConfig) -> None:
    """Raise `_BadConfig` when a field has the wrong type or range."""
    for name in ("latency_ms", "fail_rate_429", "fail_rate_500", "hang_rate", "cut_rate"):
        value = getattr(cfg, name)
        if not _is_number(value) or value < 0:
            raise _BadConfig(f"{name} must be a number >= 0")
    rates = cfg.fail_rate_429 + cfg.fail_rate_500 + cfg.hang_rate + cfg.cut_rate
    if rates > 1:
        raise _BadConfig("the four rates must add up to at most 1")
    if not _is_int(cfg.cut_after_chunks) or cfg.cut_after_chunks < 0:
        raise _BadConfig("cut_after_chunks must be an integer >= 0")
    if not _is_int(cfg.reply_words) or cfg.reply_words < 0:
        raise _BadConfig("reply_words must be an integer >= 0")
    if cfg.retry_after is not None and (not _is_int(cfg.retry_after) or cfg.retry_after < 0):
        raise _BadConfig("retry_after must be an integer >= 0 or null")
    if cfg.api_key is not None and not isinstance(cfg.api_key, str):
        raise _BadConfig("api_key must be a string or null")
    if not all(isinstance(m, str) for m in cfg.models):
        raise _BadConfig("models must be a list of strings")
    if cfg.seed is not None and not _is_int(cfg.seed):
        raise _BadConfig("seed must be an integer or null")


def _error_body(
    status: int,
    message: str,
    *,
    err_type: str | None = None,
    code: str | None = None,
    param: str | None = None,
) -> bytes:
    if err_type is None:
        err_type = _ERROR_TYPES.get(status, "server_error" if status >= 500 else "api_error")
    return orjson.dumps(
        {"error": {"message": message, "type": err_type, "param": param, "code": code}}
    )


def _error(
    status: int,
    message: str,
    *,
    err_type: str | None = None,
    code: str | None = None,
    param: str | None = None,
    headers: dict[str, str] | None = None,
) -> web.Response:
    body = _error_body(status, message, err_type=err_type, code=code, param=param)
    return web.Response(status=status, body=body, content_type=_JSON_CT, headers=headers)


def _words(text: object) -> int:
    return len(text.split()) if isinstance(text, str) else 0


def _prompt_tokens(messages: list[Any], body: dict[str, Any] | None = None) -> int | None:
    """3 + sum(4 + words) over messages, plus the billed parameters; None when a message is
    not an object."""
    total = 3
    for name in _BILLED_PARAMS:
        if body is not None and body.get(name) is not None:
            total += len(orjson.dumps(body[name])) // 4
    for msg in messages:
        if not isinstance(msg, dict):
            return None
        content = msg.get("content")
        total += 4
        if isinstance(content, str):
            total += len(content.split())
        elif isinstance(content, list):
            for part in content:
                if isinstance(part, dict) and part.get("type") == "text":
                    total += _words(part.get("text"))
    return total


class _Behaviour:
    """What to do with one chat request (decided before the latency sleep)."""

    __slots__ = (
        "cut_after",
        "echo_headers",
        "hang",
        "latency_ms",
        "malformed",
        "oversize",
        "redirect",
        "retry_after",
        "status",
        "usage",
        "zero_tail",
    )

    def __init__(
        self,
        latency_ms: float,
        status: int = 0,
        retry_after: float | None = None,
        hang: bool = False,
        cut_after: int = -1,
    ) -> None:
        self.latency_ms = latency_ms
        self.status = status
        self.retry_after = retry_after
        self.hang = hang
        self.cut_after = cut_after
        self.redirect: str | bool = False
        self.echo_headers = False
        self.oversize = 0
        self.malformed = False
        self.usage: object = _HONEST
        self.zero_tail = False


class _Mock:
    """Server state (config, one-shot queue, stats) and the request handlers."""

    def __init__(self, config: MockConfig, body_timeout: float = BODY_TIMEOUT) -> None:
        _check_config(config)
        self.body_timeout = body_timeout
        self.initial = replace(config, models=tuple(config.models))
        self.shutting_down = asyncio.Event()
        self._reply_cache: dict[int, str] = {}
        self._word_cache: list[str] = []
        self._apply(replace(self.initial))
        self._reset_runtime()

    # -- state ---------------------------------------------------------------------------

    def _apply(self, config: MockConfig) -> None:
        self.config = config
        self.rng = random.Random(config.seed)
        self.models = frozenset(config.models)
        self.auth = None if config.api_key is None else f"Bearer {config.api_key}".encode()
        self.models_body = orjson.dumps(
            {
                "object": "list",
                "data": [
                    {"id": m, "object": "model", "created": _MODEL_CREATED, "owned_by": "mock"}
                    for m in config.models
                ],
            }
        )
        self.any_rate = (
            config.fail_rate_429 + config.fail_rate_500 + config.hang_rate + config.cut_rate
        ) > 0

    def _reset_runtime(self) -> None:
        self.queue: deque[_Behaviour] = deque()
        self.requests = 0
        self.by_outcome: dict[str, int] = {}
        self.prompt_total = 0
        self.completion_total = 0
        self.calls: deque[dict[str, Any]] = deque(maxlen=MAX_CALLS)
        # The messages of the last chat request, as received (lets tests see redaction).
        self.last_messages: list[Any] | None = None
        # Requests that reached /_mock/elsewhere (where `redirect` points).
        self.elsewhere = {"hits": 0, "with_authorization": 0}
        self.last_body: dict[str, Any] | None = None
        self.script: _Script | None = None

    def config_json(self) -> dict[str, Any]:
        """The current config as a JSON-ready dict."""
        data = asdict(self.config)
        data["models"] = list(self.config.models)
        return data

    def _record(
        self,
        request: web.Request,
        model: object,
        stream: bool,
        outcome: str,
        prompt: int = 0,
        completion: int = 0,
    ) -> None:
        self.by_outcome[outcome] = self.by_outcome.get(outcome, 0) + 1
        self.prompt_total += prompt
        self.completion_total += completion
        self.calls.append(
            {
                "request_id": request.headers.get("X-Request-ID"),
                "model": model if isinstance(model, str) else None,
                "stream": stream,
                "outcome": outcome,
                "prompt_tokens": prompt,
                "completion_tokens": completion,
            }
        )

    def _reply(self, n: int) -> str:
        text = self._reply_cache.get(n)
        if text is None:
            text = " ".join(f"w{i}" for i in range(n))
            if len(self._reply_cache) < 4096:
                self._reply_cache[n] = text
        return text

    def _word(self, i: int) -> str:
        cache = self._word_cache
        while len(cache) <= i:
            k = len(cache)
            cache.append(f"w{k}" if k == 0 else f" w{k}")
        return cache[i]

    def _decide(self) -> _Behaviour:
        cfg = self.config
        if self.queue:
            item = self.queue.popleft()
            if item.latency_ms < 0:
                item.latency_ms = cfg.latency_ms
            if item.retry_after == -1:
                item.retry_after = cfg.retry_after
            return item
        if self.any_rate:
            r = self.rng.random()
            edge = cfg.fail_rate_429
            if r < edge:
                return _Behaviour(cfg.latency_ms, status=429, retry_after=cfg.retry_after)
            edge += cfg.fail_rate_500
            if r < edge:
                return _Behaviour(cfg.latency_ms, status=500)
            edge += cfg.hang_rate
            if r < edge:
                return _Behaviour(cfg.latency_ms, hang=True)
            edge += cfg.cut_rate
            if r < edge:
                return _Behaviour(cfg.latency_ms, cut_after=cfg.cut_after_chunks)
        return _Behaviour(cfg.latency_ms)

    def _auth_error(self, request: web.Request) -> web.Response | None:
        if self.auth is None:
            return None
        got = request.headers.get("Authorization")
        if got is None:
            return _error(
                401,
                "You didn't provide an API key. You need to provide your API key in an "
                "Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).",
                code="invalid_api_key",
            )
        if not hmac.compare_digest(got.encode(), self.auth):
            return _error(401, "Incorrect API key provided.", code="invalid_api_key")
        return None

    # -- OpenAI surface ------------------------------------------------------------------

    async def models_handler(self, request: web.Request) -> web.Response:
        """GET /v1/models."""
        denied = self._auth_error(request)
        if denied is not None:
            return denied
        return web.Response(body=self.models_body, content_type=_JSON_CT)

    async def chat_handler(self, request: web.Request) -> web.StreamResponse:
        """POST /v1/chat/completions."""
        self.requests += 1
        denied = self._auth_error(request)
        if denied is not None:
            self._record(request, None, False, "401")
            return denied
        try:
            raw = await asyncio.wait_for(request.read(), self.body_timeout)
        except TimeoutError:
            self._record(request, None, False, "408")
            response = _error(408, "The request body was not received in time.")
            response.force_close()
            await response.prepare(request)
            await response.write_eof()
            _abort(request)  # without waiting for the rest of a body that is not coming
            return response
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            self._record(request, None, False, "400")
            return _error(400, "We could not parse the JSON body of your request.")
        if not isinstance(body, dict):
            self._record(request, None, False, "400")
            return _error(400, "The request body must be a JSON object.")
        model = body.get("model")
        stream = body.get("stream") is True
        bad = self._validate(body, model)
        if bad is not None:
            self._record(request, model, stream, str(bad.status))
            return bad
        messages: list[Any] = body["messages"]
        self.last_messages = messages
        self.last_body = body
        prompt = _prompt_tokens(messages, body)
        if prompt is None:
            self._record(request, model, stream, "400")
            return _error(400, "Each message must be an object.", param="messages")
        if self.script is not None:
            return await self._scripted(request, body, cast(str, model), prompt, stream)
        limit = body.get("max_completion_tokens")
        if limit is None:
            limit = body.get("max_tokens")
        if limit is not None and (not _is_int(limit) or limit < 1):
            self._record(request, model, stream, "400")
            return _error(400, "max_tokens must be an integer >= 1.", param="max_tokens")
        words = self.config.reply_words
        finish = "stop"
        if limit is not None and limit < words:
            words, finish = limit, "length"

        act = self._decide()
        if act.latency_ms > 0:
            await asyncio.sleep(act.latency_ms / 1000)
        if act.hang:
            self._record(request, model, stream, "hang")
            return await self._hang(request)
        if act.redirect:
            self._record(request, model, stream, "redirect")
            return self._redirect(request, act.redirect)
        if act.status:
            self._record(request, model, stream, str(act.status))
            if act.echo_headers:
                return self._echo_error(request, act.status)
            return self._status_error(act)
        model = cast(str, model)  # checked by _validate
        if stream:
            options = body.get("stream_options")
            usage = isinstance(options, dict) and options.get("include_usage") is True
            return await self._stream(request, model, prompt, words, finish, usage, act)
        if act.cut_after >= 0:
            self._record(request, model, stream, "cut", prompt, 0)
            _abort(request)
            return web.Response()
        if act.malformed:
            self._record(request, model, stream, "malformed", prompt, words)
            return web.Response(
                body=b'{"id":"chatcmpl-x","choices":[{"index":0,', content_type=_JSON_CT
            )
        self._record(request, model, stream, "oversize" if act.oversize else "ok", prompt, words)
        created = int(time.time())
        payload = {
            "id": f"chatcmpl-{self.rng.getrandbits(96):024x}",
            "object": "chat.completion",
            "created": created,
            "model": model,
            "choices": [
                {
                    "index": 0,
                    "message": {
                        "role": "assistant",
                        "content": self._reply(words),
                        "refusal": None,
                    },
                    "logprobs": None,
                    "finish_reason": finish,
                }
            ],
            "usage": {
                "prompt_tokens": prompt,
                "completion_tokens": words,
                "total_tokens": prompt + words,
            },
            "system_fingerprint": "fp_mock",
        }
        if act.oversize:
            payload["padding"] = "x" * act.oversize
        if act.usage == _ABSENT:
            del payload["usage"]
        elif act.usage is not _HONEST:
            payload["usage"] = act.usage
        return web.Response(body=orjson.dumps(payload), content_type=_JSON_CT)

    def _redirect(self, request: web.Request, target: str | bool) -> web.Response:
        if isinstance(target, str):
            location = target
        else:
            port = request.url.port
            location = f"http://localhost:{port}{ELSEWHERE}/v1/chat/completions"
        return web.Response(status=302, headers={"Location": location})

    def _echo_error(self, request: web.Request, status: int) -> web.Response:
        """An error that echoes every request header (what a careless upstream may do)."""
        seen = dict(request.headers)
        auth = seen.get("Authorization", "") or seen.get("api-key", "")
        body = orjson.dumps(
            {
                "error": {
                    "message": f"Request rejected. Headers received: {seen}",
                    "type": auth,
                    "code": auth,
                    "param": auth,
                }
            }
        )
        return web.Response(
            status=status, body=body, content_type=_JSON_CT, headers={"X-Echo": auth}
        )

    async def elsewhere_handler(self, request: web.Request) -> web.Response:
        """Any request to /_mock/elsewhere/...: counted (the origin a redirect points to)."""
        self.elsewhere["hits"] += 1
        if request.headers.get("Authorization") or request.headers.get("api-key"):
            self.elsewhere["with_authorization"] += 1
        return web.json_response({"elsewhere": True})

    def _validate(self, body: dict[str, Any], model: object) -> web.Response | None:
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            return _error(
                400,
                "'messages' must be a non-empty array of message objects.",
                param="messages",
            )
        if not isinstance(model, str) or not model:
            return _error(400, "you must provide a model parameter", param="model")
        if model not in self.models:
            return _error(
                404,
                f"The model `{model}` does not exist or you do not have access to it.",
                code="model_not_found",
            )
        return None

    def _status_error(self, act: _Behaviour) -> web.Response:
        status = act.status
        message = _ERROR_MESSAGES.get(status, f"Mock error {status}.")
        headers = None
        code = None
        if status == 429:
            code = "rate_limit_exceeded"
            if act.retry_after is not None:
                headers = {"Retry-After": _fmt_seconds(act.retry_after)}
        return _error(status, message, code=code, headers=headers)

    async def _hang(self, request: web.Request) -> web.Response:
        """Never answer: wait until the client goes away or the server shuts down."""
        while not self.shutting_down.is_set():
            transport = request.transport
            if transport is None or transport.is_closing():
                break
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.shutting_down.wait(), _HANG_POLL_S)
        _abort(request)
        return web.Response()

    async def _stream(
        self,
        request: web.Request,
        model: str,
        prompt: int,
        words: int,
        finish: str,
        include_usage: bool,
        act: _Behaviour,
    ) -> web.StreamResponse:
        cut_after = act.cut_after
        oversize = act.oversize
        resp = web.StreamResponse(headers=_SSE_HEADERS)
        head = b"".join(
            (
                b'data: {"id":"chatcmpl-',
                f"{self.rng.getrandbits(96):024x}".encode(),
                b'","object":"chat.completion.chunk","created":',
                str(int(time.time())).encode(),
                b',"model":',
                orjson.dumps(model),
                b',"system_fingerprint":"fp_mock","choices":[{"index":0,"delta":',
            )
        )
        tail = b',"logprobs":null,"finish_reason":null}]' + (
            b',"usage":null}\n\n' if include_usage else b"}\n\n"
        )
        sent = 0
        try:
            await resp.prepare(request)
            await resp.write(head + b'{"role":"assistant","content":"","refusal":null}' + tail)
            if oversize:
                await resp.write(head + orjson.dumps({"content": "x" * oversize}) + tail)
            todo = words if cut_after < 0 else min(words, cut_after)
            for i in range(todo):
                await resp.write(head + orjson.dumps({"content": self._word(i)}) + tail)
                sent += 1
            if cut_after >= 0:
                self._record(request, model, True, "cut", prompt, sent)
                _abort(request)
                return resp
            end = b',"logprobs":null,"finish_reason":"' + finish.encode() + b'"}]'
            await resp.write(
                head + b"{}" + end + (b',"usage":null}\n\n' if include_usage else b"}\n\n")
            )
            if include_usage and act.usage != _ABSENT:
                claimed: object = {
                    "prompt_tokens": prompt,
                    "completion_tokens": words,
                    "total_tokens": prompt + words,
                }
                if act.usage is not _HONEST:
                    claimed = act.usage
                # Reuse the id/created/model prefix but with an empty choices list.
                prefix = head[: head.index(b',"choices":')]
                usage = orjson.dumps(claimed)
                await resp.write(prefix + b',"choices":[],"usage":' + usage + b"}\n\n")
                if act.zero_tail:
                    zero = b'{"prompt_tokens":0,"completion_tokens":0,"total_tokens":0}'
                    await resp.write(prefix + b',"choices":[],"usage":' + zero + b"}\n\n")
            await resp.write(_DONE)
        except ConnectionError:
            self._record(request, model, True, "disconnected", prompt, sent)
            return resp
        self._record(request, model, True, "oversize" if oversize else "ok", prompt, words)
        return resp

    # -- scripted replies ----------------------------------------------------------------

    async def _scripted(
        self, request: web.Request, body: dict[str, Any], model: str, prompt: int, stream: bool
    ) -> web.StreamResponse:
        """Answer with the scripted text (JSON, or SSE in chunks of `chunk_chars`)."""
        script = cast(_Script, self.script)
        pieces = script.pieces()
        completion = len(pieces)
        self._record(request, model, stream, "ok", prompt, completion)
        usage = {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
        }
        base = {
            "id": f"chatcmpl-{self.rng.getrandbits(96):024x}",
            "created": int(time.time()),
            "model": model,
        }
        if not stream:
            message: dict[str, Any] = {
                "role": "assistant",
                "content": script.text,
                "refusal": script.refusal,
            }
            if script.tool_arguments is not None:
                message["tool_calls"] = [
                    {
                        "id": "call_mock",
                        "type": "function",
                        "function": {"name": "lookup", "arguments": script.tool_arguments},
                    }
                ]
            choice = {"index": 0, "message": message, "finish_reason": "stop"}
            payload = {**base, "object": "chat.completion", "choices": [choice], "usage": usage}
            return web.Response(body=orjson.dumps(payload), content_type=_JSON_CT)
        resp = web.StreamResponse(headers=_SSE_HEADERS)
        await resp.prepare(request)

        async def send(delta: dict[str, Any], finish: str | None = None) -> None:
            choice = {"index": 0, "delta": delta, "finish_reason": finish}
            chunk = {**base, "object": "chat.completion.chunk", "choices": [choice]}
            await resp.write(b"data: " + orjson.dumps(chunk) + b"\n\n")

        with contextlib.suppress(ConnectionError):
            await send({"role": "assistant", "content": ""})
            for field_name, piece in pieces:
                if field_name == "tool_arguments":
                    call = {"index": 0, "function": {"arguments": piece}}
                    await send({"tool_calls": [call]})
                else:
                    await send({field_name: piece})
            await send({}, "stop")
            options = body.get("stream_options")
            if isinstance(options, dict) and options.get("include_usage") is True:
                chunk = {**base, "object": "chat.completion.chunk", "choices": [], "usage": usage}
                await resp.write(b"data: " + orjson.dumps(chunk) + b"\n\n")
            await resp.write(_DONE)
        return resp

    async def reply(self, request: web.Request) -> web.Response:
        """POST /_mock/reply: script the text of the next answers (`{"text": null}` stops)."""
        try:
            data = orjson.loads(await request.read())
            self.script = _Script.parse(data)
        except (orjson.JSONDecodeError, _BadConfig) as exc:
            return _error(400, str(exc) or "invalid JSON")
        return web.json_response({"scripted": self.script is not None}, dumps=_dumps)

    async def last_request(self, request: web.Request) -> web.Response:
        """GET /_mock/last_request: the last chat request body, as received."""
        return web.Response(body=orjson.dumps(self.last_body), content_type=_JSON_CT)

    # -- control surface -----------------------------------------------------------------

    async def config_get(self, request: web.Request) -> web.Response:
        """GET /_mock/config: the current config."""
        return web.json_response(self.config_json(), dumps=_dumps)

    async def config_post(self, request: web.Request) -> web.Response:
        """POST /_mock/config: partial update of the config, answers the whole config."""
        try:
            patch = orjson.loads(await request.read())
        except orjson.JSONDecodeError:
            return _error(400, "invalid JSON")
        if not isinstance(patch, dict):
            return _error(400, "expected a JSON object of MockConfig fields")
        known = {f.name for f in fields(MockConfig)}
        unknown = sorted(set(patch) - known)
        if unknown:
            return _error(400, f"unknown config fields: {', '.join(unknown)}")
        if "models" in patch:
            if not isinstance(patch["models"], list):
                return _error(400, "models must be a list of strings")
            patch["models"] = tuple(patch["models"])
        candidate = replace(self.config, **patch)
        try:
            _check_config(candidate)
        except _BadConfig as exc:
            return _error(400, str(exc))
        seed_changed = "seed" in patch
        rng = self.rng
        self._apply(candidate)
        if not seed_changed:
            self.rng = rng  # keep the random sequence going unless a new seed was given
        return web.json_response(self.config_json(), dumps=_dumps)

    async def enqueue(self, request: web.Request) -> web.Response:
        """POST /_mock/enqueue: append one-shot behaviours for the next chat requests."""
        try:
            items = orjson.loads(await request.read())
        except orjson.JSONDecodeError:
            return _error(400, "invalid JSON")
        if isinstance(items, dict):
            items = [items]
        if not isinstance(items, list):
            return _error(400, "expected a JSON list of behaviours")
        parsed: list[_Behaviour] = []
        for item in items:
            try:
                parsed.append(_parse_item(item))
            except _BadConfig as exc:
                return _error(400, str(exc))
        self.queue.extend(parsed)
        return web.json_response({"queued": len(self.queue)}, dumps=_dumps)

    async def reset(self, request: web.Request) -> web.Response:
        """POST /_mock/reset: clear queue and stats, restore the start config."""
        self._apply(replace(self.initial))
        self._reset_runtime()
        return web.json_response(self.config_json(), dumps=_dumps)

    async def stats(self, request: web.Request) -> web.Response:
        """GET /_mock/stats: counters and the most recent calls."""
        body = orjson.dumps(
            {
                "requests": self.requests,
                "by_outcome": self.by_outcome,
                "prompt_tokens": self.prompt_total,
                "completion_tokens": self.completion_total,
                "queued": len(self.queue),
                "calls": list(self.calls),
                "last_messages": self.last_messages,
                "elsewhere": self.elsewhere,
            }
        )
        return web.Response(body=body, content_type=_JSON_CT)

    async def on_shutdown(self, app: web.Application) -> None:
        """Release hanging requests so the server can stop promptly."""
        self.shutting_down.set()


@dataclass
class _Script:
    """A scripted answer: content, refusal and tool-call arguments, streamed in chunks."""

    text: str | None
    refusal: str | None = None
    tool_arguments: str | None = None
    chunk_chars: int = 3

    @classmethod
    def parse(cls, data: object) -> _Script | None:
        """A `/_mock/reply` body -> script (None when text, refusal and arguments are null)."""
        if not isinstance(data, dict):
            raise _BadConfig("the reply must be a JSON object")
        unknown = sorted(set(data) - {"text", "refusal", "tool_arguments", "chunk_chars"})
        if unknown:
            raise _BadConfig(f"unknown reply keys: {', '.join(unknown)}")
        values = {k: data.get(k) for k in ("text", "refusal", "tool_arguments")}
        if any(v is not None and not isinstance(v, str) for v in values.values()):
            raise _BadConfig("text, refusal and tool_arguments must be strings or null")
        chunk = data.get("chunk_chars", 3)
        if not _is_int(chunk) or chunk < 1:
            raise _BadConfig("chunk_chars must be an integer >= 1")
        if all(v is None for v in values.values()):
            return None
        return cls(values["text"], values["refusal"], values["tool_arguments"], chunk)

    def pieces(self) -> list[tuple[str, str]]:
        """(field, text) pieces of the stream, in order: content, refusal, arguments."""
        out: list[tuple[str, str]] = []
        size = self.chunk_chars
        for name, value in (
            ("content", self.text),
            ("refusal", self.refusal),
            ("tool_arguments", self.tool_arguments),
        ):
            if value:
                out.extend((name, value[i : i + size]) for i in range(0, len(value), size))
        return out


def _dumps(obj: Any) -> str:
    return orjson.dumps(obj).decode()


def _fmt_seconds(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


def _abort(request: web.Request) -> None:
    """Drop the TCP connection without (finishing) a response."""
    transport = request.transport
    if transport is not None:
        transport.abort()


def _parse_item(item: object) -> _Behaviour:
    """One `/_mock/enqueue` item -> behaviour; latency/retry_after -1 mean "from config"."""
    if not isinstance(item, dict):
        raise _BadConfig("each behaviour must be a JSON object")
    unknown = sorted(set(item) - _QUEUE_KEYS)
    if unknown:
        raise _BadConfig(f"unknown behaviour keys: {', '.join(unknown)}")
    latency = item.get("latency_ms", -1)
    if not _is_number(latency) or (latency < 0 and "latency_ms" in item):
        raise _BadConfig("latency_ms must be a number >= 0")
    act = _Behaviour(float(latency), retry_after=-1)
    if "status" in item:
        status = item["status"]
        if not _is_int(status) or not 400 <= status <= 599:
            raise _BadConfig("status must be an integer in 400..599")
        act.status = status
    if "retry_after" in item:
        retry = item["retry_after"]
        if retry is not None and (not _is_number(retry) or retry < 0):
            raise _BadConfig("retry_after must be a number >= 0 or null")
        act.retry_after = retry
    if "hang" in item:
        if not isinstance(item["hang"], bool):
            raise _BadConfig("hang must be a boolean")
        act.hang = item["hang"]
    if "cut_after_chunks" in item:
        cut = item["cut_after_chunks"]
        if not _is_int(cut) or cut < 0:
            raise _BadConfig("cut_after_chunks must be an integer >= 0")
        act.cut_after = cut
    if "redirect" in item:
        target = item["redirect"]
        if not isinstance(target, bool | str) or target == "":
            raise _BadConfig("redirect must be true or a URL")
        act.redirect = target
    for flag in ("echo_headers", "malformed"):
        if flag in item:
            if not isinstance(item[flag], bool):
                raise _BadConfig(f"{flag} must be a boolean")
            setattr(act, flag, item[flag])
    if "oversize_bytes" in item:
        size = item["oversize_bytes"]
        if not _is_int(size) or size < 0:
            raise _BadConfig("oversize_bytes must be an integer >= 0")
        act.oversize = size
    if "usage" in item:
        act.usage = item["usage"]
    if "trailing_zero_usage" in item:
        if not isinstance(item["trailing_zero_usage"], bool):
            raise _BadConfig("trailing_zero_usage must be a boolean")
        act.zero_tail = item["trailing_zero_usage"]
    return act


_STATE_KEY: Final = web.AppKey("mock_openai_state", _Mock)


def build_app(config: MockConfig, *, body_timeout: float = BODY_TIMEOUT) -> web.Application:
    """Build the aiohttp application serving the mock (OpenAI surface and /_mock/ control)."""
    state = _Mock(config, body_timeout)
    app = web.Application(client_max_size=16 * 1024 * 1024)
    app[_STATE_KEY] = state
    routes: list[tuple[str, str, Callable[[web.Request], Awaitable[web.StreamResponse]]]] = [
        ("GET", "/v1/models", state.models_handler),
        ("POST", "/v1/chat/completions", state.chat_handler),
        ("GET", "/_mock/config", state.config_get),
        ("POST", "/_mock/config", state.config_post),
        ("POST", "/_mock/enqueue", state.enqueue),
        ("POST", "/_mock/reset", state.reset),
        ("GET", "/_mock/stats", state.stats),
        ("*", ELSEWHERE + "/{tail:.*}", state.elsewhere_handler),
        ("POST", "/_mock/reply", state.reply),
        ("GET", "/_mock/last_request", state.last_request),
    ]
    for method, path, handler in routes:
        app.router.add_route(method, path, handler)
    app.on_shutdown.append(state.on_shutdown)
    return app


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="mock-openai", description="Serve an OpenAI-compatible mock upstream."
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8090)
    parser.add_argument("--latency-ms", type=float, default=0.0)
    parser.add_argument("--fail-rate-429", type=float, default=0.0)
    parser.add_argument("--fail-rate-500", type=float, default=0.0)
    parser.add_argument("--hang-rate", type=float, default=0.0)
    parser.add_argument("--cut-rate", type=float, default=0.0)
    parser.add_argument("--cut-after-chunks", type=int, default=2)
    parser.add_argument("--reply-words", type=int, default=12)
    parser.add_argument("--api-key", default=None)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--keepalive-timeout", type=float, default=KEEPALIVE_TIMEOUT)
    parser.add_argument("--body-timeout", type=float, default=BODY_TIMEOUT)
    return parser.parse_args(argv)


async def _serve(
    config: MockConfig,
    host: str,
    port: int,
    keepalive_timeout: float = KEEPALIVE_TIMEOUT,
    body_timeout: float = BODY_TIMEOUT,
) -> int:
    app = build_app(config, body_timeout=body_timeout)
    runner = web.AppRunner(
        app, access_log=None, shutdown_timeout=2.0, keepalive_timeout=keepalive_timeout
    )
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port, backlog=1024)
        try:
            await site.start()
        except OSError as exc:
            sys.stderr.write(f"mock-openai: cannot listen on {host}:{port}: {exc}\n")
            return 1
        bound_port = runner.addresses[0][1] if runner.addresses else port
        shown = f"[{host}]" if ":" in host else host
        print(f"mock-openai listening on http://{shown}:{bound_port}/v1", flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        try:
            await stop.wait()
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)
    finally:
        await runner.cleanup()
    return 0


def main(argv: list[str] | None = None) -> int:
    """CLI entry point: serve the mock until SIGINT/SIGTERM; returns the exit status."""
    args = _parse_args(argv)
    try:
        config = MockConfig(
            latency_ms=args.latency_ms,
            fail_rate_429=args.fail_rate_429,
            fail_rate_500=args.fail_rate_500,
            hang_rate=args.hang_rate,
            cut_rate=args.cut_rate,
            cut_after_chunks=args.cut_after_chunks,
            reply_words=args.reply_words,
            api_key=args.api_key,
            seed=args.seed,
        )
        _check_config(config)
    except _BadConfig as exc:
        sys.stderr.write(f"mock-openai: {exc}\n")
        return 2
    loop_factory: Callable[[], asyncio.AbstractEventLoop] | None = None
    try:
        import uvloop

        loop_factory = uvloop.new_event_loop
    except ImportError:
        pass
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        return runner.run(
            _serve(config, args.host, args.port, args.keepalive_timeout, args.body_timeout)
        )


if __name__ == "__main__":
    raise SystemExit(main())
