"""A chat body as an Amazon Bedrock Converse request body: what maps, and what is refused.

Mapped: system and developer messages -> `system` text blocks (in order, wherever they stand:
Converse has no system turn); user text and base64 `data:` images (png, jpeg, gif, webp; an
image's `detail` has no equivalent and is dropped) -> text / image blocks; assistant text and
`tool_calls` -> text / toolUse blocks; tool messages -> toolResult blocks in a user turn;
consecutive turns of one role are merged (Converse wants them alternating). `tools` ->
`toolConfig.tools[].toolSpec`; `tool_choice` auto / required / a function -> auto / any /
tool; `max_tokens` (or `max_completion_tokens`), `temperature`, `top_p`, `stop` ->
`inferenceConfig`. A prompt-cache breakpoint (`cache_control` on a part, a tool, a system or
tool message) is a `cachePoint` block after it.

Refused (BadRequest naming the parameter): n > 1, logprobs, top_logprobs, response_format
other than text, seed, non-zero presence / frequency penalties, logit_bias, audio output and
modalities other than text, prediction, parallel_tool_calls false, tool_choice none while
tools are given, image URLs that are not `data:` URLs, audio and file parts, a function
message, and any other parameter (reasoning_effort, service_tier, ...): none of them has a
faithful Converse equivalent. Dropped, as harmless: `stream_options` (Converse always
reports usage), `user`, `metadata` and a message's `name` (nowhere to put them).
"""

from __future__ import annotations

from typing import Any, Final

import orjson

from common.dialect import unsupported
from common.errors import BadRequest
from common.wire import dumps

# A prompt-cache breakpoint: what comes before it in its list is cached.
CACHE_POINT: Final = {"cachePoint": {"type": "default"}}
# Sent to Converse, each mapped below.
MAPPED: Final = frozenset(
    {
        "model",
        "messages",
        "max_tokens",
        "max_completion_tokens",
        "temperature",
        "top_p",
        "stop",
        "tools",
        "tool_choice",
        "stream",
    }
)
DROPPED: Final = frozenset({"stream_options", "user", "metadata"})
# Parameters accepted only at the value that changes nothing (their OpenAI default).
NEUTRAL: Final[dict[str, tuple[object, ...]]] = {
    "n": (1,),
    "logprobs": (False,),
    "seed": (),
    "presence_penalty": (0, 0.0),
    "frequency_penalty": (0, 0.0),
    "logit_bias": ({},),
    "modalities": (["text"],),
    "parallel_tool_calls": (True,),
    "top_logprobs": (),
    "audio": (),
    "prediction": (),
    "response_format": ({"type": "text"},),
}
IMAGE_FORMATS: Final = {
    "image/png": "png",
    "image/jpeg": "jpeg",
    "image/jpg": "jpeg",
    "image/gif": "gif",
    "image/webp": "webp",
}


def refuse(param: str, what: str) -> BadRequest:
    """The BadRequest for a feature Bedrock's Converse API cannot carry."""
    return unsupported(param, what, "Amazon Bedrock")


def check(body: dict[str, Any]) -> None:
    """BadRequest naming the first feature of `body` that does not map to Converse."""
    converse_body(body)


def converse_body(body: dict[str, Any]) -> dict[str, Any]:
    """The Converse request body for a chat body (the model goes in the URL)."""
    for name, value in body.items():
        if value is None or name in MAPPED or name in DROPPED:
            continue
        if name not in NEUTRAL:
            raise refuse(name, f"'{name}'")
        if value not in NEUTRAL[name]:
            raise refuse(name, f"'{name}' = {dumps(value).decode()[:40]}")
    system, messages = _messages(body.get("messages"))
    out: dict[str, Any] = {"messages": messages}
    if system:
        out["system"] = system
    inference = _inference(body)
    if inference:
        out["inferenceConfig"] = inference
    tools = _tool_config(body.get("tools"), body.get("tool_choice"))
    if tools is not None:
        out["toolConfig"] = tools
    return out


