"""Personal-data (PII) detection for prompts, run before they are sent to an LLM (LGPD).

Detected kinds (`KINDS`), each a compiled regex for the shape plus a check in Python:

- ``cpf``: ``###.###.###-##`` or 11 bare digits (also with only the hyphen or only the
  dots); both mod-11 check digits verified; repeated digits (``111.111.111-11``) rejected.
- ``cnpj``: ``##.###.###/####-##`` or 14 bare digits (punctuation optional the same way);
  both check digits verified; all-same digits rejected. The alphanumeric CNPJ (RFB IN
  2.229/2024, issued from July 2026: ``12.ABC.345/01DE-35``) is also recognised, in its
  punctuated form only.
- ``rg``: the SSP-SP layout ``##.###.###-D`` (D a digit or X); its check digit is
  verified (weights 2..9 from the right, i.e. 9..2 from the left; D = sum mod 11, 10 is
  X). The bare form (``12345678D`` or ``12345678-D``) counts only when it starts within
  15 characters after the keyword "RG".
- ``phone``: Brazilian numbers: optional ``+55``/``55``, a DDD from ANATEL's list (in
  parentheses or not, optionally with the trunk ``0``), then a 9-digit mobile starting
  with 9 or an 8-digit landline starting with 2-5, with optional space/hyphen separators.
- ``email``: ``local@domain.tld``, ASCII, with a top-level domain of 2+ letters.
- ``credit_card``: 13-19 digits, bare or in the printed groupings (4-4-4-4[-1..3],
  4-6-5, 4-6-4) with one consistent space or hyphen; the Luhn check must pass and the
  prefix and length must fit a known issuer (Visa, Mastercard, Amex, Diners, Discover,
  JCB, and the Brazilian Elo and Hipercard ranges).
- ``cep``: ``#####-###`` (or ``##.###-###``) always; 8 bare digits only when they start
  within 10 characters after the keyword "CEP". CEPs below 01000-000 do not exist.

False-positive trade-offs. A checksum cannot tell a document number from any other
number that happens to satisfy it: about 1 in 100 random 11-digit runs is a "valid" CPF,
1 in 10 random 16-digit runs with an issuer prefix is a "valid" card. So number-shaped
text is only considered when it is delimited: not inside a longer run of letters or
digits, and not glued to more digits by ``.``, ``/`` or ``-`` (``1.529.982.247-25`` is
not a CPF, while ``CPF: 529.982.247-25.`` at the end of a sentence still is). Shapes
without a checksum are the weak ones: phones (any 10-11 digit run with a valid DDD and
the right leading digit is reported, so a Unix timestamp such as ``1752345678`` reads
as a São Paulo landline) and formatted CEPs (any ``#####-###``). Bare 8-digit CEPs and
bare RGs are too common as plain numbers (order ids, amounts) to report without their
keyword. Prices (``R$ 1.234,56``), dates, times and version strings are not reported.
We lean towards recall: for a compliance gate a redacted order id is cheaper than a
leaked CPF.

When two findings overlap, the longer span wins (an e-mail address that contains a
CPF is reported as an e-mail); on a tie the order is cpf, cnpj, credit_card, rg, cep,
phone, email. Findings are non-overlapping and sorted by start.

Speed and safety: a scan is linear in the length of the text, hostile input included
(100 KB of digits, dots or "@" signs). One regex pass over a byte "shape" of the text
finds the clusters of 8+ digits that could hold a numeric finding, and the per-kind
patterns run only inside them; "@", "/" and the keywords are located by plain substring
search. No pattern has nested or ambiguous quantifiers. A 2 KB prompt takes tens of
microseconds. Pure stdlib, no I/O.
"""

from __future__ import annotations

import copy
import re
from bisect import bisect_left
from collections.abc import Callable, Iterator
from dataclasses import dataclass

__all__ = [
    "KINDS",
    "Finding",
    "kinds_in",
    "redact",
    "redact_chat_messages",
    "scan",
    "scan_chat_messages",
]

KINDS: tuple[str, ...] = ("cpf", "cnpj", "rg", "phone", "email", "credit_card", "cep")

