"""Personal data in streamed answers: a sliding tail per text field, redacted or blocked.

An OpenAI stream carries each choice's text in pieces (``delta.content``,
``delta.refusal`` or any other string of the delta, ``delta.tool_calls[i].function.
arguments``, ``delta.function_call.arguments``, ``delta.audio.transcript``); ``logprobs``
are dropped, since their tokens would run ahead of the held tail. A CPF may arrive split
over several chunks, so each field keeps a tail that is not relayed yet: only text that
no finding can still reach is let through. The tail is `HOLD` normalised characters (the
longest numeric finding with its separators, or an e-mail's local part, plus the two
characters a match looks past its end); while an e-mail's domain is still growing at the
end, the tail reaches back to the start of its local part. So the first token waits for
at most `HOLD` characters of text (or the end of the answer), and scanning costs
O(tail) per chunk: linear in the answer.

`StreamFilter.feed` takes one SSE event (bytes) and returns the events to relay: the same
chunk with each delta text replaced by what may be released (redacted in ``redact``
mode); any other JSON event (an error, a provider's own event) is scanned whole. When a
choice finishes, or the stream ends, the tails are flushed. What was done is said in the
stream before ``[DONE]``: in ``redact`` mode a chunk with no choices and a ``bradax``
field, ``{"bradax": {"pii": {"action": "redacted", "kinds": [...]}}}`` (the OpenAI SDK
keeps the extra field); in ``block`` mode, at the first finding, an error event
``{"error": {"code": "output_pii_detected", "pii_kinds": [...], ...}}`` (the SDK raises
it as an APIError), after which nothing more is relayed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Literal

import orjson

from common import pii, pii_patterns
from common.pii_normalize import normalise
from common.pii_payload import screen

__all__ = ["HOLD", "StreamFilter"]

# The longest finding that can be complete before its last characters are seen: 19 digits
# with three-character separators between each (73), or an e-mail's local part and "@"
# (65); plus the two characters a match looks past its end.
HOLD = max(19 + 18 * 3, pii_patterns.EMAIL_LOCAL_MAX + 1) + 2
# Text already relayed that is kept as left context ("RG", "CEP", a digit before).
CONTEXT = 32
_DOMAIN_TAIL = re.compile(r"[A-Za-z0-9.-]*\Z")
EMAIL_MAX = 254  # RFC 5321: no longer address is deliverable

Action = Literal["redact", "block"]


@dataclass
class _Field:
    """One streamed text field: relayed context and the held tail (original text)."""

    context: str = ""
    held: str = ""


def _release_point(text: str) -> int:
    """How much of `text` (a held tail) may be released now, in original characters."""
    normalised = normalise(text)
    norm = normalised.text
    cut = len(norm) - HOLD
    at = norm.rfind("@", max(0, len(norm) - EMAIL_MAX))
    if at >= 0 and _DOMAIN_TAIL.match(norm, at + 1):
        cut = min(cut, at - pii_patterns.EMAIL_LOCAL_MAX)  # an e-mail may still be growing
    if cut <= 0:
        return 0
    return normalised.position(cut)


@dataclass
class StreamFilter:
    """Scans the text of a streamed answer as it passes; see the module docstring."""

    action: Action
    kinds: set[str] = field(default_factory=set)
    blocked: bool = False
    _fields: dict[tuple[Any, ...], _Field] = field(default_factory=dict)
    _template: dict[str, Any] = field(default_factory=dict)

    def feed(self, event: bytes) -> list[bytes]:
        """The events to relay for one upstream SSE event."""
        if self.blocked:
            return []
        lines = event.splitlines()
        data = [line for line in lines if line.startswith(b"data:")]
        if not data:
            return [event]
        # Several data lines form one payload, joined by newlines (as SSE clients do).
        payload = b"\n".join(line[5:].removeprefix(b" ") for line in data).strip()
        if payload == b"[DONE]":
            return [*self.finish(), event]
        try:
            chunk = orjson.loads(payload)
        except orjson.JSONDecodeError:
            return [event]
        if not isinstance(chunk, dict) or not isinstance(chunk.get("choices"), list):
            return self._other(event, chunk)
        self._template = {k: chunk[k] for k in ("id", "object", "created", "model") if k in chunk}
        changed = False
        for choice in chunk["choices"]:
            if isinstance(choice, dict) and self._choice(choice):
                changed = True
            if self.blocked:
                return [self._block_event()]
        if not changed:
            return [event]
        return [b"data: " + orjson.dumps(chunk) + b"\n\n"]

    def finish(self) -> list[bytes]:
        """Flush every held tail (the stream is over); then the final notice, if any."""
        if self.blocked:
            return []
        out: list[bytes] = []
        for key in list(self._fields):
            text = self._flush(key)
            if self.blocked:
                return [self._block_event()]
            if text:
                out.append(self._chunk(key, text))
        if self.kinds:
            notice = {
                **self._template,
                "object": "chat.completion.chunk",
                "choices": [],
                "bradax": {"pii": {"action": "redacted", "kinds": sorted(self.kinds)}},
            }
            out.append(b"data: " + orjson.dumps(notice) + b"\n\n")
        return out

    def _other(self, event: bytes, payload: Any) -> list[bytes]:
        """A JSON event that is not a chunk (an error, a provider's own event): all scanned."""
        screened = screen(payload, redact=self.action == "redact")
        if not screened.kinds:
            return [event]
        self.kinds |= screened.kinds
        if self.action == "block":
            self.blocked = True
            return [self._block_event()]
        return [b"data: " + orjson.dumps(screened.value) + b"\n\n"]

    # -- per choice ----------------------------------------------------------------------

    def _choice(self, choice: dict[str, Any]) -> bool:
        index = choice.get("index", 0)
        changed = False
        if choice.get("logprobs") is not None:
            choice["logprobs"] = None  # its tokens would run ahead of the held tail
            changed = True
        delta = choice.get("delta")
        if not isinstance(delta, dict):
            if choice.get("finish_reason") is None:
                return changed
            delta = choice["delta"] = {}
        for key, value in list(_texts(index, delta)):
            _set(delta, key, self._push(key, value))
            changed = True
        if choice.get("finish_reason") is not None:
            for key in [k for k in self._fields if k[0] == index]:
                rest = self._flush(key)
                if rest:
                    _set(delta, key, (_get(delta, key) or "") + rest)
                    changed = True
        return changed

    def _push(self, key: tuple[Any, ...], text: str) -> str:
        state = self._fields.setdefault(key, _Field())
        state.held += text
        release = _release_point(state.held)
        return self._emit(state, release)

    def _flush(self, key: tuple[Any, ...]) -> str:
        state = self._fields.pop(key, None)
        if state is None or not state.held:
            return ""
        return self._emit(state, len(state.held))

    def _emit(self, state: _Field, release: int) -> str:
        """Scan context + held, release held[:release] (redacted), keep the rest held."""
        window = state.context + state.held
        base = len(state.context)
        findings = pii.scan(window)
        limit = base + release
        out: list[str] = []
        position = base
        for f in findings:
            if f.end <= base:
                continue  # already relayed (and already handled)
            if f.start >= limit:
                break
            if f.end > limit:
                limit = max(base, f.start)  # hold the whole finding back
                break
            if self.action == "block":
                self.kinds.add(f.kind)
                self.blocked = True
                return ""
            out.append(window[position : max(position, f.start)])
            out.append(pii.label(f.kind))
            self.kinds.add(f.kind)
            position = f.end
        out.append(window[position:limit] if limit > position else "")
        released = window[base:limit]
        state.context = (state.context + released)[-CONTEXT:]
        state.held = window[limit:]
        return "".join(out)

    def _chunk(self, key: tuple[Any, ...], text: str) -> bytes:
        delta: dict[str, Any] = {}
        _set(delta, key, text)
        chunk = {
            **self._template,
            "object": "chat.completion.chunk",
            "choices": [{"index": key[0], "delta": delta, "finish_reason": None}],
        }
        return b"data: " + orjson.dumps(chunk) + b"\n\n"

    def _block_event(self) -> bytes:
        kinds = sorted(self.kinds)
        error = {
            "error": {
                "message": f"the answer contains personal data ({', '.join(kinds)}); "
                "the stream was stopped",
                "type": "invalid_request_error",
                "code": "output_pii_detected",
                "pii_kinds": kinds,
            }
        }
        return b"data: " + orjson.dumps(error) + b"\n\n"


# -- the text fields of a delta -----------------------------------------------------------
# Keys: (choice, "text", name) for a string of the delta itself (content, refusal,
# reasoning text, ...), (choice, "tool", i) for tool_calls[i].function.arguments,
# (choice, "nested", outer, inner) for function_call.arguments and audio.transcript.
_NESTED = (("function_call", "arguments"), ("audio", "transcript"))


def _texts(index: Any, delta: dict[str, Any]) -> list[tuple[tuple[Any, ...], str]]:
    """Every non-empty text of a delta with its key."""
    out: list[tuple[tuple[Any, ...], str]] = []
    for name, value in delta.items():
        if isinstance(value, str) and value and name != "role":
            out.append(((index, "text", name), value))
    for call in delta.get("tool_calls") or ():
        function = call.get("function") if isinstance(call, dict) else None
        if isinstance(function, dict):
            arguments = function.get("arguments")
            if isinstance(arguments, str) and arguments:
                out.append(((index, "tool", call.get("index", 0)), arguments))
    for outer, inner in _NESTED:
        holder = delta.get(outer)
        if isinstance(holder, dict) and isinstance(holder.get(inner), str) and holder[inner]:
            out.append(((index, "nested", outer, inner), holder[inner]))
    return out


def _get(delta: dict[str, Any], key: tuple[Any, ...]) -> str | None:
    """The text at `key` in a delta, if any."""
    if key[1] == "text":
        value = delta.get(key[2])
    elif key[1] == "tool":
        value = next(
            (
                (c.get("function") or {}).get("arguments")
                for c in delta.get("tool_calls") or ()
                if isinstance(c, dict) and c.get("index", 0) == key[2]
            ),
            None,
        )
    else:
        value = (delta.get(key[2]) or {}).get(key[3])
    return value if isinstance(value, str) else None


def _set(delta: dict[str, Any], key: tuple[Any, ...], text: str) -> None:
    """Put `text` at `key` in a delta, creating the containers it needs."""
    if key[1] == "text":
        delta[key[2]] = text
        return
    if key[1] == "nested":
        holder = delta.get(key[2])
        if not isinstance(holder, dict):
            holder = delta[key[2]] = {}
        holder[key[3]] = text
        return
    calls = delta.get("tool_calls")
    if not isinstance(calls, list):
        calls = delta["tool_calls"] = []
    for call in calls:
        if isinstance(call, dict) and call.get("index", 0) == key[2]:
            function = call.get("function")
            if not isinstance(function, dict):
                function = call["function"] = {}
            function["arguments"] = text
            return
    calls.append({"index": key[2], "function": {"arguments": text}})
