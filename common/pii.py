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

from bisect import bisect_left
from collections.abc import Callable
from dataclasses import dataclass

from common.pii_candidates import Candidates, candidates
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


# --- Overlaps -----------------------------------------------------------------------------


def _resolve(candidates: Candidates) -> Candidates:
    """Non-overlapping candidates sorted by start: longest span first, then kind priority.

    Candidates are split into groups that overlap one another (disjoint groups cannot
    affect each other), so the greedy choice costs O(k^2) per group of k, not per text.
    """
    candidates.sort()
    kept: Candidates = []
    group: Candidates = []
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


def _resolve_group(candidates: Candidates) -> Candidates:
    """`_resolve` for candidates that overlap one another."""
    candidates.sort(key=lambda c: (c[0] - c[1], _PRIORITY[c[2]], c[0]))
    kept: Candidates = []
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
    found = candidates(text, check)
    if len(found) > 1:
        found = _resolve(found)
    return [Finding(kind, start, end) for start, end, kind in found]


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
