"""What the Bedrock mock writes and checks on the wire: AWS event-stream messages, AWS JSON
errors, request validation as Converse does it, SigV4 verification, and the token count.

An event-stream message is a 12-byte prelude (total length, headers length, CRC32 of those
8 bytes), headers (name length, name, type 7 = string, value length, value), the JSON payload
and a CRC32 of everything before it; big-endian throughout.
"""

from __future__ import annotations

import hmac
import struct
import zlib
from collections.abc import Mapping
from typing import Any, Final

import orjson
from aiohttp import web

from bradax_cli.mock.config import MockConfig, is_int

EVENT_STREAM_CT: Final = "application/vnd.amazon.eventstream"
ERROR_TYPES: Final = {
    400: "ValidationException",
    403: "AccessDeniedException",
    404: "ResourceNotFoundException",
    408: "ModelTimeoutException",
    424: "ModelErrorException",
    429: "ThrottlingException",
    500: "InternalServerException",
    503: "ServiceUnavailableException",
}
REQUEST_FIELDS: Final = frozenset(
    {
        "messages",
        "system",
        "inferenceConfig",
        "toolConfig",
        "guardrailConfig",
        "additionalModelRequestFields",
        "promptVariables",
        "additionalModelResponseFieldPaths",
        "requestMetadata",
        "performanceConfig",
    }
)
BLOCK_KINDS: Final = frozenset({"text", "image", "document", "toolUse", "toolResult", "cachePoint"})
_HEADER_STRING: Final = 7


def frame(headers: Mapping[str, str], payload: bytes) -> bytes:
    """One event-stream message."""
    encoded = b"".join(
        bytes((len(name),))
        + name.encode()
        + bytes((_HEADER_STRING,))
        + struct.pack(">H", len(value.encode()))
        + value.encode()
        for name, value in headers.items()
    )
    total = 12 + len(encoded) + len(payload) + 4
    prelude = struct.pack(">II", total, len(encoded))
    message = prelude + struct.pack(">I", zlib.crc32(prelude)) + encoded + payload
    return message + struct.pack(">I", zlib.crc32(message))


def event(kind: str, data: dict[str, Any]) -> bytes:
    """A ConverseStream event message (`:event-type` kind, JSON payload)."""
    headers = {":event-type": kind, ":content-type": "application/json", ":message-type": "event"}
    return frame(headers, orjson.dumps(data))


def exception(kind: str, message: str) -> bytes:
    """An exception message in a stream (`:message-type` exception)."""
    headers = {
        ":exception-type": kind,
        ":content-type": "application/json",
        ":message-type": "exception",
    }
    return frame(headers, orjson.dumps({"message": message}))


def error(
    status: int, message: str, kind: str | None = None, headers: dict[str, str] | None = None
) -> web.Response:
    """An AWS JSON error: `{"message"}` (and `__type`, as AWS JSON protocols write it), the
    type in `x-amzn-ErrorType`."""
    if kind is None:
        kind = ERROR_TYPES.get(status, "InternalServerException" if status >= 500 else "")
        kind = kind or "ValidationException"
    found = {"x-amzn-ErrorType": f"{kind}:http://internal.amazon.com/coral/com.amazon.bedrock/"}
    found.update(headers or {})
    body = orjson.dumps({"message": message, "__type": kind})
    return web.Response(status=status, body=body, content_type="application/json", headers=found)


def _words(text: object) -> int:
    return len(text.split()) if isinstance(text, str) else 0


def prompt_tokens(body: dict[str, Any]) -> int:
    """3 + sum(4 + words) over the system blocks and messages (text and tool-result text),
    plus a token per 4 bytes of the toolConfig's JSON."""
    total = 3
    for block in body.get("system") or ():
        total += 4 + _words(block.get("text") if isinstance(block, dict) else None)
    for message in body["messages"]:
        total += 4
        for block in message["content"]:
            total += _words(block.get("text"))
            result = block.get("toolResult")
            for part in result.get("content") or () if isinstance(result, dict) else ():
                total += _words(part.get("text") if isinstance(part, dict) else None)
    if body.get("toolConfig") is not None:
        total += len(orjson.dumps(body["toolConfig"])) // 4
    return total


