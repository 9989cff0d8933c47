"""Chat bodies as Gemini `generateContent` requests, and the chat features that do not map.

What maps (the request's `GenerateContentRequest`):

- system / developer messages before the conversation -> `systemInstruction`; user ->
  `{"role": "user"}` with text parts, `data:` URL images and files (PDFs) and base64
  `input_audio` (wav, mp3) as `inlineData`; assistant -> `{"role": "model"}` with text parts
  (its `refusal` when it has no text) and `functionCall` parts (arguments parsed: they must
  be a JSON object); tool messages -> `functionResponse` parts `{name, response: {"result":
  content}}`, the name found from the assistant tool call of that id. Consecutive contents of
  one role are merged.
- tools -> `functionDeclarations` (`parametersJsonSchema`: the JSON Schema as given);
  tool_choice auto / required / none / a function -> `functionCallingConfig` AUTO / ANY /
  NONE / ANY with `allowedFunctionNames`.
- `generationConfig`: maxOutputTokens (the larger of max_tokens, max_completion_tokens),
  temperature, topP, top_k (topK), stop (stopSequences), seed, presencePenalty,
  frequencyPenalty, response_format json_object / json_schema (responseMimeType
  application/json, responseJsonSchema), reasoning_effort none / low / medium / high
  (thinkingBudget 0 / 1024 / 8192 / 24576, Google's own mapping for its OpenAI endpoint).

Refused (400 naming the parameter): n > 1, logprobs, top_logprobs, logit_bias, audio and
non-text modalities, prediction, parallel_tool_calls false, the legacy functions /
function_call, verbosity, web_search_options, a service tier but auto / default, other
reasoning efforts, http(s) image URLs and file ids (Gemini reads only uploaded files by
URI), data: URLs whose data is not standard, padded base64 (what the personal-data screen
decodes), an image_url whose data is not an image (it is reserved as one image: a document
or a video would bill beyond that), other audio formats, system messages once the conversation
has started, `function` messages, non-function tools, allowed_tools, and any field not named
here.

Gemini 3 models refuse a replayed `functionCall` without the thought signature they gave it,
which a chat body cannot carry: the first call of each replayed model turn is sent with the
signature Google documents for history from elsewhere (`skip_thought_signature_validator`);
the model goes on without its earlier reasoning.

Dropped, as they change neither the answer nor the bill: stream and stream_options (the
endpoint says it), user, metadata, store, safety_identifier, prompt_cache_key, a message's
`name`, a tool's `strict` flag and a json_schema's name, description and strict flag (the
schema itself is sent).
"""

from __future__ import annotations

import binascii
import re
from typing import Any

import orjson

from common.dialect import unsupported
from common.errors import BadRequest

# Chat fields this module reads (their values may still be refused below).
_MAPPED = frozenset(
    {
        "model",
        "messages",
        "max_tokens",
        "max_completion_tokens",
        "temperature",
        "top_p",
        "top_k",
        "stop",
        "seed",
        "presence_penalty",
        "frequency_penalty",
        "response_format",
        "tools",
        "tool_choice",
        "parallel_tool_calls",
        "n",
        "logprobs",
        "reasoning_effort",
        "service_tier",
        "modalities",
    }
)
_DROPPED = frozenset(
    {
        "stream",
        "stream_options",
        "user",
        "metadata",
        "store",
        "safety_identifier",
        "prompt_cache_key",
    }
)
_CONFIG = (
    ("temperature", "temperature"),
    ("top_p", "topP"),
    ("top_k", "topK"),
    ("seed", "seed"),
    ("presence_penalty", "presencePenalty"),
    ("frequency_penalty", "frequencyPenalty"),
)
THINKING_BUDGETS = {"none": 0, "low": 1024, "medium": 8192, "high": 24576}
_CHOICE_MODES = {"auto": "AUTO", "required": "ANY", "none": "NONE"}
_AUDIO_TYPES = {"wav": "audio/wav", "mp3": "audio/mp3"}
# The thought signature Google documents for function calls it did not sign (Gemini 3 on).
UNSIGNED = "skip_thought_signature_validator"
_SIGNING = re.compile(r"(?:models/)?gemini-(\d+)")


