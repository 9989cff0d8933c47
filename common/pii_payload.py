"""Personal data in whole JSON payloads: every string of a request or an answer, any depth.

`screen(value, redact=...)` walks a decoded JSON value and scans every string in it (dict
keys included) and every integer or float of 8+ digits inside nested objects. What each
kind of string means for redaction, so that the result is valid JSON of the same shape:

- plain text: each finding becomes its label (``[CPF]``);
- a ``name`` (message author, tool or schema names, restricted to ``[A-Za-z0-9_-]`` by
  OpenAI): the label without brackets (``CPF``);
- a string holding JSON (tool-call and ``function_call`` ``arguments``, JSON passed as
  text): parsed and walked, so ``\\u0035``-style escapes cannot hide digits, and written
  back as JSON; a number inside it that is personal data becomes the label string;
- a data URL (``data:<mime>;base64,...``), ``file_data`` or ``input_audio.data``: the
  payload is decoded; if it is text (UTF-8, UTF-16 with a byte-order mark, or Latin-1
  without control bytes) it is scanned (and re-encoded the same way after redaction);
  otherwise it is binary (an image, audio, a PDF), which cannot be read without OCR or a
  document parser: it is counted in ``unscannable`` and passes, unless the caller asks
  for ``block_binary``, then it is refused (`Unscannable`). The string as written is
  scanned as text as well, and a value that is not strict base64 is only text.

A `Budget` bounds the work: a deadline checked before each string and a maximum number
of characters; exceeding either raises `ScanAborted` (the caller fails closed).
"""

from __future__ import annotations

import binascii
import time
from dataclasses import dataclass, field
from typing import Any

import orjson

from common import pii

__all__ = ["Budget", "ScanAborted", "Screened", "Unscannable", "screen"]

_BASE64_KEYS = frozenset({"file_data", "data"})
_NAME_KEYS = frozenset({"name"})
_NUMBER_MIN = 10_000_000  # a number with fewer than 8 digits cannot be personal data
_DATA_URL_HEAD = 512  # where ";base64," must appear in a data URL


class ScanAborted(Exception):
    """The scan ran out of its time or size budget; nothing may be let through."""


class Unscannable(Exception):
    """A binary attachment could not be scanned and the policy refuses those."""


@dataclass
class Budget:
    """How much scanning one payload may cost: a monotonic deadline and a character cap."""

    deadline: float
    max_chars: int
    used: int = 0

    def spend(self, chars: int) -> None:
        """Account for `chars` more characters; raises ScanAborted past either limit."""
        self.used += chars
        if self.used > self.max_chars:
            raise ScanAborted(f"more than {self.max_chars} characters to scan")
        self.check()

    def check(self) -> None:
        """Raise ScanAborted past the deadline (also called inside long texts)."""
        if time.monotonic() > self.deadline:
            raise ScanAborted("the scan exceeded its time budget")


@dataclass
class Screened:
    """A screened payload: the (redacted) value, the kinds found, binary parts passed."""

    value: Any
    kinds: set[str] = field(default_factory=set)
    unscannable: int = 0


class _Walker:
    def __init__(self, redact: bool, budget: Budget | None, block_binary: bool) -> None:
        self.redact = redact
        self.budget = budget
        self.block_binary = block_binary
        self.kinds: set[str] = set()
        self.unscannable = 0

    def value(self, value: Any, key: str | None = None, nested: bool = True) -> Any:
        if isinstance(value, str):
            return self.string(value, key)
        if isinstance(value, dict):
            return self.mapping(value)
        if isinstance(value, list):
            return [self.value(item) for item in value]
        if (
            nested
            and isinstance(value, int | float)
            and not isinstance(value, bool)
            and abs(value) >= _NUMBER_MIN
        ):
            text = str(value)
            new = self.text(text)
            return value if new == text else new
        return value

    def mapping(self, value: dict[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, item in value.items():
            new_key = self.text(key) if isinstance(key, str) else key
            while new_key in out:  # a redacted key must not overwrite another one
                new_key = f"{new_key}_"
            out[new_key] = self.value(item, key)
        return out

    def string(self, value: str, key: str | None) -> Any:
        if value.startswith("data:") and ";base64," in value[:_DATA_URL_HEAD]:
            head, _, payload = value.partition(";base64,")
            return self.base64(payload, f"{head};base64,", value)
        if key in _BASE64_KEYS and len(value) >= 16:
            return self.base64(value, "", value)
        stripped = value.lstrip()
        if stripped[:1] in ("{", "["):
            try:
                parsed = orjson.loads(value)
            except orjson.JSONDecodeError:
                parsed = None
            if isinstance(parsed, dict | list):
                if self.budget is not None:
                    self.budget.spend(len(value))
                walked = self.value(parsed)
                if walked == parsed:
                    return value
                return orjson.dumps(walked).decode()
        return self.text(value, bare=key in _NAME_KEYS)

    def base64(self, payload: str, prefix: str, original: str) -> str:
        # The string as written is text too: base64's alphabet can spell a CPF.
        as_written = self.text(original)
        if as_written != original:
            return as_written
        try:
            data = binascii.a2b_base64(payload, strict_mode=True)
        except binascii.Error:
            return original  # not base64 after all: scanned as text above
        decoded = _as_text(data)
        if decoded is None:
            if self.block_binary:
                raise Unscannable("a binary attachment cannot be checked for personal data")
            self.unscannable += 1
            return original
        text, codec = decoded
        new = self.text(text)
        if new == text:
            return original
        encoded = new.encode(codec, errors="replace")
        return prefix + binascii.b2a_base64(encoded, newline=False).decode()

    def text(self, value: str, bare: bool = False) -> str:
        check = None
        if self.budget is not None:
            self.budget.spend(len(value))
            check = self.budget.check
        if not self.redact:
            self.kinds |= pii.kinds_in(value, check)
            return value
        new, findings = pii.redact(value, bare=bare, check=check)
        self.kinds.update(f.kind for f in findings)
        return new


# Bytes other than tab, newlines and printable characters: a few in text, many in binary.
_CONTROL_BYTES = bytes(b for b in range(32) if b not in (9, 10, 13)) + b"\x7f"


def _as_text(data: bytes) -> tuple[str, str] | None:
    """The bytes as text and the codec to write them back with, or None for binary data."""
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        try:
            return data.decode("utf-16"), "utf-16"
        except UnicodeDecodeError:
            return None
    try:
        return data.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        pass
    if len(data.translate(None, _CONTROL_BYTES)) < len(data):
        return None  # control bytes: an image, audio, a compressed document
    return data.decode("latin-1"), "latin-1"


def screen(
    value: Any,
    *,
    redact: bool,
    budget: Budget | None = None,
    block_binary: bool = False,
    keep: frozenset[str] = frozenset(),
) -> Screened:
    """Scan (and with `redact`, redact a copy of) a JSON value; top-level keys in `keep` skip.

    Top-level numbers are parameters (max_tokens, seed), not text: only nested numbers are
    scanned. Raises ScanAborted past the budget and Unscannable for refused binary parts.
    """
    walker = _Walker(redact, budget, block_binary)
    if isinstance(value, dict):
        out = {
            key: item if key in keep else walker.value(item, key, nested=False)
            for key, item in value.items()
        }
    else:
        out = walker.value(value, nested=False)
    return Screened(out if redact else value, walker.kinds, walker.unscannable)