# Tie-break between overlapping findings of equal length: lower wins.
_PRIORITY: dict[str, int] = {
    kind: rank
    for rank, kind in enumerate(("cpf", "cnpj", "credit_card", "rg", "cep", "phone", "email"))
}

_LABELS: dict[str, str] = {kind: f"[{kind.upper()}]" for kind in KINDS}


@dataclass(frozen=True)
class Finding:
    """One piece of personal data: its kind and its ``[start, end)`` span in the text."""

    kind: str
    start: int
    end: int


# --- Delimiters ---------------------------------------------------------------------------
# Not preceded by a letter/digit/underscore, nor by a digit followed by . / -
# (which would make the match the tail of a longer number).
_L = r"(?<!\w)(?<![0-9][./-])"
# Not followed by a letter/digit/underscore, nor by . / - and a digit (the head of a
# longer number); a trailing full stop or hyphen before a space is fine.
_R = r"(?!\w)(?![./-][0-9])"

# ANATEL area codes (DDD): 11-19, 21, 22, 24, 27, 28, 31-35, 37, 38, 41-49, 51, 53-55,
# 61-69, 71, 73-75, 77, 79, 81-89, 91-99.
_DDD = r"(?:1[1-9]|2[12478]|3[1-578]|4[1-9]|5[1345]|6[1-9]|7[134579]|8[1-9]|9[1-9])"

_CPF_RE = re.compile(_L + r"[0-9]{3}(\.?)[0-9]{3}\1[0-9]{3}-?[0-9]{2}" + _R)
_CNPJ_RE = re.compile(_L + r"[0-9]{2}(\.?)[0-9]{3}\1[0-9]{3}/?[0-9]{4}-?[0-9]{2}" + _R)
# The alphanumeric CNPJ, punctuated only; tried 10 characters before each "/".
_CNPJ_ALNUM_RE = re.compile(_L + r"[0-9A-Z]{2}\.[0-9A-Z]{3}\.[0-9A-Z]{3}/[0-9A-Z]{4}-[0-9]{2}" + _R)
_CNPJ_ALNUM_SLASH = 10
_RG_FORMATTED_RE = re.compile(_L + r"[0-9]{2}\.[0-9]{3}\.[0-9]{3}-[0-9Xx]" + _R)
_RG_BARE_RE = re.compile(_L + r"[0-9]{8}-?[0-9Xx]" + _R)
_RG_KEYWORD_RE = re.compile(r"\bRG\b", re.IGNORECASE)
_RG_KEYWORD_GAP = 15  # a bare RG may start at most this many characters after "RG"
# [+55] then the DDD, bare or in parentheses, with an optional trunk 0; then a mobile
# (9 + 8 digits, "9 1234-5678" too) or a landline (2-5 + 7 digits). A "55" without "+"
# must be followed by a separator or by a bare run of 10-11 digits, so that card-like
# groups such as "5555 5555 5555" do not read as +55 55 5555-5555.
_PHONE_RE = re.compile(
    rf"(?<![\w+])(?<![0-9][./-])(?:\+55[ -]?|55[ -]|55(?=[0-9]{{10,11}}(?![0-9])))?"
    rf"(?:\(0?{_DDD}\)|0?{_DDD})"
    rf"[ -]?(?:9[ -]?[0-9]{{4}}|[2-5][0-9]{{3}})[ -]?[0-9]{{4}}{_R}"
)
# E-mail: the domain is matched forwards from each "@", the local part backwards (on the
# reversed text), so each character is examined a bounded number of times.
_EMAIL_LOCAL_REVERSED_RE = re.compile(r"[A-Za-z0-9._%+-]+")
_EMAIL_DOMAIN_RE = re.compile(r"[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}(?![A-Za-z0-9-])")
_CARD_RE = re.compile(
    _L
    + r"(?:[0-9]{13,19}"
    + r"|[0-9]{4}([ -])[0-9]{4}\1[0-9]{4}\1[0-9]{4}(?P<tail>\1[0-9]{1,3})?"
    + r"|[0-9]{4}([ -])[0-9]{6}\3[0-9]{4,5})"
    + _R
)
_CEP_FORMATTED_RE = re.compile(_L + r"[0-9]{2}\.?[0-9]{3}-[0-9]{3}" + _R)
_CEP_BARE_RE = re.compile(_L + r"[0-9]{8}" + _R)
_CEP_KEYWORD_RE = re.compile(r"\bCEP\b", re.IGNORECASE)
_CEP_KEYWORD_GAP = 10  # a bare CEP may start at most this many characters after "CEP"
# How far past the gap a bare-number search must see: 10 characters and _R's two.
_BARE_TAIL = 13

