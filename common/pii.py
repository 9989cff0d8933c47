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
from operator import mul

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
# Cards: 13-19 bare digits, or 4-4-4-4 (plus an optional 1-3 digit group: 17-19 digit
# cards, or a CVV), or 4-6-5 / 4-6-4, with one consistent separator.
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
# character, every digit (and an RG's check letter X) turned into b"0", every non-ASCII
# character into b"?". Starting with a literal lets the engine skip ahead with a plain
# byte search; gaps are bounded and quantifiers possessive, so an attempt costs O(1)
# whatever the input. A cluster is kept only if it has 8+ digits and either 11+ digits
# (cpf, cnpj, card, phone) or the shape of a phone ending (0000-0000), a CEP (000-000)
# or an RG (000.000-0) within its first ten digits: dates, amounts and timestamps are
# dropped here, in C. Byte tests on each kept cluster then pick the per-kind patterns,
# which run on the text itself, only inside the cluster. Bare RGs and CEPs are found
# from their keywords instead.
_SHAPE = bytes.maketrans(b"0123456789Xx", b"000000000000")
_CLUSTER_RE = re.compile(
    rb"00(?<![A-Za-z0-9_]..)"
    rb"(?=(?:[ ()./+-]{0,3}+0){6})"
    rb"(?=(?:[ ()./+-]{0,3}+0){9}"
    rb"|(?:[ ()./+-]{0,3}+0){0,8}?[ ()./+-]{0,3}+(?:0000[ -]?0000|000-000|000\.000-0))"
    rb"(?:[ ()./+-]{0,3}+0){6,}+"
)
_CLUSTER_MARGIN = 2  # _R looks two characters past a match
_EIGHT_DIGITS = b"00000000"

# Punctuation that may appear inside a matched number, dropped before the checks.
_PUNCTUATION = b" .-/()+"
# Character values for the check digits: ASCII code - 48 (the RFB rule, letters included).
_VALUES = bytes.maketrans(
    b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ", bytes(range(10)) + bytes(range(17, 43))
)
_LUHN_DOUBLED = bytes.maketrans(b"0123456789", bytes((0, 2, 4, 6, 8, 1, 3, 5, 7, 9)))
_CPF_WEIGHTS_1 = (10, 9, 8, 7, 6, 5, 4, 3, 2)
_CPF_WEIGHTS_2 = (11, 10, 9, 8, 7, 6, 5, 4, 3, 2)
_CNPJ_WEIGHTS_1 = (5, 4, 3, 2, 9, 8, 7, 6, 5, 4, 3, 2)
_CNPJ_WEIGHTS_2 = (6, 5, 4, 3, 2, 9, 8, 7, 6, 5, 4, 3, 2)
_RG_WEIGHTS = (9, 8, 7, 6, 5, 4, 3, 2)

_CARD_14_19 = frozenset(range(14, 20))
_CARD_16_19 = frozenset(range(16, 20))
_CARD_16 = frozenset({16})
_CARD_13_16_19 = frozenset({13, 16, 19})

# (lowest prefix, highest prefix, allowed lengths); both prefixes have the same length.
_CARD_ISSUERS: tuple[tuple[bytes, bytes, frozenset[int]], ...] = (
    # Visa (4); this also covers Elo's 4011 78/79, 4312 74, 4389 35, 4514 16, 4576 3x BINs.
    (b"4", b"4", _CARD_13_16_19),
    (b"51", b"55", _CARD_16),  # Mastercard
    (b"2221", b"2720", _CARD_16),  # Mastercard 2-series
    (b"34", b"34", frozenset({15})),  # American Express
    (b"37", b"37", frozenset({15})),  # American Express
    (b"300", b"305", _CARD_14_19),  # Diners Club
    (b"3095", b"3095", _CARD_14_19),  # Diners Club
    (b"36", b"36", _CARD_14_19),  # Diners Club
    (b"38", b"39", _CARD_14_19),  # Diners Club
    (b"6011", b"6011", _CARD_16_19),  # Discover
    (b"644", b"649", _CARD_16_19),  # Discover
    (b"65", b"65", _CARD_16_19),  # Discover; also Elo's 650031-655058 ranges
    (b"3528", b"3589", _CARD_16_19),  # JCB
    (b"504175", b"504175", _CARD_16),  # Elo
    (b"506699", b"506699", _CARD_16),  # Elo
    (b"5067", b"5067", _CARD_16),  # Elo (506700-506778 assigned; the whole block kept)
    (b"509000", b"509999", _CARD_16),  # Elo
    (b"627780", b"627780", _CARD_16),  # Elo
    (b"636297", b"636297", _CARD_16),  # Elo
    (b"636368", b"636368", _CARD_16),  # Elo
    (b"606282", b"606282", _CARD_13_16_19),  # Hipercard
    (b"384100", b"384100", _CARD_13_16_19),  # Hipercard
    (b"384140", b"384140", _CARD_13_16_19),  # Hipercard
    (b"384160", b"384160", _CARD_13_16_19),  # Hipercard
    (b"637095", b"637095", _CARD_13_16_19),  # Hipercard
    (b"637568", b"637568", _CARD_13_16_19),  # Hipercard
    (b"637599", b"637599", _CARD_13_16_19),  # Hipercard
    (b"637609", b"637609", _CARD_13_16_19),  # Hipercard
    (b"637612", b"637612", _CARD_13_16_19),  # Hipercard
)


