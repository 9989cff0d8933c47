"""A chat body as an Anthropic Messages request: what maps, what is refused, what is dropped.

Mapped: system and developer messages become the top-level `system` (text blocks, in order,
hoisted from wherever they stand); user text and images (a base64 data URL or an http(s) URL)
become content blocks, a part's prompt-cache breakpoint (`cache_control: {type: ephemeral}`,
as OpenAI-compatible gateways write it for Anthropic models) kept on its block; assistant
text, refusals and `tool_calls` become text and `tool_use` blocks (arguments parsed: an
empty string is no arguments, anything but a JSON object is a 400, and so is JSON the
personal-data screen cannot parse or nested deeper than 254 levels); `tool` messages become
`tool_result` blocks of a user turn; consecutive turns of one role are merged (Messages
alternates roles). Function tools become `{name, description, input_schema, strict}`;
tool_choice auto / required / none / a named function becomes `{type: auto | any | none |
tool}`; `parallel_tool_calls: false` is `disable_parallel_tool_use`. The token cap
(max_completion_tokens, else max_tokens) is the required `max_tokens`; temperature (at most
1 there), top_p, stop (`stop_sequences`), user or safety_identifier (`metadata.user_id`),
service_tier auto / default (`standard_only`: never Priority Tier, priced above the route)
and stream carry over.

Refused with a 400 naming the parameter, before admission (they would change the answer or
the bill): n > 1, logprobs / top_logprobs, a response_format other than text, non-zero
presence / frequency penalties, seed, logit_bias, audio, modalities other than text,
prediction, reasoning_effort (extended thinking needs a budget under max_tokens and changes
what the answer holds), legacy functions, message names, audio and file content parts, and
any parameter not named here. Dropped, as harmless: stream_options (a stream always
reports usage), metadata and store (OpenAI's stored completions), prompt_cache_key (a
routing hint), an image's `detail`, empty text, and parameters set to null.
"""

from __future__ import annotations

import json
from typing import Any

import orjson

from common.dialect import unsupported
from common.errors import BadRequest

IMAGE_TYPES = frozenset({"image/jpeg", "image/png", "image/gif", "image/webp"})
_MAPPED = frozenset(
    {
        "model",
        "messages",
        "max_tokens",
        "max_completion_tokens",
        "temperature",
        "top_p",
        "stop",
        "user",
        "safety_identifier",
        "stream",
        "tools",
        "tool_choice",
        "parallel_tool_calls",
        "service_tier",
    }
)
_DROPPED = frozenset({"stream_options", "metadata", "store", "prompt_cache_key"})
# Parameters that are harmless at their neutral value and refused at any other.
_NEUTRAL: dict[str, tuple[object, ...]] = {
    "n": (1,),
    "logprobs": (False,),
    "top_logprobs": (0,),
    "presence_penalty": (0,),
    "frequency_penalty": (0,),
    "logit_bias": ({},),
    "response_format": ({"type": "text"},),
    "modalities": (["text"],),
}
_WHAT = {
    "n": "more than one choice",
    "logprobs": "log probabilities",
    "top_logprobs": "log probabilities",
    "presence_penalty": "a presence penalty",
    "frequency_penalty": "a frequency penalty",
    "logit_bias": "logit biases",
    "response_format": "a response format other than text",
    "modalities": "output modalities other than text",
    "seed": "a sampling seed",
    "audio": "audio output",
    "prediction": "predicted outputs",
    "reasoning_effort": "a reasoning effort",
    "functions": "legacy functions (use tools)",
    "function_call": "legacy functions (use tool_choice)",
}
# Anthropic's `auto` may serve from Priority Tier capacity, priced above the route's prices:
# OpenAI's auto (the project's default tier) is Anthropic's standard tier too.
_TIERS = {"auto": "standard_only", "default": "standard_only"}


def refused(param: str, what: str) -> BadRequest:
    """The 400 for a feature an Anthropic upstream cannot carry."""
    return unsupported(param, what, "Anthropic Messages")


def _bad(param: str, message: str) -> BadRequest:
    return BadRequest(message, param=param)


def _empty(value: object) -> bool:
    return value is None or value == "" or value == [] or value == {}


