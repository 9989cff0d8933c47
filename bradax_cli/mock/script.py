"""Scripted replies (`POST /_mock/reply`): a fixed answer text, refusal and tool-call arguments,
streamed in chunks of `chunk_chars` characters."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from bradax_cli.mock.config import BadConfig, is_int

_KEYS: Final = frozenset({"text", "refusal", "tool_arguments", "chunk_chars"})


@dataclass
class Script:
    """A scripted answer: content, refusal and tool-call arguments, streamed in chunks."""

    text: str | None
    refusal: str | None = None
    tool_arguments: str | None = None
    chunk_chars: int = 3

    @classmethod
    def parse(cls, data: object) -> Script | None:
        """A `/_mock/reply` body -> script (None when text, refusal and arguments are null).

        Raises `BadConfig` for a body that is not an object, an unknown key or a bad value."""
        if not isinstance(data, dict):
            raise BadConfig("the reply must be a JSON object")
        unknown = sorted(set(data) - _KEYS)
        if unknown:
            raise BadConfig(f"unknown reply keys: {', '.join(unknown)}")
        values = {k: data.get(k) for k in ("text", "refusal", "tool_arguments")}
        if any(v is not None and not isinstance(v, str) for v in values.values()):
            raise BadConfig("text, refusal and tool_arguments must be strings or null")
        chunk = data.get("chunk_chars", 3)
        if not is_int(chunk) or chunk < 1:
            raise BadConfig("chunk_chars must be an integer >= 1")
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