# --- Check digits (on the ASCII bytes of a match, punctuation removed) --------------------


def _digits(matched: str) -> bytes:
    """The characters of a match without its punctuation, as ASCII bytes."""
    return matched.encode().translate(None, _PUNCTUATION)


def _cpf_valid(digits: bytes) -> bool:
    """Whether 11 digits form a CPF: both mod-11 check digits right, not all one digit."""
    if len(digits) != 11 or digits == digits[:1] * 11:
        return False
    v = digits.translate(_VALUES)
    first: int = sum(map(mul, v, _CPF_WEIGHTS_1))
    second: int = sum(map(mul, v, _CPF_WEIGHTS_2))
    return first * 10 % 11 % 10 == v[9] and second * 10 % 11 % 10 == v[10]


def _cnpj_valid(chars: bytes) -> bool:
    """Whether 14 characters (digits, or the 12-character alphanumeric root) form a CNPJ."""
    if len(chars) != 14 or chars == chars[:1] * 14:
        return False
    v = chars.translate(_VALUES)
    rest_1: int = sum(map(mul, v, _CNPJ_WEIGHTS_1)) % 11
    rest_2: int = sum(map(mul, v, _CNPJ_WEIGHTS_2)) % 11
    return v[12] == (0 if rest_1 < 2 else 11 - rest_1) and v[13] == (
        0 if rest_2 < 2 else 11 - rest_2
    )


def _rg_valid(chars: bytes) -> bool:
    """Whether 8 digits and a check character form an SSP-SP RG (weights 9..2, mod 11)."""
    if len(chars) != 9 or chars[:8] == chars[:1] * 8:
        return False
    rest: int = sum(map(mul, chars.translate(_VALUES), _RG_WEIGHTS)) % 11
    return chars[8:].upper() == (b"X" if rest == 10 else b"%d" % rest)


def _luhn_valid(digits: bytes) -> bool:
    """Whether a digit string passes the Luhn (mod 10) check."""
    plain = sum(digits[-1::-2].translate(_VALUES))
    doubled = sum(digits[-2::-2].translate(_LUHN_DOUBLED))
    return (plain + doubled) % 10 == 0


def _card_valid(digits: bytes) -> bool:
    """Whether a digit string is a plausible card: a known issuer's prefix and length, Luhn."""
    size = len(digits)
    for low, high, sizes in _CARD_ISSUERS:
        if size in sizes and low <= digits[: len(low)] <= high:
            return _luhn_valid(digits)
    return False


def _cep_valid(digits: bytes) -> bool:
    """Whether a CEP is in range (the lowest is 01000-000)."""
    return not digits.startswith(b"00")


# --- Candidates ---------------------------------------------------------------------------
# Candidates are (start, end, kind) tuples appended to one list; Finding objects are only
# built for the ones that survive overlap resolution.

_Candidates = list[tuple[int, int, str]]


def _collect(
    out: _Candidates,
    kind: str,
    pattern: re.Pattern[str],
    valid: Callable[[bytes], bool],
    text: str,
    pos: int,
    endpos: int,
) -> None:
    """Append the matches of a pattern in text[pos:endpos] whose characters pass `valid`."""
    for m in pattern.finditer(text, pos, endpos):
        if valid(_digits(m.group())):
            out.append((m.start(), m.end(), kind))


def _collect_cards(out: _Candidates, text: str, pos: int, endpos: int) -> None:
    """Append payment cards; a 4-4-4-4 card followed by a short group (a CVV) still counts.

    Space-separated groups can chain ("5678 4111 1111 1111 1111"), so after a candidate
    fails the search resumes one character later rather than after the candidate.
    """
    while (m := _CARD_RE.search(text, pos, endpos)) is not None:
        start, end = m.span()
        tail = m.start("tail")
        if _card_valid(_digits(m.group())):
            out.append((start, end, "credit_card"))
            pos = end
        elif tail >= 0 and _card_valid(_digits(text[start:tail])):
            out.append((start, tail, "credit_card"))
            pos = tail
        else:
            pos = start + 1


