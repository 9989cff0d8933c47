"""Personal-data (PII) detection in text (LGPD): prompts before the LLM, answers after.

The text is first normalised (`common.pii_normalize`: NFKC, every script's digits to
ASCII, invisible and combining characters removed, Unicode dashes and spaces to ASCII);
findings are reported with spans in the original text.

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
- ``email``: ``local@domain.tld``, ASCII after normalisation (``＠`` is ``@``), with a
  top-level domain of 2+ letters and a local part of at most 64 characters.
- ``credit_card``: 13-19 digits, bare or in the printed groupings (4-4-4-4[-1..3],
  4-6-5, 4-6-4) with one consistent space or hyphen; the Luhn check must pass and the
  prefix and length must fit a known issuer (Visa, Mastercard, Amex, Diners, Discover,
  JCB, and the Brazilian Elo and Hipercard ranges).
- any separators between groups: CPFs, CNPJs and cards are also found as runs of digit
  groups joined by one to three of `` ./_-`` ("529 982 247 25", "4111.1111.1111.1111",
  "5 2 9 9 8 2 2 4 7 2 5"). A whole run may be split anywhere; a number inside a longer
  run must start and end on group boundaries and be split only at its printed layout's
  boundaries (3-3-3-2 for a CPF), so tables of small numbers do not read as documents.
- ``cep``: ``#####-###`` (or ``##.###-###``) always; 8 bare digits only when they start
  within 10 characters after the keyword "CEP". CEPs below 01000-000 do not exist.

False-positive trade-offs. A checksum cannot tell a document number from any other
number that happens to satisfy it: about 1 in 100 random 11-digit runs is a "valid" CPF,
1 in 10 random 16-digit runs with an issuer prefix is a "valid" card. So number-shaped
text is only considered when it is delimited: not inside a longer run of digits, and not
glued to more digits by ``.``, ``/`` or ``-`` unless the group rule above applies
(``052998224725`` is not a CPF, ``CPF: 529.982.247-25.`` is). Letters do not delimit the
kinds with check digits (``CPF529.982.247-25`` is a CPF), while phones and CEPs, which
have none, still need a non-alphanumeric neighbour. Shapes
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
microseconds (`bench/pii.py` prints MB/s). Pure stdlib, no I/O.
"""

from __future__ import annotations

import re
from bisect import bisect_left
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from common.pii_checks import card_valid, cep_valid, cnpj_valid, cpf_valid, digits, rg_valid
from common.pii_normalize import normalise