# Every numeric finding holds 8+ digits separated by at most two punctuation characters,
# and starts with two digits (or "+"/"(" right before them) not preceded by a letter or
# a digit. The first pass finds such clusters in a "shape" of the text: one byte per
# character, every digit turned into b"0", every non-ASCII character into b"?". Starting
# with a literal lets the engine skip ahead with a plain byte search; gaps are bounded
# and quantifiers possessive, so an attempt costs O(1) whatever the input. The lookahead
# keeps only clusters that can hold a formatted finding: 10+ digits (cpf, cnpj, card,
# phone) or a hyphen before a digit or X (cep, rg). The per-kind patterns then run on the
# text itself, only inside the clusters; bare RGs and CEPs are found from their keywords.
_SHAPE = bytes.maketrans(b"0123456789", b"0000000000")
_CLUSTER_RE = re.compile(
    rb"00(?<![A-Za-z0-9_]..)"
    rb"(?=(?:[ ()./+-]{0,3}+0){8}"
    rb"|(?:[ ()./+]{0,3}+0){0,7}+[ ()./+]{0,2}+-[ ()./+]{0,2}+[0Xx])"
    rb"(?:[ ()./+-]{0,3}+0){6,}+"
)
# What the per-kind patterns may need past a cluster: an RG's "X" and two for _R.
_CLUSTER_MARGIN = 3
_EIGHT_DIGITS = b"00000000"

# Punctuation that may appear inside a matched number; str.translate drops it.
_STRIP = str.maketrans("", "", " .-/()+")

_CARD_14_19 = frozenset(range(14, 20))
_CARD_16_19 = frozenset(range(16, 20))
_CARD_16 = frozenset({16})
_CARD_13_16_19 = frozenset({13, 16, 19})

# (lowest prefix, highest prefix, allowed lengths); both prefixes have the same length.
_CARD_ISSUERS: tuple[tuple[str, str, frozenset[int]], ...] = (
    # Visa (4); this also covers Elo's 4011 78/79, 4312 74, 4389 35, 4514 16, 4576 3x BINs.
    ("4", "4", _CARD_13_16_19),
    ("51", "55", _CARD_16),  # Mastercard
    ("2221", "2720", _CARD_16),  # Mastercard 2-series
    ("34", "34", frozenset({15})),  # American Express
    ("37", "37", frozenset({15})),  # American Express
    ("300", "305", _CARD_14_19),  # Diners Club
    ("3095", "3095", _CARD_14_19),  # Diners Club
    ("36", "36", _CARD_14_19),  # Diners Club
    ("38", "39", _CARD_14_19),  # Diners Club
    ("6011", "6011", _CARD_16_19),  # Discover
    ("644", "649", _CARD_16_19),  # Discover
    ("65", "65", _CARD_16_19),  # Discover; also Elo's 650031-655058 ranges
    ("3528", "3589", _CARD_16_19),  # JCB
    ("504175", "504175", _CARD_16),  # Elo
    ("506699", "506699", _CARD_16),  # Elo
    ("5067", "5067", _CARD_16),  # Elo (506700-506778 assigned; the whole 5067 block kept)
    ("509000", "509999", _CARD_16),  # Elo
    ("627780", "627780", _CARD_16),  # Elo
    ("636297", "636297", _CARD_16),  # Elo
    ("636368", "636368", _CARD_16),  # Elo
    ("606282", "606282", _CARD_13_16_19),  # Hipercard
    ("384100", "384100", _CARD_13_16_19),  # Hipercard
    ("384140", "384140", _CARD_13_16_19),  # Hipercard
    ("384160", "384160", _CARD_13_16_19),  # Hipercard
    ("637095", "637095", _CARD_13_16_19),  # Hipercard
    ("637568", "637568", _CARD_13_16_19),  # Hipercard
    ("637599", "637599", _CARD_13_16_19),  # Hipercard
    ("637609", "637609", _CARD_13_16_19),  # Hipercard
    ("637612", "637612", _CARD_13_16_19),  # Hipercard
)