def _inference(body: dict[str, Any]) -> dict[str, Any]:
    found: dict[str, Any] = {}
    cap = body.get("max_completion_tokens")
    if cap is None:
        cap = body.get("max_tokens")
    if cap is not None:
        found["maxTokens"] = cap
    if body.get("temperature") is not None:
        found["temperature"] = body["temperature"]
    if body.get("top_p") is not None:
        found["topP"] = body["top_p"]
    stop = body.get("stop")
    if isinstance(stop, str):
        found["stopSequences"] = [stop]
    elif isinstance(stop, list) and stop:
        found["stopSequences"] = stop
    elif stop is not None and not isinstance(stop, list):
        raise refuse("stop", "a 'stop' that is neither a string nor a list")
    return found


def _tool_config(tools: object, choice: object) -> dict[str, Any] | None:
    if not tools:
        if choice in (None, "auto", "none"):
            return None
        raise refuse("tool_choice", "'tool_choice' without tools")
    if not isinstance(tools, list):
        raise refuse("tools", "'tools' that is not a list")
    specs = []
    for index, tool in enumerate(tools):
        function = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(function, dict) or tool.get("type") != "function":
            raise refuse(f"tools[{index}]", "a tool that is not a function")
        spec: dict[str, Any] = {
            "name": function.get("name"),
            "inputSchema": {"json": function.get("parameters") or {"type": "object"}},
        }
        if function.get("description"):
            spec["description"] = function["description"]
        if isinstance(function.get("strict"), bool):
            spec["strict"] = function["strict"]
        specs.append({"toolSpec": spec})
        if _breakpoint(tool, f"tools[{index}]"):
            specs.append(CACHE_POINT)
    config: dict[str, Any] = {"tools": specs}
    if choice == "auto":
        config["toolChoice"] = {"auto": {}}
    elif choice == "required":
        config["toolChoice"] = {"any": {}}
    elif choice == "none":
        raise refuse("tool_choice", "'tool_choice' = none with tools")
    elif isinstance(choice, dict):
        function = choice.get("function")
        name = function.get("name") if isinstance(function, dict) else None
        if choice.get("type") != "function" or not isinstance(name, str):
            raise refuse("tool_choice", "this 'tool_choice'")
        config["toolChoice"] = {"tool": {"name": name}}
    elif choice is not None:
        raise refuse("tool_choice", "this 'tool_choice'")
    return config