def refuse(param: str, why: str) -> BadRequest:
    """The 400 for a chat feature Gemini cannot carry."""
    return unsupported(param, why, "Gemini")


def check(body: dict[str, Any]) -> None:
    """BadRequest naming the first feature of `body` that has no Gemini equivalent."""
    for name, value in body.items():
        if name in _DROPPED or value is None:
            continue
        if name not in _MAPPED:
            raise refuse(name, "it has no equivalent in generateContent")
    if (body.get("n") or 1) != 1:
        raise refuse("n", "one candidate per call is served")
    if body.get("logprobs"):
        raise refuse("logprobs", "log probabilities are not relayed")
    if body.get("parallel_tool_calls") is False:
        raise refuse("parallel_tool_calls", "Gemini cannot be held to one call per turn")
    modalities = body.get("modalities")
    if modalities is not None and modalities != ["text"]:
        raise refuse("modalities", "only text answers are served")
    tier = body.get("service_tier")
    if tier is not None and tier not in ("auto", "default"):
        raise refuse("service_tier", f"there is no '{tier}' tier")
    effort = body.get("reasoning_effort")
    if effort is not None and (not isinstance(effort, str) or effort not in THINKING_BUDGETS):
        raise refuse("reasoning_effort", "none, low, medium and high map to thinking budgets")
    generate_request(body)  # the messages, tools and formats refuse what they cannot carry


def generate_request(body: dict[str, Any]) -> dict[str, Any]:
    """The GenerateContentRequest of a chat body (BadRequest for what does not map)."""
    system, contents = _contents(body.get("messages") or [])
    version = _SIGNING.match(str(body.get("model")))
    if version is not None and int(version.group(1)) >= 3:
        _sign(contents)
    request: dict[str, Any] = {"contents": contents}
    if system:
        request["systemInstruction"] = {"parts": system}
    tools = body.get("tools")
    if tools and not isinstance(tools, list):
        raise refuse("tools", "tools must be a list of function tools")
    if tools:
        request["tools"] = [{"functionDeclarations": [_declaration(t) for t in tools]}]
    choice = body.get("tool_choice")
    if choice is not None:
        request["toolConfig"] = {"functionCallingConfig": _calling(choice)}
    config = _generation_config(body)
    if config:
        request["generationConfig"] = config
    return request


def _sign(contents: list[dict[str, Any]]) -> None:
    """Give the first function call of each model turn the signature-less signature."""
    for content in contents:
        if content["role"] != "model":
            continue
        first = next((p for p in content["parts"] if "functionCall" in p), None)
        if first is not None:
            first["thoughtSignature"] = UNSIGNED


def _generation_config(body: dict[str, Any]) -> dict[str, Any]:
    config: dict[str, Any] = {}
    caps = [body[n] for n in ("max_tokens", "max_completion_tokens") if body.get(n) is not None]
    if caps:
        config["maxOutputTokens"] = max(caps)
    for name, field in _CONFIG:
        if body.get(name) is not None:
            config[field] = body[name]
    stop = body.get("stop")
    if stop:
        config["stopSequences"] = [stop] if isinstance(stop, str) else list(stop)
    config.update(_response_format(body.get("response_format")))
    effort = body.get("reasoning_effort")
    if effort is not None:
        config["thinkingConfig"] = {"thinkingBudget": THINKING_BUDGETS[effort]}
    return config


def _response_format(spec: object) -> dict[str, Any]:
    if spec is None:
        return {}
    kind = spec.get("type") if isinstance(spec, dict) else None
    if kind == "text":
        return {}
    if kind == "json_object":
        return {"responseMimeType": "application/json"}
    if kind == "json_schema":
        assert isinstance(spec, dict)
        schema = spec.get("json_schema")
        if isinstance(schema, dict) and isinstance(schema.get("schema"), dict):
            return {"responseMimeType": "application/json", "responseJsonSchema": schema["schema"]}
        raise refuse("response_format", "a json_schema needs its 'schema' object")
    raise refuse("response_format", "only text, json_object and json_schema map")


