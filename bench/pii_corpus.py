"""A generated corpus of personal data in many writings, and the detector's rates on it.

Valid values (right check digits, real DDDs, deliverable-looking e-mails) and invalid ones
(a wrong check digit, an unassigned DDD, a CEP below 01000-000, an e-mail without a
top-level domain) of every kind, each written in every supported writing: plain, full-width
characters, Arabic-Indic and Devanagari digits, zero-width joiners or soft hyphens between
characters, zero-width spaces between groups, glued to words, spaces, hyphens or Unicode
dashes between groups, no-break spaces. The check-digit helpers are written independently
of `common.pii_checks`. Deterministic for a given seed.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from common import pii

__all__ = ["WRITINGS", "Case", "Rates", "corpus", "measure"]


def _cpf(base9: str) -> str:
    digits = [int(c) for c in base9]
    for top in (10, 11):
        rest = sum(d * w for d, w in zip(digits, range(top, 1, -1), strict=True)) % 11
        digits.append(0 if rest < 2 else 11 - rest)
    return "".join(map(str, digits))


def _cnpj(base12: str) -> str:
    values = [int(c) for c in base12]
    for weights in ([5, 4, 3, 2, 9, 8, 7, 6, 5, 4, 3, 2], [6, 5, 4, 3, 2, 9, 8, 7, 6, 5, 4, 3, 2]):
        rest = sum(v * w for v, w in zip(values, weights, strict=True)) % 11
        values.append(0 if rest < 2 else 11 - rest)
    return "".join(map(str, values))


def _rg(base8: str) -> str:
    total = sum(int(d) * w for d, w in zip(base8, range(2, 10), strict=True))
    check = next(c for c in range(11) if (total + 100 * c) % 11 == 0)
    return base8 + ("X" if check == 10 else str(check))


def _luhn(partial: str) -> str:
    total = 0
    for i, c in enumerate(reversed(partial)):
        value = int(c) * (2 if i % 2 == 0 else 1)
        total += value - 9 if value > 9 else value
    return partial + str((10 - total % 10) % 10)


def _wrong_last(value: str, valid: Callable[[str], bool], rng: random.Random) -> str:
    """The value with its last digit changed so that `valid` fails."""
    while True:
        digit = rng.choice("0123456789")
        candidate = value[:-1] + digit
        if digit != value[-1] and not valid(candidate):
            return candidate


def _digits(rng: random.Random, n: int) -> str:
    while True:
        text = "".join(rng.choice("0123456789") for _ in range(n))
        if len(set(text)) > 1:
            return text


@dataclass(frozen=True)
class Case:
    """One written value: its kind, whether it is personal data, the writing, the text."""

    kind: str
    valid: bool
    writing: str
    text: str  # the whole sentence
    start: int  # where the value starts in it
    end: int


# --- writings ----------------------------------------------------------------------------

_FULL = {c: chr(0xFF00 + ord(c) - 0x20) for c in "0123456789.-/@()+"}


def _fullwidth(v: str) -> str:
    return "".join(_FULL.get(c, c) for c in v)


def _script(zero: int) -> Callable[[str], str]:
    return lambda v: "".join(chr(zero + int(c)) if c.isdigit() else c for c in v)


def _between(mark: str) -> Callable[[str], str]:
    return lambda v: mark.join(v)


def _groups(sep: str) -> Callable[[str], str]:
    return lambda v: "".join(sep if c in ".-/" else c for c in v)


WRITINGS: dict[str, Callable[[str], str]] = {
    "plain": lambda v: v,
    "fullwidth": _fullwidth,
    "arabic_indic": _script(0x0660),
    "devanagari": _script(0x0966),
    "zero_width_joiner": _between("\u200d"),
    "soft_hyphen": _between("\u00ad"),
    "zero_width_space_groups": lambda v: "".join(c + "\u200b" if c in ".-/" else c for c in v),
    "en_dash": lambda v: v.replace("-", "\u2013"),
    "no_break_space": lambda v: v.replace(" ", "\u00a0"),
    "spaces_between_groups": _groups(" "),
    "hyphens_between_groups": _groups("-"),
    "glued": lambda v: v,  # placed between letters by `corpus`
}
# Writings a kind is not expected to survive (documented trade-offs): phones and CEPs have
# no check digit, so they keep strict delimiters; RGs are recognised with dots only.
UNSUPPORTED: dict[str, frozenset[str]] = {
    "phone": frozenset({"glued", "hyphens_between_groups"}),
    "cep": frozenset({"glued", "spaces_between_groups"}),
    "rg": frozenset({"glued", "spaces_between_groups", "hyphens_between_groups"}),
    "email": frozenset({"glued", "spaces_between_groups", "hyphens_between_groups"}),
}


# --- values ------------------------------------------------------------------------------


def _values(rng: random.Random) -> Iterator[tuple[str, bool, str]]:
    """(kind, valid, formatted value)."""

    def fmt_cpf(d: str) -> str:
        return f"{d[:3]}.{d[3:6]}.{d[6:9]}-{d[9:]}"

    def fmt_cnpj(d: str) -> str:
        return f"{d[:2]}.{d[2:5]}.{d[5:8]}/{d[8:12]}-{d[12:]}"

    cpf = _cpf(_digits(rng, 9))
    yield "cpf", True, fmt_cpf(cpf)
    yield "cpf", False, fmt_cpf(_wrong_last(cpf, lambda v: _cpf(v[:9]) == v, rng))
    cnpj = _cnpj(_digits(rng, 8) + "0001")
    yield "cnpj", True, fmt_cnpj(cnpj)
    yield "cnpj", False, fmt_cnpj(_wrong_last(cnpj, lambda v: _cnpj(v[:12]) == v, rng))
    rg = _rg(_digits(rng, 8))
    yield "rg", True, f"{rg[:2]}.{rg[2:5]}.{rg[5:8]}-{rg[8]}"
    bad_rg = _wrong_last(rg.replace("X", "0"), lambda v: _rg(v[:8]) == v, rng)
    yield "rg", False, f"{bad_rg[:2]}.{bad_rg[2:5]}.{bad_rg[5:8]}-{bad_rg[8]}"
    prefix = rng.choice(["4", "51", "52", "53", "54", "55", "5067", "6011"])
    card = _luhn(prefix + _digits(rng, 15 - len(prefix)))
    grouped = " ".join(card[i : i + 4] for i in range(0, 16, 4))
    yield "credit_card", True, grouped.replace(" ", rng.choice([" ", "-", "."]))
    bad = _wrong_last(card, lambda v: _luhn(v[:-1]) == v, rng)
    yield "credit_card", False, " ".join(bad[i : i + 4] for i in range(0, 16, 4))
    ddd = rng.choice(["11", "21", "31", "41", "51", "61", "71", "81", "91"])
    mobile = "9" + _digits(rng, 8)
    yield "phone", True, f"({ddd}) {mobile[:5]}-{mobile[5:]}"
    landline = rng.choice("2345") + _digits(rng, 7)
    yield "phone", True, f"{ddd} {landline[:4]}-{landline[4:]}"
    yield (
        "phone",
        False,
        f"({rng.choice(['20', '23', '25', '30', '50', '60'])}) {mobile[:5]}-{mobile[5:]}",
    )
    user = rng.choice(["ana", "joao.silva", "maria_jose", "c.souza"])
    yield "email", True, f"{user}{rng.randint(1, 99)}@{rng.choice(['banco.com.br', 'example.com'])}"
    yield "email", False, f"{user}@localhost"
    cep = rng.choice("123456789") + _digits(rng, 7)
    yield "cep", True, f"{cep[:5]}-{cep[5:]}"
    yield "cep", False, f"00{_digits(rng, 3)}-{_digits(rng, 3)}"


def corpus(seed: int = 14, rounds: int = 40) -> list[Case]:
    """Every generated value in every writing, placed in a sentence."""
    rng = random.Random(seed)
    cases: list[Case] = []
    for _ in range(rounds):
        for kind, valid, value in _values(rng):
            for name, write in WRITINGS.items():
                if name == "hyphens_between_groups" and kind == "email":
                    continue
                written = write(value)
                if name == "glued":
                    head, tail = "Dados do clienteX", "Yconferidos."
                else:
                    head, tail = "Dados do cliente: ", " conferidos."
                text = head + written + tail
                cases.append(Case(kind, valid, name, text, len(head), len(head) + len(written)))
    return cases


@dataclass(frozen=True)
class Rates:
    """Detection over valid values in supported writings; false positives over invalid ones."""

    detected: int
    valid: int
    false_positives: int  # invalid values reported as their own kind
    other_kind: int  # invalid values overlapped by a finding of another kind
    invalid: int
    missed: tuple[Case, ...]
    flagged: tuple[Case, ...]

    @property
    def detection(self) -> float:
        """The share of valid values found (right kind, overlapping the value)."""
        return self.detected / self.valid if self.valid else 1.0

    @property
    def false_positive(self) -> float:
        """The share of invalid values reported as their own kind."""
        return self.false_positives / self.invalid if self.invalid else 0.0

    @property
    def other_kind_rate(self) -> float:
        """The share of invalid values overlapped by another kind (a phone shape in a card)."""
        return self.other_kind / self.invalid if self.invalid else 0.0


def measure(cases: list[Case]) -> dict[str, Rates]:
    """Rates per kind (and "all") on the cases."""
    by_kind: dict[str, list[tuple[Case, bool]]] = {}
    for case in cases:
        if case.valid and case.writing in UNSUPPORTED.get(case.kind, frozenset()):
            continue
        findings = pii.scan(case.text)
        over = [f for f in findings if f.start < case.end and f.end > case.start]
        hit = any(f.kind == case.kind for f in over)
        by_kind.setdefault(case.kind, []).append((case, hit, bool(over) and not hit))
    out: dict[str, Rates] = {}
    everything: list[tuple[Case, bool, bool]] = []
    for kind, results in sorted(by_kind.items()):
        everything.extend(results)
        out[kind] = _rates(results)
    out["all"] = _rates(everything)
    return out


def _rates(results: list[tuple[Case, bool, bool]]) -> Rates:
    valid = [(c, hit) for c, hit, _ in results if c.valid]
    invalid = [(c, hit, other) for c, hit, other in results if not c.valid]
    return Rates(
        detected=sum(hit for _, hit in valid),
        valid=len(valid),
        false_positives=sum(hit for _, hit, _ in invalid),
        other_kind=sum(other for _, _, other in invalid),
        invalid=len(invalid),
        missed=tuple(c for c, hit in valid if not hit),
        flagged=tuple(c for c, hit, other in invalid if hit or other),
    )