_CNPJ_WEIGHTS_1 = (5, 4, 3, 2, 9, 8, 7, 6, 5, 4, 3, 2)
_CNPJ_WEIGHTS_2 = (6, 5, 4, 3, 2, 9, 8, 7, 6, 5, 4, 3, 2)


# --- Check digits -------------------------------------------------------------------------


def _cpf_valid(digits: str) -> bool:
    """Whether 11 digits form a CPF: both mod-11 check digits right, not all one digit."""
    if len(digits) != 11 or digits == digits[0] * 11:
        return False
    values = [ord(c) - 48 for c in digits]
    for size in (9, 10):
        total = sum(v * w for v, w in zip(values, range(size + 1, 1, -1), strict=False))
        if total * 10 % 11 % 10 != values[size]:
            return False
    return True


def _cnpj_valid(chars: str) -> bool:
    """Whether 14 characters (digits, or the 12-character alphanumeric root) form a CNPJ."""
    if len(chars) != 14 or chars == chars[0] * 14:
        return False
    values = [ord(c) - 48 for c in chars]  # the RFB rule: a character's value is ASCII - 48
    for size, weights in ((12, _CNPJ_WEIGHTS_1), (13, _CNPJ_WEIGHTS_2)):
        rest = sum(v * w for v, w in zip(values, weights, strict=False)) % 11
        if (0 if rest < 2 else 11 - rest) != values[size]:
            return False
    return True


def _rg_valid(chars: str) -> bool:
    """Whether 8 digits and a check character form an SSP-SP RG (weights 9..2, mod 11)."""
    digits, check = chars[:8], chars[8].upper()
    if digits == digits[0] * 8:
        return False
    rest = sum((ord(c) - 48) * w for c, w in zip(digits, range(9, 1, -1), strict=True)) % 11
    return check == ("X" if rest == 10 else str(rest))


def _luhn_valid(digits: str) -> bool:
    """Whether a digit string passes the Luhn (mod 10) check."""
    total = 0
    for i, c in enumerate(reversed(digits)):
        value = ord(c) - 48
        if i % 2:
            value *= 2
            if value > 9:
                value -= 9
        total += value
    return total % 10 == 0


def _card_issuer_known(digits: str) -> bool:
    """Whether the prefix and length of a card number belong to a known issuer."""
    size = len(digits)
    for low, high, sizes in _CARD_ISSUERS:
        if size in sizes and low <= digits[: len(low)] <= high:
            return True
    return False


def _card_valid(digits: str) -> bool:
    """Whether a digit string is a plausible payment card: known issuer and Luhn-valid."""
    return _card_issuer_known(digits) and _luhn_valid(digits)


# --- Candidates per kind ------------------------------------------------------------------
# Each finder yields (start, end) spans of matches that start in [pos, endpos).

_Spans = Iterator[tuple[int, int]]


def _cpf_spans(text: str, pos: int, endpos: int) -> _Spans:
    """Spans of valid CPFs."""
    for m in _CPF_RE.finditer(text, pos, endpos):
        if _cpf_valid(m.group().translate(_STRIP)):
            yield m.span()


def _cnpj_spans(text: str, pos: int, endpos: int) -> _Spans:
    """Spans of valid numeric CNPJs."""
    for m in _CNPJ_RE.finditer(text, pos, endpos):
        if _cnpj_valid(m.group().translate(_STRIP)):
            yield m.span()


