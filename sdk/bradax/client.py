"""`Broker`: the synchronous client (httpx.Client), safe to share between threads."""

from __future__ import annotations

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
from bradax.streaming import ChatStream
from bradax.tokens import TokenManager, Tokens

if TYPE_CHECKING:
    import openai

__all__ = ["Broker"]


class Broker:
    """A client of the bradax broker for one project.

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
        transport: httpx.BaseTransport | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = Config.resolve(base_url, project_id, api_key)
        self.retry = retry or RetryPolicy()
        self._http = httpx.Client(
            base_url=self.config.base_url,
            timeout=timeout,
            headers=default_headers(headers),
            transport=transport,
        )
        self._tokens = TokenManager(
            self._login_call, self._refresh_call, clock=clock, margin=refresh_margin
        )

    # -- the API ---------------------------------------------------------------------

    @overload
    def invoke(
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
    def invoke(
        self,
        model: str,
        messages: MessagesInput,
        *,
        stream: Literal[True],
        idempotency_key: None = None,
        request_timeout: float | None = None,
        **parameters: Any,
    ) -> ChatStream: ...

    def invoke(
        self,
        model: str,
        messages: MessagesInput,
        *,
        stream: bool = False,
        idempotency_key: str | None = None,
        request_timeout: float | None = None,
        **parameters: Any,
    ) -> InvokeResponse | ChatStream:
        """Call a model through the broker (POST /api/v1/llm/invoke).

        `messages` is a prompt string or chat messages; `parameters` are the generation
        parameters (max_tokens, temperature, top_p, stop, ...). Without `stream` the answer is
        an `InvokeResponse`, and every retry of the call carries one Idempotency-Key (yours or
        a fresh uuid4), so the broker never runs or charges it twice. With `stream=True` it is
        a `ChatStream` of `StreamDelta` (the broker takes no Idempotency-Key on streams).
        Errors are raised as `bradax.errors` types.
        """
        body = invoke_body(model, messages, parameters, stream)
        if stream:
            if idempotency_key is not None:
                raise ValueError("the broker does not accept an Idempotency-Key with stream=True")
            return self.stream_body(body, request_timeout=request_timeout)
        key = idempotency_key or str(uuid.uuid4())
        response = self._send(
            INVOKE_PATH,
            body,
            headers={"Idempotency-Key": key},
            authed=True,
            idempotent=True,
            timeout=request_timeout,
        )
        return parse_invoke(response)

    def stream(
        self,
        model: str,
        messages: MessagesInput,
        *,
        request_timeout: float | None = None,
        **parameters: Any,
    ) -> ChatStream:
        """Same as `invoke(model, messages, stream=True, ...)`."""
        body = invoke_body(model, messages, parameters, True)
        return self.stream_body(body, request_timeout=request_timeout)

    def stream_body(
        self, body: dict[str, Any], *, request_timeout: float | None = None
    ) -> ChatStream:
        """Open a stream for a prepared invoke body; errors before the first event raise here."""
        response = self._send(
            INVOKE_PATH,
            body,
            headers={"Accept": "text/event-stream"},
            authed=True,
            idempotent=False,
            stream=True,
            timeout=request_timeout,
        )
        return ChatStream(response)

    # -- tokens ----------------------------------------------------------------------

    def token(self) -> str:
        """A valid access token (logging in or refreshing first if needed)."""
        return self._tokens.current().access_token

    def login(self) -> TokenPair:
        """Exchange the API key for a new token pair now."""
        return self._tokens.renew(self._tokens.tokens, force_login=True).pair

    def refresh(self) -> TokenPair:
        """Rotate the tokens now (logging in if there are none or the refresh is refused)."""
        return self._tokens.renew(self._tokens.tokens).pair

    def logout(self) -> None:
        """Revoke the session's refresh token family and forget the tokens."""
        tokens = self._tokens.drop()
        if tokens is not None:
            self._send(REVOKE_PATH, {"refresh_token": tokens.pair.refresh_token}, retries=False)

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

    def openai_client(self, **kwargs: Any) -> openai.OpenAI:
        """An official `openai.OpenAI` client for the broker, authenticated by the API key."""
        from bradax.openai_compat import openai_client

        return openai_client(self.config, **kwargs)

    # -- lifecycle -------------------------------------------------------------------

    def close(self) -> None:
        """Close the connection pool (the tokens stay valid until they expire)."""
        self._http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Broker(base_url={self.config.base_url!r}, project_id={self.config.project_id!r})"

    # -- transport -------------------------------------------------------------------

    def _login_call(self) -> TokenPair:
        body = {"project_id": self.config.project_id, "api_key": self.config.api_key}
        return parse_tokens(self._send(TOKEN_PATH, body, idempotent=True))

    def _refresh_call(self, refresh_token: str) -> TokenPair:
        # Never retried: a refresh token is single-use, so a lost answer means logging in.
        return parse_tokens(
            self._send(REFRESH_PATH, {"refresh_token": refresh_token}, retries=False)
        )

    def _send(
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
            tokens = self._tokens.current() if authed else None
            request = self._http.build_request(
                "POST",
                path,
                json=body,
                headers={**(headers or {}), **(bearer(tokens.access_token) if tokens else {})},
                timeout=timeout if timeout is not None else httpx.USE_CLIENT_DEFAULT,
            )
            error: BradaxError
            try:
                response = self._http.send(request, stream=stream)
            except httpx.TransportError as exc:
                error = connection_error(exc)
            else:
                if response.is_success:
                    return response
                response.read()
                response.close()
                error = response_error(response)
                if authed and response.status_code == 401 and not renewed:
                    renewed = True
                    self._tokens.renew(tokens)
                    continue
            wait = None
            if retries:
                elapsed = time.monotonic() - started
                wait = self.retry.wait(error, attempt, elapsed, idempotent=idempotent)
            if wait is None:
                raise error
            attempt += 1
            time.sleep(wait)