def invalid(body: dict[str, Any]) -> str | None:
    """What Converse would refuse in this body (its ValidationException message), or None."""
    unknown = sorted(set(body) - REQUEST_FIELDS)
    if unknown:
        return f"Unknown parameter in input: {unknown[0]}"
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        return "A conversation must start with a user message."
    tools = body.get("toolConfig")
    if tools is not None and (not isinstance(tools, dict) or not tools.get("tools")):
        return "The toolConfig field must contain at least one tool."
    for index, message in enumerate(messages):
        if not isinstance(message, dict) or message.get("role") not in ("user", "assistant"):
            return f"messages.{index}.role must be user or assistant."
        if message["role"] != ("user" if index % 2 == 0 else "assistant"):
            return "A conversation must alternate between user and assistant roles."
        content = message.get("content")
        if not isinstance(content, list) or not content:
            return f"messages.{index}.content must not be empty."
        for number, block in enumerate(content):
            where = f"messages.{index}.content.{number}"
            if not isinstance(block, dict) or len(block) != 1 or set(block) - BLOCK_KINDS:
                return f"The ContentBlock object at {where} must set one known member."
            if "text" in block and not (isinstance(block["text"], str) and block["text"].strip()):
                return f"The text field in the ContentBlock object at {where} is blank."
            if ("toolUse" in block or "toolResult" in block) and tools is None:
                return "The toolConfig field must be defined when using toolUse and toolResult."
    cap = (body.get("inferenceConfig") or {}).get("maxTokens")
    if cap is not None and (not is_int(cap) or cap < 1):
        return "The maximum tokens you requested must be at least 1."
    return None


def auth_error(config: MockConfig, request: web.Request, raw: bytes) -> web.Response | None:
    """403 for a request that is neither a valid Bedrock API key (when one is configured)
    nor a valid SigV4 signature (verified when AWS credentials are configured), else None."""
    got = request.headers.get("Authorization", "")
    if got.startswith("Bearer "):
        if config.api_key is None or hmac.compare_digest(
            got.encode(), f"Bearer {config.api_key}".encode()
        ):
            return None
        return error(403, "Authentication failed: invalid API key.", "AccessDeniedException")
    if got.startswith("AWS4-HMAC-SHA256 "):
        if config.aws_access_key_id is None or config.aws_secret_access_key is None:
            return None
        return _sigv4_error(config, request, raw, got)
    return error(403, "Missing Authentication Token", "MissingAuthenticationTokenException")


def _sigv4_error(
    config: MockConfig, request: web.Request, raw: bytes, authorization: str
) -> web.Response | None:
    """Recompute the signature with botocore from the request as received and compare."""
    from botocore.auth import SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    fields: dict[str, str] = {}
    for part in authorization.removeprefix("AWS4-HMAC-SHA256 ").split(","):
        name, _, value = part.strip().partition("=")
        fields[name] = value
    scope = fields.get("Credential", "").split("/")
    if len(scope) != 5 or scope[0] != config.aws_access_key_id:
        return error(
            403,
            "The security token included in the request is invalid.",
            "UnrecognizedClientException",
        )
    if scope[3] != "bedrock":
        message = "Credential should be scoped to correct service: 'bedrock'."
        return error(403, message, "InvalidSignatureException")
    signed = fields.get("SignedHeaders", "").split(";")
    headers = {name: request.headers.get(name, "") for name in signed if name}
    url = f"{request.scheme}://{request.host}{request.raw_path}"
    aws = AWSRequest(method=request.method, url=url, data=raw, headers=headers)
    aws.context["timestamp"] = request.headers.get("X-Amz-Date", "")
    token = request.headers.get("X-Amz-Security-Token")
    credentials = Credentials(config.aws_access_key_id, config.aws_secret_access_key, token)
    signer = SigV4Auth(credentials, scope[3], scope[2])
    canonical = signer.canonical_request(aws)
    expected = signer.signature(signer.string_to_sign(aws, canonical), aws)
    if hmac.compare_digest(str(expected).encode(), fields.get("Signature", "").encode()):
        return None
    return error(
        403,
        "The request signature we calculated does not match the signature you provided.",
        "InvalidSignatureException",
    )
