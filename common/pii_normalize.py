"""Text normalisation for the personal-data detector, with a map back to the original text.

Personal data written to dodge a detector is still personal data: ``５２９.９８２.２４７-２５``
(full-width digits), ``٥٢٩٩٨٢٢٤٧٢٥`` (Arabic-Indic digits), ``529\u200b982\u200b247\u00ad25``
(zero-width spaces, soft hyphens), ``ana＠example.com`` (a full-width at sign). Before
matching, every character outside printable ASCII is rewritten:

- format characters (category Cf: zero-width space/joiners, soft hyphen, BOM, bidi marks,
  tags), control characters other than tab and newlines, and combining marks (Mn, Me:
  accents stacked on digits, keycaps, variation selectors) are removed;
- every decimal digit of any script (category Nd) becomes its ASCII digit;
- everything else goes through NFKC (full-width forms, circled and superscript digits,
  ligatures); then any Unicode space becomes " ", any dash or minus sign "-", the
  fraction and division slashes "/", and Cyrillic or Greek letters drawn like Latin ones
  (``а``, ``о``, ``ο``) their Latin letter.

Characters that normalise to themselves (``é``, ``ç``, CJK) are left alone, so ordinary
Portuguese text costs one C-level regex pass. `Normalised.span` maps a ``[start, end)``
span of the normalised text back to the original characters, so redaction replaces
exactly what the client wrote, invisible characters inside the span included.
"""

from __future__ import annotations

import re
import unicodedata
from bisect import bisect_right
from dataclasses import dataclass, field
from functools import lru_cache

__all__ = ["Normalised", "normalise"]

# Everything but tab, newlines and printable ASCII: the only characters that may change.
_SPECIAL = re.compile(r"[^\t\n\r\x20-\x7e]")
_REMOVED_CATEGORIES = frozenset({"Cf", "Cc", "Mn", "Me", "Cs", "Co"})
_DASHES = frozenset("\u2010\u2011\u2012\u2013\u2014\u2015\u2043\u2212\u2e3a\u2e3b\ufe58\ufe63")
_SLASHES = frozenset("\u2044\u2215\u29f8")
# Cyrillic and Greek letters drawn like Latin ones ("аna@exаmple.com" with Cyrillic а):
# read as the Latin letter, so a look-alike cannot break an e-mail address.
_LOOKALIKES = dict(
    zip(
        "аеорсухіјѕԁһԛԝӏАВЕКМНОРСТХУІЈЅαοειινρτυχΑΒΕΖΗΙΚΜΝΟΡΤΥΧı",
        "aeopcyxijsdhqwlABEKMHOPCTXYIJSaoeiivptuxABEZHIKMNOPTYXi",
        strict=True,
    )
)


@lru_cache(maxsize=65536)
def _replacement(char: str) -> str:
    """What one non-ASCII (or control) character becomes in the normalised text."""
    category = unicodedata.category(char)
    if category in _REMOVED_CATEGORIES:
        return " " if char == "\x85" else ""  # NEL is a line break
    digit = unicodedata.decimal(char, None)
    if digit is not None:
        return str(digit)
    out: list[str] = []
    for c in unicodedata.normalize("NFKC", char):
        if c.isascii():
            out.append(c)
            continue
        sub = unicodedata.category(c)
        if sub in _REMOVED_CATEGORIES:
            continue
        value = unicodedata.decimal(c, None)
        if value is not None:
            out.append(str(value))
        elif sub in ("Zs", "Zl", "Zp"):
            out.append(" ")
        elif sub == "Pd" or c in _DASHES:
            out.append("-")
        elif c in _SLASHES:
            out.append("/")
        else:
            out.append(_LOOKALIKES.get(c, c))
    return "".join(out)


@dataclass(frozen=True)
class Normalised:
    """The normalised text and where each of its characters came from."""

    text: str
    # One entry per changed character: its start in the normalised text, its length there,
    # its position in the original, and (original - normalised) for positions after it.
    _starts: tuple[int, ...] = field(default=(), repr=False)
    _lengths: tuple[int, ...] = field(default=(), repr=False)
    _origins: tuple[int, ...] = field(default=(), repr=False)
    _shifts: tuple[int, ...] = field(default=(), repr=False)

    def position(self, index: int) -> int:
        """The original position of the normalised character at `index`."""
        i = bisect_right(self._starts, index) - 1
        if i < 0:
            return index
        if index < self._starts[i] + self._lengths[i]:
            return self._origins[i]
        return index + self._shifts[i]

    def span(self, start: int, end: int) -> tuple[int, int]:
        """The original ``[start, end)`` covering the normalised ``[start, end)`` (end > start)."""
        if not self._starts:
            return start, end
        return self.position(start), self.position(end - 1) + 1


def normalise(text: str) -> Normalised:
    """The text as the detector reads it (see the module docstring)."""
    if text.isascii() and _SPECIAL.search(text) is None:
        return Normalised(text)
    pieces: list[str] = []
    starts: list[int] = []
    lengths: list[int] = []
    origins: list[int] = []
    shifts: list[int] = []
    position = 0  # next original character to copy
    shift = 0  # original index - normalised index, after the last change
    for match in _SPECIAL.finditer(text):
        at = match.start()
        char = text[at]
        new = _replacement(char)
        if new == char:
            continue
        pieces.append(text[position:at])
        pieces.append(new)
        position = at + 1
        starts.append(at - shift)
        lengths.append(len(new))
        origins.append(at)
        shift += 1 - len(new)
        shifts.append(shift)
    if not starts:
        return Normalised(text)
    pieces.append(text[position:])
    return Normalised("".join(pieces), tuple(starts), tuple(lengths), tuple(origins), tuple(shifts))
