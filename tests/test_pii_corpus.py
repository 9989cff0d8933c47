"""The generated corpus (bench/pii_corpus.py): the detector's detection and false-positive rates."""

from __future__ import annotations

import pytest

from bench.pii_corpus import UNSUPPORTED, WRITINGS, Rates, corpus, measure


@pytest.fixture(scope="module")
def rates() -> dict[str, Rates]:
    """The rates over the default corpus (seed 14, 40 rounds)."""
    return dict(measure(corpus()))


def test_corpus_covers_every_kind_and_writing() -> None:
    """The corpus holds valid and invalid values of every kind in every writing."""
    cases = corpus(rounds=2)
    kinds = {c.kind for c in cases}
    assert kinds == {"cpf", "cnpj", "rg", "credit_card", "phone", "email", "cep"}
    for kind in kinds:
        for valid in (True, False):
            writings = {c.writing for c in cases if c.kind == kind and c.valid is valid}
            expected = set(WRITINGS) - ({"hyphens_between_groups"} if kind == "email" else set())
            assert writings == expected, (kind, valid)


def test_every_valid_value_is_detected_in_supported_writings(rates: dict[str, Rates]) -> None:
    """Detection is 100% for every kind in every writing it supports."""
    for kind, rate in rates.items():
        assert rate.missed == (), (kind, [(c.writing, c.text) for c in rate.missed[:5]])
        assert rate.detection == 1.0


def test_no_invalid_check_digit_is_reported_as_its_kind(rates: dict[str, Rates]) -> None:
    """False positives are 0%: a number failing its check is never reported as that kind."""
    for kind, rate in rates.items():
        assert rate.false_positives == 0, (kind, rate.flagged[:5])


def test_other_kinds_rarely_overlap_invalid_values(rates: dict[str, Rates]) -> None:
    """Another kind (a phone shape inside card-like groups) overlaps under 1% of invalid values."""
    overall = rates["all"]
    assert overall.other_kind_rate < 0.01


def test_unsupported_writings_are_only_the_documented_ones() -> None:
    """Only phones, CEPs, RGs and e-mails have writings they are not expected to survive."""
    assert set(UNSUPPORTED) == {"phone", "cep", "rg", "email"}
    assert "glued" not in UNSUPPORTED.get("cpf", frozenset())