def _messages(messages: object) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(system blocks, alternating Converse messages) of the chat messages."""
    if not isinstance(messages, list):
        raise refuse("messages", "'messages' that is not a list")
    system: list[dict[str, Any]] = []
    turns: list[dict[str, Any]] = []
    for index, message in enumerate(messages):
        where = f"messages[{index}]"
        if not isinstance(message, dict):
            raise refuse(where, "a message that is not an object")
        role = message.get("role")
        content = message.get("content")
        if role in ("system", "developer"):
            system.extend({"text": text} for text in _texts(content, where) if text)
            if _breakpoints(content, where):
                system.append(CACHE_POINT)
            continue
        if role == "user":
            turn_role, blocks = "user", _user_blocks(content, where)
        elif role == "assistant":
            turn_role, blocks = "assistant", _assistant_blocks(message, where)
        elif role == "tool":
            turn_role, blocks = "user", [_tool_result(message, where)]
            if _breakpoints(content, where):
                blocks.append(CACHE_POINT)
        else:
            raise refuse(f"{where}.role", f"a '{role}' message")
        if turns and turns[-1]["role"] == turn_role:
            turns[-1]["content"].extend(blocks)
        else:
            turns.append({"role": turn_role, "content": blocks})
    return system, turns


def _texts(content: object, where: str) -> list[str]:
    """The texts of a content made of text only (a string, or text parts)."""
    if content is None:
        return []
    if isinstance(content, str):
        return [content]
    if not isinstance(content, list):
        raise refuse(f"{where}.content", "a content that is neither a string nor a list")
    texts = []
    for index, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text" and isinstance(part.get("text"), str):
            texts.append(part["text"])
        elif kind == "refusal" and isinstance(part.get("refusal"), str):
            texts.append(part["refusal"])
        else:
            raise refuse(f"{where}.content[{index}]", f"a '{kind}' part here")
    return texts


def _user_blocks(content: object, where: str) -> list[dict[str, Any]]:
    if not isinstance(content, list):
        return [{"text": text} for text in _texts(content, where) if text]
    blocks: list[dict[str, Any]] = []
    for index, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        place = f"{where}.content[{index}]"
        if kind == "image_url":
            blocks.append(_image(part.get("image_url"), place))
        elif kind == "text" and isinstance(part.get("text"), str):
            if part["text"]:
                blocks.append({"text": part["text"]})
        else:
            raise refuse(place, f"a '{kind}' part here")
        if _breakpoint(part, place):
            blocks.append(CACHE_POINT)
    return blocks


def _breakpoint(part: dict[str, Any], where: str) -> bool:
    """Whether a part or tool is a prompt-cache breakpoint (Anthropic's `cache_control`,
    which Converse writes as a `cachePoint` block after it)."""
    hint = part.get("cache_control")
    if hint is None:
        return False
    if not isinstance(hint, dict) or hint.get("type") != "ephemeral":
        raise refuse(f"{where}.cache_control", "a cache hint other than ephemeral")
    return True


def _breakpoints(content: object, where: str) -> bool:
    """Whether any part of a content is a prompt-cache breakpoint."""
    if not isinstance(content, list):
        return False
    return any(
        _breakpoint(part, f"{where}.content[{i}]")
        for i, part in enumerate(content)
        if isinstance(part, dict)
    )


def _image(spec: object, where: str) -> dict[str, Any]:
    """A `data:<type>;base64,<data>` image as an image block (other URLs are refused:
    Converse takes an image's bytes, or an S3 location)."""
    url = spec.get("url") if isinstance(spec, dict) else spec
    if not isinstance(url, str) or not url.startswith("data:"):
        raise refuse(where, "an image given by URL (only data: URLs)")
    head, _, data = url[5:].partition(",")
    media, _, encoding = head.partition(";")
    fmt = IMAGE_FORMATS.get(media.lower())
    if fmt is None or encoding != "base64" or not data:
        raise refuse(where, f"an image of type '{media[:40]}' (png, jpeg, gif, webp in base64)")
    return {"image": {"format": fmt, "source": {"bytes": data}}}


def _assistant_blocks(message: dict[str, Any], where: str) -> list[dict[str, Any]]:
    if message.get("audio") is not None:
        raise refuse(f"{where}.audio", "an assistant audio reference")
    texts = _texts(message.get("content"), where)
    if not texts and isinstance(message.get("refusal"), str):
        texts = [message["refusal"]]
    blocks: list[dict[str, Any]] = [{"text": text} for text in texts if text]
    calls = message.get("tool_calls") or []
    if not isinstance(calls, list):
        raise refuse(f"{where}.tool_calls", "'tool_calls' that is not a list")
    for index, call in enumerate(calls):
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict) or call.get("type", "function") != "function":
            raise refuse(f"{where}.tool_calls[{index}]", "a tool call that is not a function")
        try:
            arguments = orjson.loads(function.get("arguments") or "{}")
            orjson.dumps(arguments)  # deeper than orjson writes (254 levels): not sent
        except (orjson.JSONDecodeError, TypeError):
            arguments = None
        if not isinstance(arguments, dict):
            raise refuse(
                f"{where}.tool_calls[{index}].function.arguments",
                "tool call arguments that are not a JSON object (at most 254 levels deep)",
            )
        use = {"toolUseId": call.get("id"), "name": function.get("name"), "input": arguments}
        blocks.append({"toolUse": use})
    return blocks


def _tool_result(message: dict[str, Any], where: str) -> dict[str, Any]:
    texts = [text for text in _texts(message.get("content"), where) if text]
    result = {
        "toolUseId": message.get("tool_call_id"),
        "content": [{"text": text} for text in texts],
    }
    return {"toolResult": result}