def _rg_spans(text: str, pos: int, endpos: int) -> _Spans:
    """Spans of valid formatted SSP-SP RGs."""
    for m in _RG_FORMATTED_RE.finditer(text, pos, endpos):
        if _rg_valid(m.group().translate(_STRIP)):
            yield m.span()


def _phone_spans(text: str, pos: int, endpos: int) -> _Spans:
    """Spans of Brazilian phone numbers (the pattern itself checks the DDD and lengths)."""
    for m in _PHONE_RE.finditer(text, pos, endpos):
        yield m.span()


def _card_spans(text: str, pos: int, endpos: int) -> _Spans:
    """Spans of payment cards; a 4-4-4-4 card followed by a short group (a CVV) still counts."""
    for m in _CARD_RE.finditer(text, pos, endpos):
        if _card_valid(m.group().translate(_STRIP)):
            yield m.span()
        elif m.start("tail") >= 0:
            start, end = m.start(), m.start("tail")
            if _card_valid(text[start:end].translate(_STRIP)):
                yield start, end


def _cep_valid(chars: str) -> bool:
    """Whether a CEP is in range (the lowest is 01000-000)."""
    return not chars.startswith("00")


def _cep_spans(text: str, pos: int, endpos: int) -> _Spans:
    """Spans of formatted CEPs."""
    for m in _CEP_FORMATTED_RE.finditer(text, pos, endpos):
        if _cep_valid(m.group()):
            yield m.span()


def _numeric_candidates(text: str, shape: bytes) -> Iterator[Finding]:
    """Candidate findings of the numeric kinds (formatted or bare), cluster by cluster."""
    size = len(text)
    for cluster in _CLUSTER_RE.finditer(shape):
        chars = cluster.group()
        digits = chars.count(b"0")
        start, end = cluster.span()
        pos, endpos = max(0, start - 1), min(size, end + _CLUSTER_MARGIN)
        finders: list[tuple[str, Callable[[str, int, int], _Spans]]] = []
        if digits >= 11:
            finders.append(("cpf", _cpf_spans))
        if digits >= 14:
            finders.append(("cnpj", _cnpj_spans))
        if digits >= 13:
            finders.append(("credit_card", _card_spans))
        if digits >= 10:
            finders.append(("phone", _phone_spans))
        if b"-" in shape[start:endpos]:
            if b"." in chars:
                finders.append(("rg", _rg_spans))
            finders.append(("cep", _cep_spans))
        for kind, finder in finders:
            for span_start, span_end in finder(text, pos, endpos):
                yield Finding(kind, span_start, span_end)


def _keyword_candidates(text: str, shape: bytes) -> Iterator[Finding]:
    """Bare RGs and CEPs: 9 or 8 digits shortly after the keyword "RG" or "CEP"."""
    lowered = shape.lower()
    size = len(text)
    for kind, word, keyword, bare, gap, valid in _KEYWORDED:
        at = lowered.find(word)
        while at >= 0:
            if keyword.match(text, at):
                first = at + len(word)
                last = first + gap
                for m in bare.finditer(text, first, min(size, last + _BARE_TAIL)):
                    if m.start() > last:
                        break
                    if valid(m.group().translate(_STRIP)):
                        yield Finding(kind, *m.span())
            at = lowered.find(word, at + 1)


_KEYWORDED: tuple[
    tuple[str, bytes, re.Pattern[str], re.Pattern[str], int, Callable[[str], bool]], ...
] = (
    ("rg", b"rg", _RG_KEYWORD_RE, _RG_BARE_RE, _RG_KEYWORD_GAP, _rg_valid),
    ("cep", b"cep", _CEP_KEYWORD_RE, _CEP_BARE_RE, _CEP_KEYWORD_GAP, _cep_valid),
)


def _alnum_cnpj_candidates(text: str) -> Iterator[Finding]:
    """Candidate alphanumeric CNPJs, tried once per "/" that has the dots in place."""
    slash = text.find("/", _CNPJ_ALNUM_SLASH)
    while slash >= 0:
        if text[slash - 4] == "." and text[slash - 8] == ".":
            m = _CNPJ_ALNUM_RE.match(text, slash - _CNPJ_ALNUM_SLASH)
            if m is not None and _cnpj_valid(m.group().translate(_STRIP)):
                yield Finding("cnpj", *m.span())
        slash = text.find("/", slash + 1)