def messages_body(body: dict[str, Any]) -> dict[str, Any]:
    """The Messages request for a chat body; BadRequest naming the first unmappable feature."""
    for name, value in body.items():
        if value is None or name in _MAPPED or name in _DROPPED:
            continue
        if value in _NEUTRAL.get(name, ()):
            continue
        raise refused(name, _WHAT.get(name, "an unknown parameter"))
    limit = body.get("max_completion_tokens")
    if limit is None:
        limit = body.get("max_tokens")
    if limit is None:
        raise _bad("max_tokens", "max_tokens is required by this model's upstream")
    messages = body.get("messages")
    if not isinstance(messages, list):
        raise _bad("messages", "messages must be a list")
    system, turns = conversation(messages)
    out: dict[str, Any] = {"model": body["model"], "max_tokens": limit}
    if system:
        out["system"] = system
    out["messages"] = turns
    tools = body.get("tools")
    if tools:
        out["tools"] = _tools(tools)
    choice = _tool_choice(body.get("tool_choice"), body.get("parallel_tool_calls"), bool(tools))
    if choice is not None:
        out["tool_choice"] = choice
    stop = body.get("stop")
    if isinstance(stop, str):
        out["stop_sequences"] = [stop]
    elif stop:
        out["stop_sequences"] = list(stop)
    temperature = body.get("temperature")
    if temperature is not None:
        if not isinstance(temperature, int | float) or isinstance(temperature, bool):
            raise _bad("temperature", "temperature must be a number")
        if temperature > 1:
            raise refused("temperature", "a temperature above 1")
        out["temperature"] = temperature
    if body.get("top_p") is not None:
        out["top_p"] = body["top_p"]
    user = body.get("user") or body.get("safety_identifier")
    if user:
        out["metadata"] = {"user_id": user}
    tier = body.get("service_tier")
    if tier is not None:
        if tier not in _TIERS:
            raise refused("service_tier", f"the '{tier}' service tier")
        out["service_tier"] = _TIERS[tier]
    if body.get("stream"):
        out["stream"] = True
    return out


