"""The Amazon Bedrock dialect: the Converse API (`POST /model/{modelId}/converse` and
`/converse-stream`), spoken from and read back as chat completions.

What maps and what is refused is `common.bedrock_request`'s; the stream (an AWS binary event
stream, not SSE) is `common.bedrock_stream`'s. A route with an api_key sends it as a Bedrock
API key (`Authorization: Bearer`); otherwise each request is signed with SigV4 (service
`bedrock`, the upstream's region) with credentials from the usual AWS chain (environment,
shared files, container or instance roles), resolved once, on first use, and frozen per
request (refreshable ones refresh themselves); the request is built in a worker thread, so
neither a lookup nor a refresh blocks the event loop. No credentials to be had: a 503
`upstream_credentials_missing`, sending nothing.

Usage: Bedrock's `inputTokens` leaves out the prompt tokens read from or written to the prompt
cache, so the prompt billed is inputTokens + cacheReadInputTokens + cacheWriteInputTokens;
the completion is outputTokens. botocore (signing, event-stream decoding) is imported only
when a Bedrock upstream is used.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable, Mapping
from typing import Any, Final
from urllib.parse import quote

import aiohttp
import orjson

from common import bedrock_request, bedrock_stream, wire
from common.bedrock_stream import finish_reason, usage_counts
from common.catalog import Upstream
from common.dialect import Answer, EventReader, SSEFraming, Translator, WireRequest
from common.errors import ServiceUnavailable
from common.upstream_errors import answer_object, malformed

# Claude on Bedrock adds a tool-use system prompt (a few hundred tokens) when tools are given;
# other models their own. Generous: these are upper bounds for the reservation.
TOOLS_OVERHEAD: Final = 1000
PLAIN_OVERHEAD: Final = 16
# A model id is quoted as a path segment, but for the characters URL normalisation (yarl's,
# under aiohttp) leaves as they are: the path signed must be the path sent.
_PATH_SAFE: Final = ":@=!$&'()*,;"
_credentials: list[Any] = []  # the chain's credentials, once found


def reset_credentials() -> None:
    """Forget the credentials found (a process whose AWS credential chain changed)."""
    _credentials.clear()


def _frozen_credentials() -> Any:
    """This request's credentials from the AWS chain (found once, refreshed by botocore when
    they expire); a 503 when there are none or they cannot be had."""
    import botocore.exceptions
    import botocore.session

    try:
        if not _credentials:
            found = botocore.session.get_session().get_credentials()
            if found is None:
                raise ServiceUnavailable(
                    "no AWS credentials found to sign the Bedrock request",
                    code="upstream_credentials_missing",
                )
            _credentials.append(found)
        return _credentials[0].get_frozen_credentials()
    except botocore.exceptions.BotoCoreError as exc:
        raise ServiceUnavailable(
            f"the AWS credentials to sign the Bedrock request cannot be had ({type(exc).__name__})",
            code="upstream_credentials_missing",
        ) from None


def sign(url: str, headers: dict[str, str], data: bytes, region: str) -> dict[str, str]:
    """The headers with a SigV4 signature for a POST of `data` to `url` (service bedrock)."""
    from botocore.auth import SigV4Auth
    from botocore.awsrequest import AWSRequest

    credentials = _frozen_credentials()
    request = AWSRequest(method="POST", url=url, data=data, headers=headers)
    SigV4Auth(credentials, "bedrock", region).add_auth(request)
    return {name: str(value) for name, value in request.headers.items()}


def answer_id() -> str:
    """A chat completion id (Converse answers carry none)."""
    return f"chatcmpl-{secrets.token_hex(12)}"


class BedrockDialect(SSEFraming):
    """The `Dialect` of Bedrock's Converse API."""

    # Signing may look credentials up or refresh them (network calls): off the event loop.
    blocking = True

    def check(self, upstream: Upstream, body: dict[str, Any]) -> None:
        """BadRequest naming the first feature Converse cannot carry."""
        bedrock_request.check(body)

    def prompt_overhead(self, body: dict[str, Any]) -> int:
        """The hidden tool-use system prompt when tools are given, else a little framing."""
        return TOOLS_OVERHEAD if body.get("tools") else PLAIN_OVERHEAD

    def url(self, upstream: Upstream, stream: bool) -> str:
        """`<base_url>/model/<model id>/converse` (or `/converse-stream`)."""
        model = quote(upstream.model, safe=_PATH_SAFE)
        return f"{upstream.base_url}/model/{model}/{'converse-stream' if stream else 'converse'}"

    def request(
        self,
        upstream: Upstream,
        body: dict[str, Any],
        request_id: str,
        forward: Mapping[str, str],
    ) -> WireRequest:
        """The Converse body, with a Bedrock API key or a SigV4 signature."""
        stream = body.get("stream") is True
        url = self.url(upstream, stream)
        data = wire.dumps(bedrock_request.converse_body(body))
        headers = {
            "Content-Type": "application/json",
            "Accept": "application/vnd.amazon.eventstream" if stream else "application/json",
            "X-Request-ID": request_id,
            "User-Agent": "bradax/1.0",
        }
        if upstream.api_key:
            headers["Authorization"] = f"Bearer {upstream.api_key}"
        else:
            headers = sign(url, headers, data, upstream.region or "us-east-1")
        return WireRequest(url, headers, data)

    def answer(self, upstream: Upstream, body: bytes) -> Answer:
        """A Converse answer as a chat completion; UpstreamBadResponse when it is not one."""
        data = answer_object(upstream, body, "a Converse answer")
        output = data.get("output")
        message = output.get("message") if isinstance(output, dict) else None
        content = message.get("content") if isinstance(message, dict) else None
        if not isinstance(content, list):
            raise malformed(upstream, "upstream answer is not a Converse answer", "shape")
        texts: list[str] = []
        calls: list[dict[str, Any]] = []
        for block in content:
            if not isinstance(block, dict):
                raise malformed(upstream, "upstream answer has a malformed block", "shape")
            if isinstance(block.get("text"), str):
                texts.append(block["text"])
            use = block.get("toolUse")
            if isinstance(use, dict):
                try:
                    arguments = wire.dumps(use.get("input", {})).decode()
                except RecursionError:
                    raise malformed(
                        upstream, "upstream tool input is nested too deep", "shape"
                    ) from None
                calls.append(
                    wire.tool_call(None, str(use.get("toolUseId")), str(use.get("name")), arguments)
                )
        reply: dict[str, Any] = {
            "role": "assistant",
            "content": "".join(texts) if texts or not calls else None,
            "refusal": None,
        }
        if calls:
            reply["tool_calls"] = calls
        finish = finish_reason(data.get("stopReason"))
        usage = data.get("usage")
        counts = usage_counts(usage)
        used = None if counts is None else wire.usage(*counts)
        chat = wire.completion(answer_id(), upstream.model, reply, finish, used)
        encoded = orjson.dumps(chat)
        if counts is None:
            return Answer(chat, None, None, usage is not None, body=encoded)
        prompt, completion, read, write = counts
        return Answer(chat, prompt, completion, False, read, write, encoded)

    def error_tokens(self, body: bytes) -> Iterable[object]:
        """The error type an AWS JSON error body names (`__type`, maybe namespaced)."""
        data = wire.json_object(body) or {}
        found = data.get("__type") or data.get("code")
        if not isinstance(found, str):
            return ()
        return (found.rpartition("#")[2].partition(":")[0],)

    def reader(
        self, content: aiohttp.StreamReader, idle: float, max_event: int, max_total: int
    ) -> EventReader:
        """AWS event-stream messages, framed by their prelude."""
        return bedrock_stream.EventStreamReader(content, idle, max_event, max_total)

    def translator(self, upstream: Upstream) -> Translator:
        """A new stream's ConverseStream events -> chat chunks."""
        return bedrock_stream.ConverseTranslator(answer_id(), upstream.model)


BEDROCK = BedrockDialect()