def _email_candidates(text: str) -> Iterator[Finding]:
    """Candidate e-mail addresses, one per "@" with a local part and a dotted domain."""
    at = text.find("@")
    if at < 0:
        return
    reversed_text = text[::-1]
    size = len(text)
    while at >= 0:
        # text[i] is reversed_text[size - 1 - i]: the local part ends at text[at - 1].
        local = _EMAIL_LOCAL_REVERSED_RE.match(reversed_text, size - at)
        if local is not None:
            domain = _EMAIL_DOMAIN_RE.match(text, at + 1)
            if domain is not None:
                yield Finding("email", size - local.end(), domain.end())
        at = text.find("@", at + 1)


def _resolve(candidates: list[Finding]) -> list[Finding]:
    """Non-overlapping findings sorted by start: longest span first, then kind priority."""
    candidates.sort(key=lambda f: (f.start - f.end, _PRIORITY[f.kind], f.start))
    kept: list[Finding] = []
    starts: list[int] = []
    for f in candidates:
        i = bisect_left(starts, f.start)
        if i > 0 and kept[i - 1].end > f.start:
            continue
        if i < len(kept) and kept[i].start < f.end:
            continue
        kept.insert(i, f)
        starts.insert(i, f.start)
    return kept


# --- Public API ---------------------------------------------------------------------------


def scan(text: str) -> list[Finding]:
    """All PII findings in the text, non-overlapping and ordered by start."""
    shape = text.encode("ascii", "replace").translate(_SHAPE)
    candidates = list(_numeric_candidates(text, shape))
    if _EIGHT_DIGITS in shape:
        candidates.extend(_keyword_candidates(text, shape))
    if "/" in text:
        candidates.extend(_alnum_cnpj_candidates(text))
    if "@" in text:
        candidates.extend(_email_candidates(text))
    if len(candidates) < 2:
        return candidates
    return _resolve(candidates)


def kinds_in(text: str) -> set[str]:
    """The kinds of PII found in the text."""
    return {f.kind for f in scan(text)}


def redact(text: str) -> tuple[str, list[Finding]]:
    """The text with each finding replaced by its label (e.g. "[CPF]"), and the findings."""
    findings = scan(text)
    if not findings:
        return text, findings
    pieces: list[str] = []
    position = 0
    for f in findings:
        pieces.append(text[position : f.start])
        pieces.append(_LABELS[f.kind])
        position = f.end
    pieces.append(text[position:])
    return "".join(pieces), findings


def _text_parts(content: list[object]) -> Iterator[dict[str, object]]:
    """The parts of a list-of-parts message content that carry text."""
    for part in content:
        if (
            isinstance(part, dict)
            and part.get("type") == "text"
            and isinstance(part.get("text"), str)
        ):
            yield part


def scan_chat_messages(messages: list[dict[str, object]]) -> set[str]:
    """The kinds of PII in the text content of OpenAI-style chat messages."""
    kinds: set[str] = set()
    for message in messages:
        content = message.get("content")
        if isinstance(content, str):
            kinds |= kinds_in(content)
        elif isinstance(content, list):
            for part in _text_parts(content):
                kinds |= kinds_in(str(part["text"]))
    return kinds


def redact_chat_messages(
    messages: list[dict[str, object]],
) -> tuple[list[dict[str, object]], set[str]]:
    """A redacted deep copy of chat messages (originals untouched) and the kinds redacted."""
    redacted = copy.deepcopy(messages)
    kinds: set[str] = set()
    for message in redacted:
        content = message.get("content")
        if isinstance(content, str):
            message["content"], findings = redact(content)
            kinds.update(f.kind for f in findings)
        elif isinstance(content, list):
            for part in _text_parts(content):
                part["text"], findings = redact(str(part["text"]))
                kinds.update(f.kind for f in findings)
    return redacted, kinds