__all__ = [
    "KINDS",
    "Finding",
    "kinds_in",
    "label",
    "redact",
    "scan",
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
# The kinds with check digits (cpf, cnpj, cards, rg) may be glued to letters
# ("CPF529.982.247-25"): only digits delimit them. Phones and CEPs, which have no check
# digit, keep the stricter delimiters above.
_LD = r"(?<![0-9])(?<![0-9][./-])"
_RD = r"(?![0-9])(?![./-][0-9])"

# ANATEL area codes (DDD): 11-19, 21, 22, 24, 27, 28, 31-35, 37, 38, 41-49, 51, 53-55,
# 61-69, 71, 73-75, 77, 79, 81-89, 91-99.
_DDD = r"(?:1[1-9]|2[12478]|3[1-578]|4[1-9]|5[1345]|6[1-9]|7[134579]|8[1-9]|9[1-9])"

_CPF_RE = re.compile(_LD + r"[0-9]{3}(\.?)[0-9]{3}\1[0-9]{3}-?[0-9]{2}" + _RD)
_CNPJ_RE = re.compile(_LD + r"[0-9]{2}(\.?)[0-9]{3}\1[0-9]{3}/?[0-9]{4}-?[0-9]{2}" + _RD)
# The alphanumeric CNPJ, punctuated only; tried 10 characters before each "/".
_CNPJ_ALNUM_RE = re.compile(_L + r"[0-9A-Z]{2}\.[0-9A-Z]{3}\.[0-9A-Z]{3}/[0-9A-Z]{4}-[0-9]{2}" + _R)
_CNPJ_ALNUM_SLASH = 10
_RG_FORMATTED_RE = re.compile(_LD + r"[0-9]{2}\.[0-9]{3}\.[0-9]{3}-[0-9Xx]" + _R)
_RG_BARE_RE = re.compile(_LD + r"[0-9]{8}-?[0-9Xx]" + _R)
_RG_KEYWORD_RE = re.compile(r"(?<![A-Za-z])RG(?![A-Za-z])", re.IGNORECASE)
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
# RFC 5321 limits: a local part of 64 characters, a domain label of 63.
EMAIL_LOCAL_MAX = 64
EMAIL_LABEL_MAX = 63
_EMAIL_LOCAL_REVERSED_RE = re.compile(rf"[A-Za-z0-9._%+-]{{1,{EMAIL_LOCAL_MAX}}}")
_EMAIL_DOMAIN_RE = re.compile(r"[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}(?![A-Za-z0-9-])")
# Cards: 13-19 bare digits, or 4-4-4-4 (plus an optional 1-3 digit group: 17-19 digit
# cards, or a CVV), or 4-6-5 / 4-6-4, with one consistent separator.
_CARD_RE = re.compile(
    _LD
    + r"(?:[0-9]{13,19}"
    + r"|[0-9]{4}([ -])[0-9]{4}\1[0-9]{4}\1[0-9]{4}(?P<tail>\1[0-9]{1,3})?"
    + r"|[0-9]{4}([ -])[0-9]{6}\3[0-9]{4,5})"
    + _RD
)
_CEP_FORMATTED_RE = re.compile(_L + r"[0-9]{2}\.?[0-9]{3}-[0-9]{3}" + _R)
_CEP_BARE_RE = re.compile(_LD + r"[0-9]{8}" + _R)
_CEP_KEYWORD_RE = re.compile(r"(?<![A-Za-z])CEP(?![A-Za-z])", re.IGNORECASE)
_CEP_KEYWORD_GAP = 10  # a bare CEP may start at most this many characters after "CEP"
# How far past the gap a bare-number search must see: 10 characters and _R's two.
_BARE_TAIL = 13

# Every numeric finding holds 8+ digits separated by at most three punctuation
# characters (its first digit may follow "+", "(" or a letter). The first pass finds
# such clusters in a "shape" of the text: one byte per character, every digit (and an
# RG's check letter X) turned into b"0", every non-ASCII character into b"?". Starting
# with a literal lets the engine skip ahead with a plain byte search; gaps are bounded
# and quantifiers possessive, so an attempt costs O(1) whatever the input. A cluster is
# kept only if it has 8+ digits and either 11+ digits (cpf, cnpj, card, phone) or the
# shape of a phone ending (0000-0000), a CEP (000-000) or an RG (000.000-0) within its
# first eleven digits: dates, amounts and timestamps are dropped here, in C. Byte tests
# on each kept cluster then pick the per-kind patterns, which run on the text itself,
# only inside the cluster. Bare RGs and CEPs are found from their keywords instead.
_SHAPE = bytes.maketrans(b"0123456789Xx", b"000000000000")
_CLUSTER_RE = re.compile(
    rb"0"
    rb"(?=(?:[ ()./_+-]{0,3}+0){7})"
    rb"(?=(?:[ ()./_+-]{0,3}+0){10}"
    rb"|(?:[ ()./_+-]{0,3}+0){0,9}?[ ()./_+-]{0,3}+(?:0000[ -]?0000|000-000|000\.000-0))"
    rb"(?:[ ()./_+-]{0,3}+0){7,}+"
)
_CLUSTER_MARGIN = 2  # _R looks two characters past a match
_CHECK_EVERY = 512  # clusters between two calls of a scan's `check` (its budget)
_EIGHT_DIGITS = b"00000000"


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
        if valid(digits(m.group())):
            out.append((m.start(), m.end(), kind))


def _collect_cards(out: _Candidates, text: str, pos: int, endpos: int) -> None:
    """Append payment cards; a 4-4-4-4 card followed by a short group (a CVV) still counts.

    Space-separated groups can chain ("5678 4111 1111 1111 1111"), so after a candidate
    fails the search resumes one character later rather than after the candidate.
    """
    while (m := _CARD_RE.search(text, pos, endpos)) is not None:
        start, end = m.span()
        tail = m.start("tail")
        if card_valid(digits(m.group())):
            out.append((start, end, "credit_card"))
            pos = end
        elif tail >= 0 and card_valid(digits(text[start:tail])):
            out.append((start, tail, "credit_card"))
            pos = tail
        else:
            pos = start + 1


# Separators tolerated between the digit groups of a number ("529 982 247 25",
# "4111.1111.1111.1111", "529 - 982 - 247 - 25"): one to three of these characters.
_GROUP_RE = re.compile(r"[0-9]++")
_GROUP_GAP = frozenset(" ./_-")
_GROUP_GAP_MAX = 3  # as the cluster pattern allows
_WINDOW_MAX = 19  # the longest number with a check digit (a 19-digit card)


# For a number inside a longer run of groups, where its group boundaries may fall (digits
# from its start), as bit masks: the printed layouts 3-3-3-2 (CPF), 2-3-3-4-2 (CNPJ) and
# 4-4-4-4[-3], 4-6-5, 4-6-4 (cards).
def _mask(*cuts: int) -> int:
    return sum(1 << cut for cut in cuts)


_CPF_CUTS = _mask(3, 6, 9)
_CNPJ_CUTS = _mask(2, 5, 8, 12)
_CARD_CUTS = _mask(4, 8, 10, 12, 16)
_ANY_CUTS = _CPF_CUTS | _CNPJ_CUTS | _CARD_CUTS


def _grouped_kind(number: bytes, cuts: int | None) -> str | None:
    """The checked kind of a digit string split at `cuts` (a mask; None: anywhere), if any."""
    size = len(number)
    if size == 11:
        if (cuts is None or not cuts & ~_CPF_CUTS) and cpf_valid(number):
            return "cpf"
    elif size == 14 and (cuts is None or not cuts & ~_CNPJ_CUTS) and cnpj_valid(number):
        return "cnpj"
    if 13 <= size <= 19 and (cuts is None or not cuts & ~_CARD_CUTS) and card_valid(number):
        return "credit_card"
    return None


def _runs(text: str, start: int, end: int) -> Iterator[list[tuple[int, int]]]:
    """Runs of digit groups in text[start:end] joined by one to three separators."""
    run: list[tuple[int, int]] = []
    for m in _GROUP_RE.finditer(text, start, end):
        if run:
            gap = text[run[-1][1] : m.start()]
            if len(gap) > _GROUP_GAP_MAX or not _GROUP_GAP.issuperset(gap):
                yield run
                run = []
        run.append(m.span())
    if run:
        yield run


def _collect_grouped(out: _Candidates, text: str, start: int, end: int) -> None:
    """Append CPFs, CNPJs and cards written with any separators between their groups.

    A whole run of groups may be split anywhere ("5 2 9 9 8 2 2 4 7 2 5"); a number
    inside a longer run must start and end on group boundaries and be split only where
    its printed layout is, so that tables of small numbers do not read as documents.
    """
    for run in _runs(text, start, end):
        groups = [text[a:b].encode() for a, b in run]
        if len(run) > 1:
            whole = b"".join(groups)
            kind = _grouped_kind(whole, None) if len(whole) <= _WINDOW_MAX else None
            if kind is not None:
                out.append((run[0][0], run[-1][1], kind))
                continue
        last = len(run) - 1
        for i in range(len(run)):
            number = b""
            cuts = 0
            for j in range(i, len(run)):
                if number:
                    if not (1 << len(number)) & _ANY_CUTS:
                        break  # no layout splits here: no longer window can fit
                    cuts |= 1 << len(number)
                number += groups[j]
                if len(number) > _WINDOW_MAX:
                    break
                if i == 0 and j == last and last > 0:
                    continue  # the whole run was tried above
                kind = _grouped_kind(number, cuts)
                if kind is not None:
                    out.append((run[i][0], run[j][1], kind))


def _collect_numeric(
    out: _Candidates, text: str, shape: bytes, check: Callable[[], None] | None
) -> None:
    """Append candidates of the numeric kinds in their formatted or bare forms."""
    size = len(text)
    for count, cluster in enumerate(_CLUSTER_RE.finditer(shape)):
        if check is not None and count % _CHECK_EVERY == _CHECK_EVERY - 1:
            check()
        chars = cluster.group()
        count = chars.count(b"0")
        start, end = cluster.span()
        pos, endpos = max(0, start - 1), min(size, end + _CLUSTER_MARGIN)
        if count >= 11:
            _collect(out, "cpf", _CPF_RE, cpf_valid, text, pos, endpos)
            if count >= 13:
                _collect_cards(out, text, pos, endpos)
                if count >= 14:
                    _collect(out, "cnpj", _CNPJ_RE, cnpj_valid, text, pos, endpos)
            _collect_grouped(out, text, start, end)
        # A phone ends in 4 digits after 4 or 5 digits and an optional separator.
        if count >= 10 and (b"0000-0000" in chars or b"0000 0000" in chars or b"00000000" in chars):
            out.extend((*m.span(), "phone") for m in _PHONE_RE.finditer(text, pos, endpos))
        if b"000-000" in chars:
            _collect(out, "cep", _CEP_FORMATTED_RE, cep_valid, text, pos, endpos)
        if b"0.000.000-0" in chars:
            _collect(out, "rg", _RG_FORMATTED_RE, rg_valid, text, pos, endpos)


_KEYWORDED: tuple[
    tuple[str, bytes, re.Pattern[str], re.Pattern[str], int, Callable[[bytes], bool]], ...
] = (
    ("rg", b"rg", _RG_KEYWORD_RE, _RG_BARE_RE, _RG_KEYWORD_GAP, rg_valid),
    ("cep", b"cep", _CEP_KEYWORD_RE, _CEP_BARE_RE, _CEP_KEYWORD_GAP, cep_valid),
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
                    if valid(digits(m.group())):
                        out.append((m.start(), m.end(), kind))
            at = lowered.find(word, at + 1)


def _collect_alnum_cnpjs(out: _Candidates, text: str) -> None:
    """Append alphanumeric CNPJs, tried once per "/" that has the dots in place."""
    slash = text.find("/", _CNPJ_ALNUM_SLASH)
    while slash >= 0:
        if text[slash - 4] == "." and text[slash - 8] == ".":
            m = _CNPJ_ALNUM_RE.match(text, slash - _CNPJ_ALNUM_SLASH)
            if m is not None and cnpj_valid(digits(m.group())):
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
    """Non-overlapping candidates sorted by start: longest span first, then kind priority.

    Candidates are split into groups that overlap one another (disjoint groups cannot
    affect each other), so the greedy choice costs O(k^2) per group of k, not per text.
    """
    candidates.sort()
    kept: _Candidates = []
    group: _Candidates = []
    reach = -1
    for candidate in candidates:
        if group and candidate[0] >= reach:
            kept.extend(_resolve_group(group) if len(group) > 1 else group)
            group = []
        if not group:
            reach = candidate[1]
        group.append(candidate)
        reach = max(reach, candidate[1])
    kept.extend(_resolve_group(group) if len(group) > 1 else group)
    return kept


def _resolve_group(candidates: _Candidates) -> _Candidates:
    """`_resolve` for candidates that overlap one another."""
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


def scan(text: str, check: Callable[[], None] | None = None) -> list[Finding]:
    """All PII findings in the text, non-overlapping, ordered by start, spans in `text`.

    The text is normalised first (`common.pii_normalize`); spans are mapped back, so they
    cover exactly the characters the writer used (invisible ones inside included).
    """
    normalised = normalise(text)
    if check is not None:
        check()
    findings = _scan_normalised(normalised.text, check)
    if normalised.text is text:
        return findings
    mapped: list[Finding] = []
    for f in findings:
        start, end = normalised.span(f.start, f.end)
        mapped.append(Finding(f.kind, start, end))
    return mapped


def _scan_normalised(text: str, check: Callable[[], None] | None = None) -> list[Finding]:
    """The findings of `scan` in already normalised text."""
    shape = text.encode("ascii", "replace").translate(_SHAPE)
    candidates: _Candidates = []
    _collect_numeric(candidates, text, shape, check)
    if _EIGHT_DIGITS in shape:
        _collect_keyworded(candidates, text, shape)
    if "/" in text:
        _collect_alnum_cnpjs(candidates, text)
    if "@" in text:
        _collect_emails(candidates, text)
    if len(candidates) > 1:
        candidates = _resolve(candidates)
    return [Finding(kind, start, end) for start, end, kind in candidates]


def kinds_in(text: str, check: Callable[[], None] | None = None) -> set[str]:
    """The kinds of PII found in the text."""
    return {f.kind for f in scan(text, check)}


def label(kind: str) -> str:
    """The placeholder a finding of `kind` is replaced with, e.g. "[CPF]"."""
    return _LABELS[kind]


def redact(
    text: str, *, bare: bool = False, check: Callable[[], None] | None = None
) -> tuple[str, list[Finding]]:
    """The text with each finding replaced by its label ("[CPF]"; with `bare`, "CPF")."""
    findings = scan(text, check)
    if not findings:
        return text, findings
    pieces: list[str] = []
    position = 0
    for f in findings:
        pieces.append(text[position : f.start])
        pieces.append(f.kind.upper() if bare else _LABELS[f.kind])
        position = f.end
    pieces.append(text[position:])
    return "".join(pieces), findings