def conversation(messages: list[Any]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(system text blocks, alternating turns) of chat messages."""
    system: list[dict[str, Any]] = []
    turns: list[dict[str, Any]] = []
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            raise _bad(where, f"{where} must be an object")
        role = message.get("role")
        content = message.get("content")
        if role in ("system", "developer"):
            _only(message, where, ())
            system += _texts(content, where)
            continue
        if role == "user":
            _only(message, where, ())
            blocks = _user(content, where)
        elif role == "assistant":
            _only(message, where, ("tool_calls", "refusal"))
            blocks = _assistant(message, where)
        elif role == "tool":
            _only(message, where, ("tool_call_id",))
            role, blocks = "user", [_tool_result(message, where)]
        else:
            raise refused(f"{where}.role", f"a '{role}' message")
        if not blocks:
            continue  # an empty message says nothing
        if turns and turns[-1]["role"] == role:
            turns[-1]["content"].extend(blocks)
        else:
            turns.append({"role": role, "content": blocks})
    return system, turns


def _only(message: dict[str, Any], where: str, allowed: tuple[str, ...]) -> None:
    """BadRequest for a message field (set) that does not map: a name, audio, anything else."""
    for key, value in message.items():
        if key in ("role", "content") or key in allowed or _empty(value):
            continue
        what = "a participant name" if key == "name" else "an unknown message field"
        raise refused(f"{where}.{key}", what)


def _texts(content: object, where: str) -> list[dict[str, Any]]:
    """Text blocks of a content that may hold only text (system, tool results)."""
    if isinstance(content, str):
        return [{"type": "text", "text": content}] if content else []
    if not isinstance(content, list):
        raise _bad(f"{where}.content", f"{where}.content must be a string or a list of parts")
    blocks: list[dict[str, Any]] = []
    for j, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind != "text" or not isinstance(part.get("text"), str):
            raise refused(f"{where}.content[{j}]", f"a '{kind}' part where only text is allowed")
        if part["text"]:
            block = {"type": "text", "text": part["text"]}
            blocks.append(_cached(block, part, f"{where}.content[{j}]"))
    return blocks


def _cached(block: dict[str, Any], part: dict[str, Any], where: str) -> dict[str, Any]:
    """The block with the part's prompt-cache breakpoint (`cache_control`), if it has one."""
    hint = part.get("cache_control")
    if hint is None:
        return block
    if not isinstance(hint, dict) or hint.get("type") != "ephemeral" or set(hint) - {"type", "ttl"}:
        raise refused(f"{where}.cache_control", "a cache hint other than ephemeral")
    return {**block, "cache_control": hint}


def _user(content: object, where: str) -> list[dict[str, Any]]:
    if not isinstance(content, list):
        return _texts(content, where)
    blocks: list[dict[str, Any]] = []
    for j, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        at = f"{where}.content[{j}]"
        if kind == "text":
            assert isinstance(part, dict)
            text = part.get("text")
            if not isinstance(text, str):
                raise _bad(at, f"{at} needs a text")
            if text:
                blocks.append(_cached({"type": "text", "text": text}, part, at))
        elif kind == "image_url":
            assert isinstance(part, dict)
            blocks.append(_cached(image(part.get("image_url"), at), part, at))
        else:
            raise refused(at, f"a '{kind}' content part")
    return blocks


def image(spec: object, where: str) -> dict[str, Any]:
    """An image block for a chat image_url: a base64 data URL, or an http(s) URL."""
    url = spec.get("url") if isinstance(spec, dict) else spec
    if not isinstance(url, str):
        raise _bad(where, f"{where} needs an image URL")
    if url.startswith("data:"):
        head, comma, data = url[5:].partition(",")
        media_type, _, encoding = head.partition(";")
        if not comma or encoding != "base64" or media_type not in IMAGE_TYPES:
            raise refused(where, "an image data URL that is not base64 JPEG, PNG, GIF or WebP")
        source = {"type": "base64", "media_type": media_type, "data": data}
        return {"type": "image", "source": source}
    if url.startswith(("https://", "http://")):
        return {"type": "image", "source": {"type": "url", "url": url}}
    raise refused(where, "an image URL that is neither a data URL nor http(s)")


def _assistant(message: dict[str, Any], where: str) -> list[dict[str, Any]]:
    content = message.get("content")
    blocks: list[dict[str, Any]] = []
    if isinstance(content, list):
        # An assistant's refusal parts are what it said, as its text parts are.
        texts = [
            {"type": "text", "text": p.get("refusal")}
            if isinstance(p, dict) and p.get("type") == "refusal"
            else p
            for p in content
        ]
        blocks += _texts(texts, where)
    elif content is not None:
        blocks += _texts(content, where)
    refusal = message.get("refusal")
    if isinstance(refusal, str) and refusal:
        blocks.append({"type": "text", "text": refusal})
    calls = message.get("tool_calls") or []
    if not isinstance(calls, list):
        raise _bad(f"{where}.tool_calls", f"{where}.tool_calls must be a list")
    for j, call in enumerate(calls):
        at = f"{where}.tool_calls[{j}]"
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(call, dict) or call.get("type", "function") != "function":
            raise refused(at, "a tool call that is not a function call")
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            raise _bad(at, f"{at} needs a function name")
        if not isinstance(call.get("id"), str):
            raise _bad(f"{at}.id", f"{at} needs an id")
        arguments = arguments_object(function.get("arguments"), f"{at}.function.arguments")
        blocks.append(
            {"type": "tool_use", "id": call["id"], "name": function["name"], "input": arguments}
        )
    return blocks


def arguments_object(raw: object, where: str) -> dict[str, Any]:
    """A tool call's JSON arguments as the object Anthropic's `input` must be: JSON as the
    personal-data screen reads it (orjson: no NaN, Infinity or lone surrogate, which it would
    scan only as written) and no deeper than orjson writes (254 levels, as a body)."""
    if raw is None or raw == "":
        return {}
    value: object = None
    try:
        if isinstance(raw, str):
            orjson.dumps(orjson.loads(raw))
            # the standard library keeps integers beyond 64 bits exact (orjson would not)
            value = json.loads(raw)
    except (ValueError, TypeError):
        value = None
    if not isinstance(value, dict):
        raise _bad(where, f"{where} must be a JSON object (at most 254 levels deep)")
    return value


def _tool_result(message: dict[str, Any], where: str) -> dict[str, Any]:
    call_id = message.get("tool_call_id")
    if not isinstance(call_id, str):
        raise _bad(f"{where}.tool_call_id", f"{where} needs a tool_call_id")
    content = message.get("content")
    result: Any = content if isinstance(content, str) else _texts(content, where)
    return {"type": "tool_result", "tool_use_id": call_id, "content": result}


def _tools(tools: object) -> list[dict[str, Any]]:
    if not isinstance(tools, list):
        raise _bad("tools", "tools must be a list")
    out: list[dict[str, Any]] = []
    for j, tool in enumerate(tools):
        at = f"tools[{j}]"
        function = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(tool, dict) or tool.get("type") != "function":
            raise refused(at, "a tool that is not a function")
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            raise _bad(at, f"{at} needs a function name")
        entry: dict[str, Any] = {"name": function["name"]}
        if function.get("description"):
            entry["description"] = function["description"]
        entry["input_schema"] = function.get("parameters") or {"type": "object"}
        if function.get("strict") is True:
            entry["strict"] = True
        out.append(_cached(entry, tool, at))
    return out


def _tool_choice(choice: object, parallel: object, tools: bool) -> dict[str, Any] | None:
    if not tools:
        if choice in (None, "auto", "none"):
            return None  # no tool could be called either way
        raise _bad("tool_choice", "tool_choice names a tool but no tools are given")
    mapped: dict[str, Any] | None
    if choice is None:
        mapped = None
    elif choice in ("auto", "required", "none"):
        mapped = {"type": {"auto": "auto", "required": "any", "none": "none"}[str(choice)]}
    elif (
        isinstance(choice, dict)
        and choice.get("type") == "function"
        and isinstance(choice.get("function"), dict)
        and isinstance(choice["function"].get("name"), str)
    ):
        mapped = {"type": "tool", "name": choice["function"]["name"]}
    else:
        raise refused("tool_choice", "a tool choice other than auto, required, none or a function")
    if parallel is False:
        mapped = mapped or {"type": "auto"}
        if mapped["type"] != "none":
            mapped["disable_parallel_tool_use"] = True
    return mapped
