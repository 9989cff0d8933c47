"""Candidate findings: where each kind of personal data may be, before overlaps are resolved.

`candidates` runs the patterns of `common.pii_patterns` only where they can match (inside
the digit clusters found by one pre-filter pass, after each "@", "/" or keyword) and keeps
the matches whose digits pass `common.pii_checks`. Candidates are (start, end, kind) tuples
in normalised text; they may overlap (`common.pii` resolves that).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator

from common.pii_checks import card_valid, cep_valid, cnpj_valid, cpf_valid, digits, rg_valid
from common.pii_patterns import (
    BARE_TAIL,
    CARD_RE,
    CEP_BARE_RE,
    CEP_FORMATTED_RE,
    CEP_KEYWORD_GAP,
    CEP_KEYWORD_RE,
    CHECK_EVERY,
    CLUSTER_MARGIN,
    CLUSTER_RE,
    CNPJ_ALNUM_RE,
    CNPJ_ALNUM_SLASH,
    CNPJ_RE,
    CPF_RE,
    EIGHT_DIGITS,
    EMAIL_DOMAIN_RE,
    EMAIL_LOCAL_REVERSED_RE,
    PHONE_RE,
    RG_BARE_RE,
    RG_FORMATTED_RE,
    RG_KEYWORD_GAP,
    RG_KEYWORD_RE,
    SHAPE,
)

# Candidates are (start, end, kind) tuples appended to one list; Finding objects are only
# built for the ones that survive overlap resolution.

Candidates = list[tuple[int, int, str]]


def _collect(
    out: Candidates,
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


def _collect_cards(out: Candidates, text: str, pos: int, endpos: int) -> None:
    """Append payment cards; a 4-4-4-4 card followed by a short group (a CVV) still counts.

    Space-separated groups can chain ("5678 4111 1111 1111 1111"), so after a candidate
    fails the search resumes one character later rather than after the candidate.
    """
    while (m := CARD_RE.search(text, pos, endpos)) is not None:
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


def _collect_grouped(out: Candidates, text: str, start: int, end: int) -> None:
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


def collect_numeric(
    out: Candidates, text: str, shape: bytes, check: Callable[[], None] | None
) -> None:
    """Append candidates of the numeric kinds in their formatted or bare forms."""
    size = len(text)
    for count, cluster in enumerate(CLUSTER_RE.finditer(shape)):
        if check is not None and count % CHECK_EVERY == CHECK_EVERY - 1:
            check()
        chars = cluster.group()
        count = chars.count(b"0")
        start, end = cluster.span()
        pos, endpos = max(0, start - 1), min(size, end + CLUSTER_MARGIN)
        if count >= 11:
            _collect(out, "cpf", CPF_RE, cpf_valid, text, pos, endpos)
            if count >= 13:
                _collect_cards(out, text, pos, endpos)
                if count >= 14:
                    _collect(out, "cnpj", CNPJ_RE, cnpj_valid, text, pos, endpos)
            _collect_grouped(out, text, start, end)
        # A phone ends in 4 digits after 4 or 5 digits and an optional separator.
        if count >= 10 and (b"0000-0000" in chars or b"0000 0000" in chars or b"00000000" in chars):
            out.extend((*m.span(), "phone") for m in PHONE_RE.finditer(text, pos, endpos))
        if b"000-000" in chars:
            _collect(out, "cep", CEP_FORMATTED_RE, cep_valid, text, pos, endpos)
        if b"0.000.000-0" in chars:
            _collect(out, "rg", RG_FORMATTED_RE, rg_valid, text, pos, endpos)


_KEYWORDED: tuple[
    tuple[str, bytes, re.Pattern[str], re.Pattern[str], int, Callable[[bytes], bool]], ...
] = (
    ("rg", b"rg", RG_KEYWORD_RE, RG_BARE_RE, RG_KEYWORD_GAP, rg_valid),
    ("cep", b"cep", CEP_KEYWORD_RE, CEP_BARE_RE, CEP_KEYWORD_GAP, cep_valid),
)


def collect_keyworded(out: Candidates, text: str, shape: bytes) -> None:
    """Append bare RGs and CEPs: 9 or 8 digits shortly after the keyword "RG" or "CEP"."""
    lowered = shape.lower()
    size = len(text)
    for kind, word, keyword, bare, gap, valid in _KEYWORDED:
        at = lowered.find(word)
        while at >= 0:
            if keyword.match(text, at):
                first = at + len(word)
                last = first + gap
                for m in bare.finditer(text, first, min(size, last + BARE_TAIL)):
                    if m.start() > last:
                        break
                    if valid(digits(m.group())):
                        out.append((m.start(), m.end(), kind))
            at = lowered.find(word, at + 1)


def collect_alnum_cnpjs(out: Candidates, text: str) -> None:
    """Append alphanumeric CNPJs, tried once per "/" that has the dots in place."""
    slash = text.find("/", CNPJ_ALNUM_SLASH)
    while slash >= 0:
        if text[slash - 4] == "." and text[slash - 8] == ".":
            m = CNPJ_ALNUM_RE.match(text, slash - CNPJ_ALNUM_SLASH)
            if m is not None and cnpj_valid(digits(m.group())):
                out.append((m.start(), m.end(), "cnpj"))
        slash = text.find("/", slash + 1)


def collect_emails(out: Candidates, text: str) -> None:
    """Append e-mail addresses, one per "@" with a local part and a dotted domain."""
    reversed_text = text[::-1]
    size = len(text)
    at = text.find("@")
    while at >= 0:
        # text[i] is reversed_text[size - 1 - i]: the local part ends at text[at - 1].
        local = EMAIL_LOCAL_REVERSED_RE.match(reversed_text, size - at)
        if local is not None:
            domain = EMAIL_DOMAIN_RE.match(text, at + 1)
            if domain is not None:
                out.append((size - local.end(), domain.end(), "email"))
        at = text.find("@", at + 1)


def candidates(text: str, check: Callable[[], None] | None = None) -> Candidates:
    """Every candidate finding in normalised `text`; `check` is called now and then (a budget)."""
    shape = text.encode("ascii", "replace").translate(SHAPE)
    found: Candidates = []
    collect_numeric(found, text, shape, check)
    if EIGHT_DIGITS in shape:
        collect_keyworded(found, text, shape)
    if "/" in text:
        collect_alnum_cnpjs(found, text)
    if "@" in text:
        collect_emails(found, text)
    return found