def _collect_numeric(out: _Candidates, text: str, shape: bytes) -> None:
    """Append candidates of the numeric kinds in their formatted or bare forms."""
    size = len(text)
    for cluster in _CLUSTER_RE.finditer(shape):
        chars = cluster.group()
        digits = chars.count(b"0")
        start, end = cluster.span()
        pos, endpos = max(0, start - 1), min(size, end + _CLUSTER_MARGIN)
        if digits >= 11:
            _collect(out, "cpf", _CPF_RE, _cpf_valid, text, pos, endpos)
            if digits >= 13:
                _collect_cards(out, text, pos, endpos)
                if digits >= 14:
                    _collect(out, "cnpj", _CNPJ_RE, _cnpj_valid, text, pos, endpos)
        # A phone ends in 4 digits after 4 or 5 digits and an optional separator.
        if digits >= 10 and (
            b"0000-0000" in chars or b"0000 0000" in chars or b"00000000" in chars
        ):
            out.extend((*m.span(), "phone") for m in _PHONE_RE.finditer(text, pos, endpos))
        if b"000-000" in chars:
            _collect(out, "cep", _CEP_FORMATTED_RE, _cep_valid, text, pos, endpos)
        if b"0.000.000-0" in chars:
            _collect(out, "rg", _RG_FORMATTED_RE, _rg_valid, text, pos, endpos)


_KEYWORDED: tuple[
    tuple[str, bytes, re.Pattern[str], re.Pattern[str], int, Callable[[bytes], bool]], ...
] = (
    ("rg", b"rg", _RG_KEYWORD_RE, _RG_BARE_RE, _RG_KEYWORD_GAP, _rg_valid),
    ("cep", b"cep", _CEP_KEYWORD_RE, _CEP_BARE_RE, _CEP_KEYWORD_GAP, _cep_valid),
)


def _collect_keyworded(out: _Candidates, text: str, shape: bytes) -> None:
    """Append bare RGs and CEPs: 9 or 8 digits shortly after the keyword "RG" or "CEP"."""
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
                    if valid(_digits(m.group())):
                        out.append((m.start(), m.end(), kind))
            at = lowered.find(word, at + 1)


def _collect_alnum_cnpjs(out: _Candidates, text: str) -> None:
    """Append alphanumeric CNPJs, tried once per "/" that has the dots in place."""
    slash = text.find("/", _CNPJ_ALNUM_SLASH)
    while slash >= 0:
        if text[slash - 4] == "." and text[slash - 8] == ".":
            m = _CNPJ_ALNUM_RE.match(text, slash - _CNPJ_ALNUM_SLASH)
            if m is not None and _cnpj_valid(_digits(m.group())):
                out.append((m.start(), m.end(), "cnpj"))
        slash = text.find("/", slash + 1)


def _collect_emails(out: _Candidates, text: str) -> None:
    """Append e-mail addresses, one per "@" with a local part and a dotted domain."""
    reversed_text = text[::-1]
    size = len(text)
    at = text.find("@")
    while at >= 0:
        # text[i] is reversed_text[size - 1 - i]: the local part ends at text[at - 1].
        local = _EMAIL_LOCAL_REVERSED_RE.match(reversed_text, size - at)
        if local is not None:
            domain = _EMAIL_DOMAIN_RE.match(text, at + 1)
            if domain is not None:
                out.append((size - local.end(), domain.end(), "email"))
        at = text.find("@", at + 1)


def _resolve(candidates: _Candidates) -> _Candidates:
    """Non-overlapping candidates sorted by start: longest span first, then kind priority."""
    candidates.sort(key=lambda c: (c[0] - c[1], _PRIORITY[c[2]], c[0]))
    kept: _Candidates = []
    starts: list[int] = []
    for candidate in candidates:
        start, end, _ = candidate
        i = bisect_left(starts, start)
        if i > 0 and kept[i - 1][1] > start:
            continue
        if i < len(kept) and kept[i][0] < end:
            continue
        kept.insert(i, candidate)
        starts.insert(i, start)
    return kept


# --- Public API ---------------------------------------------------------------------------


def scan(text: str) -> list[Finding]:
    """All PII findings in the text, non-overlapping and ordered by start."""
    shape = text.encode("ascii", "replace").translate(_SHAPE)
    candidates: _Candidates = []
    _collect_numeric(candidates, text, shape)
    if _EIGHT_DIGITS in shape:
        _collect_keyworded(candidates, text, shape)
    if "/" in text:
        _collect_alnum_cnpjs(candidates, text)
    if "@" in text:
        _collect_emails(candidates, text)
    if len(candidates) > 1:
        candidates = _resolve(candidates)
    return [Finding(kind, start, end) for start, end, kind in candidates]


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