def _declaration(tool: object) -> dict[str, Any]:
    function = tool.get("function") if isinstance(tool, dict) else None
    if (
        not isinstance(tool, dict)
        or tool.get("type") != "function"
        or not isinstance(function, dict)
    ):
        raise refuse("tools", "only function tools map to function declarations")
    found: dict[str, Any] = {"name": function.get("name")}
    if function.get("description") is not None:
        found["description"] = function["description"]
    if function.get("parameters") is not None:
        found["parametersJsonSchema"] = function["parameters"]
    return found


def _calling(choice: object) -> dict[str, Any]:
    if isinstance(choice, str) and choice in _CHOICE_MODES:
        return {"mode": _CHOICE_MODES[choice]}
    function = choice.get("function") if isinstance(choice, dict) else None
    if isinstance(choice, dict) and choice.get("type") == "function" and isinstance(function, dict):
        return {"mode": "ANY", "allowedFunctionNames": [function.get("name")]}
    raise refuse("tool_choice", "auto, required, none and one function map")


def _contents(messages: list[Any]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The system instruction's parts and the conversation's contents (merged by role)."""
    system: list[dict[str, Any]] = []
    contents: list[dict[str, Any]] = []
    names: dict[str, str] = {}  # tool call id -> function name, the latest call of that id
    for message in messages:
        if not isinstance(message, dict):
            raise refuse("messages", "each message must be an object")
        role = message.get("role")
        if role in ("system", "developer"):
            if contents:
                raise refuse("messages", "a system message after the conversation started")
            system.extend(_text_parts(message.get("content"), "system"))
            continue
        if role == "user":
            parts = _user_parts(message.get("content"))
            _append(contents, "user", parts)
        elif role == "assistant":
            _append(contents, "model", _model_parts(message, names))
        elif role == "tool":
            _append(contents, "user", [_function_response(message, names)])
        else:
            raise refuse("messages", f"'{role}' messages do not map")
    return system, contents


def _append(contents: list[dict[str, Any]], role: str, parts: list[dict[str, Any]]) -> None:
    """Add parts to the conversation, in the last content when it has the same role."""
    if not parts:
        return
    if contents and contents[-1]["role"] == role:
        contents[-1]["parts"].extend(parts)
    else:
        contents.append({"role": role, "parts": parts})


def _text_parts(content: object, role: str) -> list[dict[str, Any]]:
    """The text parts of a message that may hold text only."""
    if content is None:
        return []
    if isinstance(content, str):
        return [{"text": content}] if content else []
    if not isinstance(content, list):
        raise refuse("messages", f"a {role} message's content must be text or parts")
    parts: list[dict[str, Any]] = []
    for part in content:
        kind = part.get("type") if isinstance(part, dict) else None
        if not isinstance(part, dict) or kind not in ("text", "refusal"):
            raise refuse("messages", f"a {role} message may hold text parts only")
        text = part.get(kind)
        if not isinstance(text, str):
            raise refuse("messages", "a text part needs its text")
        if text:
            parts.append({"text": text})
    return parts


def _user_parts(content: object) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [{"text": content}]
    if not isinstance(content, list):
        raise refuse("messages", "a user message's content must be text or parts")
    parts: list[dict[str, Any]] = []
    for part in content:
        if not isinstance(part, dict):
            raise refuse("messages", "each content part must be an object")
        kind = part.get("type")
        if kind == "text" and isinstance(part.get("text"), str):
            parts.append({"text": part["text"]})
        elif kind == "image_url":
            spec = part.get("image_url")
            url = spec.get("url") if isinstance(spec, dict) else spec
            image = _inline(url, "image_url", "image")
            if not image["inlineData"]["mimeType"].lower().startswith("image/"):
                raise refuse("image_url", "an image_url must hold an image (image/* data)")
            parts.append(image)
        elif kind == "input_audio":
            parts.append(_audio(part.get("input_audio")))
        elif kind == "file":
            spec = part.get("file")
            if isinstance(spec, dict) and spec.get("file_id") is not None:
                raise refuse("file", "file ids name OpenAI's storage")
            data = spec.get("file_data") if isinstance(spec, dict) else None
            parts.append(_inline(data, "file", "file"))
        else:
            raise refuse("messages", f"a '{kind}' content part does not map")
    return parts


def _inline(url: object, param: str, what: str) -> dict[str, Any]:
    """A `data:<mime>;base64,<data>` URL as inline data; anything else is refused."""
    if not isinstance(url, str) or not url.startswith("data:"):
        raise refuse(param, f"only data: URLs map; Gemini reads a remote {what} by file URI")
    head, comma, data = url[5:].partition(",")
    mime, _, encoding = head.partition(";")
    if not comma or encoding != "base64" or not mime:
        raise refuse(param, "a data: URL must be base64 with its media type")
    try:
        # Google also reads unpadded and URL-safe base64, which the personal-data screen
        # does not decode: only what it could read is sent.
        binascii.a2b_base64(data, strict_mode=True)
    except binascii.Error:
        raise refuse(param, "a data: URL's data must be standard, padded base64") from None
    return {"inlineData": {"mimeType": mime, "data": data}}


def _audio(spec: object) -> dict[str, Any]:
    data = spec.get("data") if isinstance(spec, dict) else None
    kind = spec.get("format") if isinstance(spec, dict) else None
    if not isinstance(data, str) or not isinstance(kind, str) or kind not in _AUDIO_TYPES:
        raise refuse("input_audio", "base64 wav and mp3 audio map")
    return {"inlineData": {"mimeType": _AUDIO_TYPES[kind], "data": data}}


def _model_parts(message: dict[str, Any], names: dict[str, str]) -> list[dict[str, Any]]:
    if message.get("audio") is not None:
        raise refuse("messages", "an earlier audio answer cannot be replayed")
    parts = _text_parts(message.get("content"), "assistant")
    refusal = message.get("refusal")
    if not parts and isinstance(refusal, str) and refusal:
        parts.append({"text": refusal})  # what the model said, as its text would be
    calls = message.get("tool_calls") or []
    if not isinstance(calls, list):
        raise refuse("messages", "an assistant's tool_calls must be a list")
    for call in calls:
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(call, dict) or call.get("type", "function") != "function":
            raise refuse("messages", "only function tool calls map")
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            raise refuse("messages", "a tool call needs its function name")
        parts.append({"functionCall": {"name": function["name"], "args": _arguments(function)}})
        if isinstance(call.get("id"), str):
            names[call["id"]] = function["name"]
    return parts


def _arguments(function: dict[str, Any]) -> dict[str, Any]:
    """A tool call's arguments as the JSON object Gemini takes ("" is no arguments)."""
    raw = function.get("arguments")
    if raw in (None, ""):
        return {}
    try:
        args = orjson.loads(raw) if isinstance(raw, str | bytes) else None
        orjson.dumps(args)  # deeper than orjson writes (254 levels): not sent
    except (orjson.JSONDecodeError, orjson.JSONEncodeError):
        args = None
    if not isinstance(args, dict):
        raise refuse(
            "messages", "a tool call's arguments must be a JSON object, 254 levels deep at most"
        )
    return args


def _function_response(message: dict[str, Any], names: dict[str, str]) -> dict[str, Any]:
    call_id = message.get("tool_call_id")
    name = names.get(call_id) if isinstance(call_id, str) else None
    if name is None:
        raise refuse("messages", "a tool message must answer an earlier assistant tool call")
    content = message.get("content")
    if isinstance(content, list):
        content = "".join(part["text"] for part in _text_parts(content, "tool"))
    return {"functionResponse": {"name": name, "response": {"result": content}}}
