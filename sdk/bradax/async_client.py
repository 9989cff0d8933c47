"""`AsyncBroker`: the asyncio client (httpx.AsyncClient), safe to share between tasks."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable, Mapping
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal, Self, overload

import httpx

from bradax._http import (
    DEFAULT_TIMEOUT,
    INVOKE_PATH,
    REFRESH_PATH,
    REVOKE_PATH,
    TOKEN_PATH,
    Config,
    bearer,
    connection_error,
    default_headers,
    invoke_body,
    parse_invoke,
    parse_tokens,
    response_error,
)
from bradax.errors import BradaxError
from bradax.models import InvokeResponse, MessagesInput, TokenPair
from bradax.retry import RetryPolicy
from bradax.streaming import AsyncChatStream
from bradax.tokens import AsyncTokenManager, Tokens

if TYPE_CHECKING:
    import openai

__all__ = ["AsyncBroker"]


class AsyncBroker:
    """An asyncio client of the bradax broker for one project (see `Broker`).

    Arguments default to BRADAX_BASE_URL, BRADAX_PROJECT_ID and BRADAX_API_KEY. The client
    exchanges the API key for tokens on first use, refreshes the access token when fewer than
    `refresh_margin` seconds are left (and once after a 401), and retries what is safe to
    retry under `retry` (a `RetryPolicy`). `transport` replaces httpx's (tests, proxies);
    `clock` is the monotonic clock token lifetimes are measured with.
    """

    def __init__(
        self,
        base_url: str | None = None,
        project_id: str | None = None,
        api_key: str | None = None,
        *,
        timeout: float | httpx.Timeout = DEFAULT_TIMEOUT,
        retry: RetryPolicy | None = None,
        refresh_margin: float = 30.0,
        headers: Mapping[str, str] | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = Config.resolve(base_url, project_id, api_key)
        self.retry = retry or RetryPolicy()
        self._http = httpx.AsyncClient(
            base_url=self.config.base_url,
            timeout=timeout,
            headers=default_headers(headers),
            transport=transport,
        )
        self._tokens = AsyncTokenManager(
            self._login_call, self._refresh_call, clock=clock, margin=refresh_margin
        )

    # -- the API ---------------------------------------------------------------------

    @overload
    async def invoke(
        self,
        model: str,
        messages: MessagesInput,
        *,
        stream: Literal[False] = False,
        idempotency_key: str | None = None,
        request_timeout: float | None = None,
        **parameters: Any,
    ) -> InvokeResponse: ...

    @overload
    async def invoke(
        self,
        model: str,
        messages: MessagesInput,
        *,
        stream: Literal[True],
        idempotency_key: None = None,
        request_timeout: float | None = None,
        **parameters: Any,
    ) -> AsyncChatStream: ...

    async def invoke(
        self,
        model: str,
        messages: MessagesInput,
        *,
        stream: bool = False,
        idempotency_key: str | None = None,
        request_timeout: float | None = None,
        **parameters: Any,
    ) -> InvokeResponse | AsyncChatStream:
        """Call a model through the broker (POST /api/v1/llm/invoke).

        `messages` is a prompt string or chat messages; `parameters` are the generation
        parameters (max_tokens, temperature, top_p, stop, ...). Without `stream` the answer is
        an `InvokeResponse`, and every retry of the call carries one Idempotency-Key (yours or
        a fresh uuid4), so the broker never runs or charges it twice. With `stream=True` it is
        an `AsyncChatStream` of `StreamDelta` (the broker takes no Idempotency-Key on streams).
        Errors are raised as `bradax.errors` types.
        """
        body = invoke_body(model, messages, parameters, stream)
        if stream:
            if idempotency_key is not None:
                raise ValueError("the broker does not accept an Idempotency-Key with stream=True")
            return await self.stream_body(body, request_timeout=request_timeout)
        key = idempotency_key or str(uuid.uuid4())
        response = await self._send(
            INVOKE_PATH,
            body,
            headers={"Idempotency-Key": key},
            authed=True,
            idempotent=True,
            timeout=request_timeout,
        )
        return parse_invoke(response)

    async def stream(
        self,
        model: str,
        messages: MessagesInput,
        *,
        request_timeout: float | None = None,
        **parameters: Any,
    ) -> AsyncChatStream:
        """Same as `invoke(model, messages, stream=True, ...)`."""
        body = invoke_body(model, messages, parameters, True)
        return await self.stream_body(body, request_timeout=request_timeout)

    async def stream_body(
        self, body: dict[str, Any], *, request_timeout: float | None = None
    ) -> AsyncChatStream:
        """Open a stream for a prepared invoke body; errors before the first event raise here."""
        response = await self._send(
            INVOKE_PATH,
            body,
            headers={"Accept": "text/event-stream"},
            authed=True,
            idempotent=False,
            stream=True,
            timeout=request_timeout,
        )
        return AsyncChatStream(response)

    # -- tokens ----------------------------------------------------------------------

    async def token(self) -> str:
        """A valid access token (logging in or refreshing first if needed)."""
        return (await self._tokens.current()).access_token

    async def login(self) -> TokenPair:
        """Exchange the API key for a new token pair now."""
        return (await self._tokens.renew(self._tokens.tokens, force_login=True)).pair

    async def refresh(self) -> TokenPair:
        """Rotate the tokens now (logging in if there are none or the refresh is refused)."""
        return (await self._tokens.renew(self._tokens.tokens)).pair

    async def logout(self) -> None:
        """Revoke the session's refresh token family and forget the tokens."""
        tokens = await self._tokens.drop()
        if tokens is not None:
            await self._send(
                REVOKE_PATH, {"refresh_token": tokens.pair.refresh_token}, retries=False
            )

    @property
    def tokens(self) -> Tokens | None:
        """The current tokens and their deadlines (None before the first login)."""
        return self._tokens.tokens

    @property
    def token_stats(self) -> dict[str, int]:
        """How many logins and refreshes this client made."""
        return {"logins": self._tokens.logins, "refreshes": self._tokens.refreshes}

    # -- OpenAI SDK ------------------------------------------------------------------

    @property
    def openai_base_url(self) -> str:
        """The broker's OpenAI-compatible base URL ({base_url}/v1)."""
        return self.config.openai_base_url

    def openai_client(self, **kwargs: Any) -> openai.AsyncOpenAI:
        """An official `openai.AsyncOpenAI` client for the broker, authenticated by the API key."""
        from bradax.openai_compat import async_openai_client

        return async_openai_client(self.config, **kwargs)

    # -- lifecycle -------------------------------------------------------------------

    async def close(self) -> None:
        """Close the connection pool (the tokens stay valid until they expire)."""
        await self._http.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    def __repr__(self) -> str:
        return (
            f"AsyncBroker(base_url={self.config.base_url!r}, project_id={self.config.project_id!r})"
        )

    # -- transport -------------------------------------------------------------------

    async def _login_call(self) -> TokenPair:
        body = {"project_id": self.config.project_id, "api_key": self.config.api_key}
        return parse_tokens(await self._send(TOKEN_PATH, body, idempotent=True))

    async def _refresh_call(self, refresh_token: str) -> TokenPair:
        # Never retried: a refresh token is single-use, so a lost answer means logging in.
        return parse_tokens(
            await self._send(REFRESH_PATH, {"refresh_token": refresh_token}, retries=False)
        )

    async def _send(
        self,
        path: str,
        body: dict[str, Any],
        *,
        headers: Mapping[str, str] | None = None,
        authed: bool = False,
        idempotent: bool = False,
        retries: bool = True,
        stream: bool = False,
        timeout: float | None = None,
    ) -> httpx.Response:
        """POST with the retry policy; 401 on an authed call renews the tokens once."""
        started = time.monotonic()
        attempt = 0
        renewed = False
        while True:
            tokens = await self._tokens.current() if authed else None
            request = self._http.build_request(
                "POST",
                path,
                json=body,
                headers={**(headers or {}), **(bearer(tokens.access_token) if tokens else {})},
                timeout=timeout if timeout is not None else httpx.USE_CLIENT_DEFAULT,
            )
            error: BradaxError
            try:
                response = await self._http.send(request, stream=stream)
            except httpx.TransportError as exc:
                error = connection_error(exc)
            else:
                if response.is_success:
                    return response
                await response.aread()
                await response.aclose()
                error = response_error(response)
                if authed and response.status_code == 401 and not renewed:
                    renewed = True
                    await self._tokens.renew(tokens)
                    continue
            wait = None
            if retries:
                elapsed = time.monotonic() - started
                wait = self.retry.wait(error, attempt, elapsed, idempotent=idempotent)
            if wait is None:
                raise error
            attempt += 1
            await asyncio.sleep(wait)
