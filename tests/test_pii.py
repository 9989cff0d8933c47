"""Tests for common.pii: the LGPD personal-data detector run on prompts before the LLM."""

from __future__ import annotations

import itertools
import random
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from common.pii import KINDS, Finding, kinds_in, redact, scan

# No example database: the suite must not write files into the repository.
PROPERTY = settings(
    max_examples=300,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)


# --- Check-digit helpers, written independently of the module under test -----------------


def cpf_with_check_digits(base9: str) -> str:
    """The 11-digit CPF for a 9-digit base (mod 11, weights 10..2 then 11..2)."""
    digits = [int(c) for c in base9]
    for first_weight in (10, 11):
        rest = sum(d * w for d, w in zip(digits, range(first_weight, 1, -1), strict=True)) % 11
        digits.append(0 if rest < 2 else 11 - rest)
    return "".join(map(str, digits))


def cnpj_with_check_digits(base12: str) -> str:
    """The 14-character CNPJ for a 12-character base (digits or the alphanumeric form)."""
    values = [ord(c) - ord("0") for c in base12]
    for weights in ([5, 4, 3, 2, 9, 8, 7, 6, 5, 4, 3, 2], [6, 5, 4, 3, 2, 9, 8, 7, 6, 5, 4, 3, 2]):
        rest = sum(v * w for v, w in zip(values, weights, strict=True)) % 11
        values.append(0 if rest < 2 else 11 - rest)
    return base12 + "".join(str(v) for v in values[12:])


def rg_with_check_digit(base8: str) -> str:
    """The SSP-SP RG for 8 digits: the digit D (10 is X) making sum(d*w) + 100*D = 0 mod 11."""
    total = sum(int(d) * w for d, w in zip(base8, range(2, 10), strict=True))
    check = next(c for c in range(11) if (total + 100 * c) % 11 == 0)
    return base8 + ("X" if check == 10 else str(check))


def luhn_complete(partial: str) -> str:
    """The partial card number with its Luhn check digit appended."""
    total = 0
    for i, c in enumerate(reversed(partial)):
        value = int(c) * (2 if i % 2 == 0 else 1)
        total += value - 9 if value > 9 else value
    return partial + str((10 - total % 10) % 10)


def fmt_cpf(d: str) -> str:
    """A CPF as ###.###.###-##."""
    return f"{d[:3]}.{d[3:6]}.{d[6:9]}-{d[9:]}"


def fmt_cnpj(d: str) -> str:
    """A CNPJ as ##.###.###/####-##."""
    return f"{d[:2]}.{d[2:5]}.{d[5:8]}/{d[8:12]}-{d[12:]}"


def fmt_rg(d: str) -> str:
    """An RG as ##.###.###-D."""
    return f"{d[:2]}.{d[2:5]}.{d[5:8]}-{d[8]}"


def one(text: str, value: str, kind: str) -> list[Finding]:
    """The expected scan result: exactly one finding of `kind` covering `value` in `text`."""
    start = text.index(value)
    return [Finding(kind, start, start + len(value))]


def random_bases(length: int, count: int, seed: int) -> list[str]:
    """Deterministic random digit strings, none made of a single repeated digit."""
    rng = random.Random(seed)
    bases: list[str] = []
    while len(bases) < count:
        base = "".join(rng.choice("0123456789") for _ in range(length))
        if len(set(base)) > 1:
            bases.append(base)
    return bases


def test_helpers_agree_with_published_examples() -> None:
    """The test's own check-digit helpers reproduce well-known valid numbers."""
    assert fmt_cpf(cpf_with_check_digits("529982247")) == "529.982.247-25"
    assert fmt_cnpj(cnpj_with_check_digits("112223330001")) == "11.222.333/0001-81"
    assert fmt_cnpj(cnpj_with_check_digits("12ABC34501DE")) == "12.ABC.345/01DE-35"
    assert fmt_rg(rg_with_check_digit("29465327")) == "29.465.327-2"
    assert luhn_complete("411111111111111") == "4111111111111111"


# --- CPF --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("CPF: 529.982.247-25", "529.982.247-25"),
        ("CPF: 529.982.247-25.", "529.982.247-25"),
        ("cpf 52998224725, ok", "52998224725"),
        ("(111.444.777-35)", "111.444.777-35"),
        ("11144477735", "11144477735"),
        ("o documento 529982247-25 consta", "529982247-25"),
        ("linha1\n529.982.247-25\nlinha3", "529.982.247-25"),
        ("CPF 529.982.247-25/SP", "529.982.247-25"),
    ],
)
def test_cpf_known_valid_is_found(text: str, value: str) -> None:
    """Well-known valid CPFs are found, formatted or bare, with exact spans."""
    assert scan(text) == one(text, value, "cpf")


def test_cpf_generated_valid_are_found() -> None:
    """Every CPF built by the test's own check-digit helper is found, formatted and bare."""
    for base in random_bases(9, 300, seed=1):
        cpf = cpf_with_check_digits(base)
        for value in (fmt_cpf(cpf), cpf):
            text = f"Cliente {value} pediu crédito."
            assert scan(text) == one(text, value, "cpf"), value


@pytest.mark.parametrize(
    "text",
    [
        "529.982.247-26",  # second check digit wrong
        "529.982.247-15",  # first check digit wrong
        "52998224726",
        "111.111.111-11",  # repeated digits pass the arithmetic but are not CPFs
        "00000000000",
        "999.999.999-99",
        "529.982.247-2",  # too short
        "1529.982.247-25",  # inside a longer number
        "529.982.247-251",
        "052998224725",
    ],
)
def test_cpf_invalid_or_embedded_is_not_found(text: str) -> None:
    """Wrong check digits, repeated digits, wrong lengths and embedded digits are not CPFs."""
    assert scan(text) == []


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("x52998224725", "52998224725"),
        ("52998224725x", "52998224725"),
        ("CPF529.982.247-25", "529.982.247-25"),
        ("id_52998224725", "52998224725"),
        ("529-982-247-25", "529-982-247-25"),
        ("529 982 247 25", "529 982 247 25"),
        ("529/982/247/25", "529/982/247/25"),
        ("529. 982. 247- 25", "529. 982. 247- 25"),
        ("529 - 982 - 247 - 25", "529 - 982 - 247 - 25"),
        ("529   982   247   25", "529   982   247   25"),
        ("5 2 9 9 8 2 2 4 7 2 5", "5 2 9 9 8 2 2 4 7 2 5"),
        ("1.529.982.247-25", "529.982.247-25"),  # a longer run: the CPF on its layout
        ("529.982.247-25.1", "529.982.247-25"),
        ("52998224725.1", "52998224725"),
    ],
)
def test_cpf_glued_to_letters_or_regrouped_is_found(text: str, value: str) -> None:
    """Letters do not hide a CPF, nor do other separators between its groups or a longer run."""
    assert scan(text) == one(text, value, "cpf")


def test_cpf_inside_a_run_needs_its_layout() -> None:
    """Inside a longer run of groups a valid CPF split off its 3-3-3-2 layout is not reported."""
    assert scan("1 52 998 224 725") == []  # 52 998 224 725 is 11 digits split 2-3-3-3
    assert scan("10 20 30 40 50 60 70 80 90") == []


def test_cpf_every_repeated_digit_sequence_is_rejected() -> None:
    """All ten repeated-digit sequences are rejected, formatted and bare."""
    for digit in "0123456789":
        assert "cpf" not in kinds_in(digit * 11)  # 99999999999 is still a phone: (99) 99999-9999
        assert scan(fmt_cpf(digit * 11)) == []


# --- CNPJ -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("CNPJ 11.222.333/0001-81", "11.222.333/0001-81"),
        ("CNPJ: 11222333000181.", "11222333000181"),
        ("empresa 11.444.777/0001-61 ltda", "11.444.777/0001-61"),
        ("novo CNPJ 12.ABC.345/01DE-35.", "12.ABC.345/01DE-35"),
    ],
)
def test_cnpj_known_valid_is_found(text: str, value: str) -> None:
    """Well-known valid CNPJs (including the 2026 alphanumeric one) are found exactly."""
    assert scan(text) == one(text, value, "cnpj")


def test_cnpj_generated_valid_are_found() -> None:
    """Every CNPJ built by the test's own helper is found, formatted and bare."""
    for base in random_bases(12, 300, seed=2):
        cnpj = cnpj_with_check_digits(base)
        for value in (fmt_cnpj(cnpj), cnpj):
            text = f"Fornecedor {value}; pagar em 30 dias."
            assert scan(text) == one(text, value, "cnpj"), value


def test_cnpj_generated_alphanumeric_are_found() -> None:
    """Generated alphanumeric CNPJs are found in their punctuated form."""
    rng = random.Random(3)
    for _ in range(200):
        base = "".join(rng.choice("0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ") for _ in range(12))
        value = fmt_cnpj(cnpj_with_check_digits(base))
        text = f"CNPJ {value} ativo"
        assert scan(text) == one(text, value, "cnpj"), value


@pytest.mark.parametrize(
    "text",
    [
        "11.222.333/0001-82",
        "11.222.333/0001-91",
        "11222333000182",
        "11.111.111/1111-11",
        "00000000000000",
        "11.222.333/0001-8",
        "111.222.333/0001-81",
        "11.222.333/0001-811",
        "12ABC34501DE35",  # the alphanumeric form is recognised punctuated only
        "12.ABC.345/01DE-36",
    ],
)
def test_cnpj_invalid_or_embedded_is_not_found(text: str) -> None:
    """Wrong check digits, all-same digits, wrong lengths and embedded numbers are not CNPJs."""
    assert scan(text) == []


# --- RG ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("RG 29.465.327-2", "29.465.327-2"),
        ("identidade 29.465.327-2, SSP/SP", "29.465.327-2"),
        ("RG: 294653272", "294653272"),
        ("rg nº 29465327-2", "29465327-2"),
        ("Rg n. 294653272.", "294653272"),
        ("CPF/RG 294653272", "294653272"),
    ],
)
def test_rg_known_valid_is_found(text: str, value: str) -> None:
    """A valid SP RG is found formatted anywhere, and bare right after the keyword RG."""
    assert scan(text) == one(text, value, "rg")


def test_rg_generated_valid_are_found() -> None:
    """Generated RGs (including X and x check digits) are found formatted, and bare after RG."""
    seen_x = False
    for base in random_bases(8, 400, seed=4):
        rg = rg_with_check_digit(base)
        seen_x = seen_x or rg.endswith("X")
        for value in (fmt_rg(rg), fmt_rg(rg).lower()):
            text = f"documento {value} emitido"
            assert scan(text) == one(text, value, "rg"), value
        text = f"RG: {rg}"
        assert scan(text) == one(text, rg, "rg"), rg
    assert seen_x


@pytest.mark.parametrize(
    "text",
    [
        "29.465.327-3",  # wrong check digit
        "RG 294653273",
        "294653272",  # bare without the keyword
        "pedido 29465327-2",
        "cargo 294653272",  # "rg" inside a word is not the keyword
        "RG" + " " * 16 + "294653272",  # keyword too far away
        "11.111.111-0",  # repeated digits
        "RG 111111110",
        "29.465.327-2X",
        "129.465.327-2",
        "RG 2946532721",
    ],
)
def test_rg_invalid_or_unkeyworded_is_not_found(text: str) -> None:
    """Wrong check digits, bare numbers without the keyword and repeated digits are not RGs."""
    assert scan(text) == []


def test_rg_keyword_window_is_fifteen_characters() -> None:
    """A bare RG counts when it starts at most 15 characters after the keyword."""
    text = "RG" + " " * 15 + "294653272"
    assert scan(text) == one(text, "294653272", "rg")


# --- Phone ------------------------------------------------------------------------------

ANATEL_DDDS = [
    *range(11, 20),
    *(21, 22, 24, 27, 28),
    *(31, 32, 33, 34, 35, 37, 38),
    *range(41, 50),
    *(51, 53, 54, 55),
    *range(61, 70),
    *(71, 73, 74, 75, 77, 79),
    *range(81, 90),
    *range(91, 100),
]
INVALID_DDDS = [d for d in range(10, 100) if d not in ANATEL_DDDS]


@pytest.mark.parametrize(
    "value",
    [
        "+55 (11) 91234-5678",
        "(21) 3456-7890",
        "11 91234 5678",
        "11912345678",
        "+5511912345678",
        "55 11 91234-5678",
        "(11)91234-5678",
        "11 9 1234-5678",
        "(011) 3456-7890",
        "+55 61 2345-6789",
        "(99) 99876-5432",
        "48 5432-1098",
    ],
)
def test_phone_formats_are_found(value: str) -> None:
    """Brazilian mobiles and landlines are found in the usual formats, with exact spans."""
    text = f"Ligue para {value}, por favor."
    assert scan(text) == one(text, value, "phone")


@pytest.mark.parametrize("ddd", ANATEL_DDDS)
def test_phone_every_anatel_ddd_is_accepted(ddd: int) -> None:
    """Every area code in ANATEL's list is accepted, for mobiles and landlines."""
    for value in (f"({ddd}) 91234-5678", f"({ddd}) 3456-7890"):
        assert scan(value) == [Finding("phone", 0, len(value))]


@pytest.mark.parametrize("ddd", INVALID_DDDS)
def test_phone_invalid_ddd_is_rejected(ddd: int) -> None:
    """Area codes outside ANATEL's list are not phones."""
    assert scan(f"({ddd}) 91234-5678") == []
    assert scan(f"{ddd} 3456-7890") == []


@pytest.mark.parametrize(
    "text",
    [
        "(11) 91234-56789",  # too long
        "(11) 3456-789",  # too short
        "(11) 3456-78901",
        "(11) 1234-5678",  # landlines start with 2-5
        "(11) 6234-5678",
        "1191234567",  # 9 + 7 digits: neither a mobile nor a landline
        "911912345678",  # inside a longer digit run
        "(21) 3456-7890abc",
        "11912345678901",
        "tel 0800 123 4567",
        "5555 5555 5555",  # card-like groups are not +55 55 5555-5555
    ],
)
def test_phone_wrong_length_or_embedded_is_rejected(text: str) -> None:
    """Numbers of the wrong length, wrong leading digit or inside longer runs are not phones."""
    assert scan(text) == []


# --- E-mail -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("escreva para joao.silva@banco.com.br hoje", "joao.silva@banco.com.br"),
        ("a+tag@example.io", "a+tag@example.io"),
        ("USER_1@EXAMPLE.COM", "USER_1@EXAMPLE.COM"),
        ("fim: joe@x.com.", "joe@x.com"),
        ("<maria-jose@sub.dominio.org>", "maria-jose@sub.dominio.org"),
        ("mailto:joe@x.com", "joe@x.com"),
    ],
)
def test_email_is_found(text: str, value: str) -> None:
    """Practical e-mail addresses are found with exact spans (no trailing full stop)."""
    assert scan(text) == one(text, value, "email")


@pytest.mark.parametrize(
    "text",
    ["joe@localhost", "joe@x.c", "@x.com", "joe@", "user@123.456", "a @ b.com", "joe@x.com2"],
)
def test_email_lookalikes_are_rejected(text: str) -> None:
    """Strings without a local part, a dotted domain or an alphabetic TLD are not e-mails."""
    assert scan(text) == []


# --- Credit card ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        "4111 1111 1111 1111",
        "4111-1111-1111-1111",
        "4111111111111111",
        "5555 5555 5555 4444",
        "3782 822463 10005",  # Amex 4-6-5
        "371449635398431",
        "4012888888881881",
        "4222222222222",  # Visa, 13 digits
        "2223003122003222",  # Mastercard 2-series
        "6011111111111117",  # Discover
        "3530111333300000",  # JCB
        "3056 930902 5904",  # Diners, 4-6-4
        "6362970000457013",  # Elo
        "6062825624254001",  # Hipercard
    ],
)
def test_card_known_valid_is_found(value: str) -> None:
    """Well-known test card numbers are found, bare or grouped, with exact spans."""
    text = f"cartão {value}, obrigado"
    assert scan(text) == one(text, value, "credit_card")


@pytest.mark.parametrize(
    ("prefix", "length"),
    [
        ("4", 16),
        ("4", 19),
        ("51", 16),
        ("55", 16),
        ("2720", 16),
        ("34", 15),
        ("37", 15),
        ("300", 14),
        ("6011", 16),
        ("65", 16),
        ("644", 19),
        ("3528", 16),
        ("3589", 19),
        ("636368", 16),
        ("438935", 16),
        ("504175", 16),
        ("451416", 16),
        ("636297", 16),
        ("5067", 16),
        ("4576", 16),
        ("4011", 16),
        ("606282", 16),
    ],
)
def test_card_generated_valid_are_found(prefix: str, length: int) -> None:
    """Luhn-completed numbers with each issuer prefix are found bare and in 4-digit groups."""
    rng = random.Random(f"{prefix}/{length}")
    for _ in range(30):
        body = prefix + "".join(rng.choice("0123456789") for _ in range(length - len(prefix) - 1))
        number = luhn_complete(body)
        if length == 14 and cnpj_with_check_digits(number[:12]) == number:
            assert scan(number) == [Finding("cnpj", 0, 14)]  # a valid CNPJ wins the tie
            continue
        values = [number]
        if length in (16, 19):  # printed as 4-4-4-4 or 4-4-4-4-3
            values.append(" ".join(number[i : i + 4] for i in range(0, length, 4)))
        for value in values:
            assert scan(value) == [Finding("credit_card", 0, len(value))], value


def test_card_after_other_digit_groups_is_found() -> None:
    """A grouped card right after other digit groups is found, not hidden by a failed candidate."""
    for text in ("11 91234 5678 4111 1111 1111 1111", "5678 4111 1111 1111 1111"):
        assert Finding("credit_card", len(text) - 19, len(text)) in scan(text), text


def test_card_followed_by_cvv_is_found() -> None:
    """A grouped card followed by a three-digit group (a CVV) is still found, without it."""
    text = "cartão 5555 5555 5555 4444 123 vence 12/28"
    assert scan(text) == one(text, "5555 5555 5555 4444", "credit_card")


@pytest.mark.parametrize(
    "text",
    [
        "4111 1111 1111 1112",  # Luhn failure
        "4111111111111121",
        "5555 5555 5555 4445",
        "3782 822463 10006",
        "41111111111111111",  # Visa has no 17-digit numbers
        "14111111111111111",
    ],
)
def test_card_invalid_or_embedded_is_not_found(text: str) -> None:
    """Luhn failures, odd groupings, wrong lengths and embedded digits are not cards."""
    assert scan(text) == []


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("4111 1111-1111 1111", "4111 1111-1111 1111"),
        ("4111  1111 1111 1111", "4111  1111 1111 1111"),
        ("4111.1111.1111.1111", "4111.1111.1111.1111"),
        ("x4111111111111111", "4111111111111111"),
        ("4111111111111111b", "4111111111111111"),
        ("1.4111111111111111", "4111111111111111"),
    ],
)
def test_card_with_any_separators_or_glued_is_found(text: str, value: str) -> None:
    """Mixed or doubled separators, dots, adjacent letters and a longer run do not hide a card."""
    assert scan(text) == one(text, value, "credit_card")


def test_card_unknown_issuer_or_length_is_not_found() -> None:
    """Luhn-valid numbers with no known issuer prefix, or a length the issuer lacks, are ignored."""
    for body in ("9" * 15, "1234567890123", "7" * 18, "3712345678901234", "5112345678901"):
        number = luhn_complete(body)
        assert scan(number) == [], number


# --- CEP --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("CEP 01310-100", "01310-100"),
        ("Av. Paulista, 1000 - 01310-100, São Paulo", "01310-100"),
        ("cep: 01.310-100", "01.310-100"),
        ("CEP: 01310100", "01310100"),
        ("cep 22250040.", "22250040"),
        ("Cep nº 70040902", "70040902"),
    ],
)
def test_cep_is_found(text: str, value: str) -> None:
    """Formatted CEPs are always found; bare 8 digits only right after the keyword."""
    assert scan(text) == one(text, value, "cep")


@pytest.mark.parametrize(
    "text",
    [
        "01310100",  # bare, no keyword
        "pedido 01310100",
        "CEP do cliente é 01310100",  # keyword too far away
        "00123-456",  # below the lowest CEP
        "CEP 00123456",
        "101310-100",
        "01310-1000",
        "01310-100km",
        "0131-0100",
        "CEP 013101001",
    ],
)
def test_cep_invalid_or_unkeyworded_is_not_found(text: str) -> None:
    """Bare 8 digits without the keyword, out-of-range and embedded numbers are not CEPs."""
    assert scan(text) == []


# --- Ordinary text ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "O total é R$ 1.234,56 à vista.",
        "R$ 12.345.678,90",
        "Vencimento em 27/07/2025 às 14:30.",
        "2025-07-27T14:30:59Z",
        "versão 1.2.3, build 10.20.30.40",
        "pedido #123456 e pedido 2025-000123",
        "ticket ABC-12345678",
        "IP 192.168.0.1 porta 8080",
        "pi é 3,14159 e e é 2.71828",
        "ISBN 978-3-16-148410-0",
        "uuid 550e8400-e29b-41d4-a716-446655440000",
        "commit 1a2b3c4d5e6f7a8b9c0d",
        "taxa de 1,99% a.m. e CET de 27,5% a.a.",
        "Ligue 0800 777 0000",
        "",
        "sem números aqui",
    ],
)
def test_ordinary_text_has_no_findings(text: str) -> None:
    """Prices, dates, times, versions, ids and other everyday numbers are not PII."""
    assert scan(text) == []
    assert kinds_in(text) == set()


# --- Overlaps, ordering, kinds_in ---------------------------------------------------------


def test_overlap_tie_prefers_cpf_over_phone() -> None:
    """A bare 11-digit string that is both a valid CPF and a valid phone is reported as a CPF."""
    cpf = cpf_with_check_digits("119123456")  # DDD 11, then a mobile starting with 9
    as_phone = f"{cpf[:2]} {cpf[2:]}"  # the same digits regrouped: still a CPF
    assert scan(as_phone) == [Finding("cpf", 0, 12)]
    assert scan(cpf) == [Finding("cpf", 0, 11)]
    landline = "(11) 3456-7890"
    assert scan(landline) == [Finding("phone", 0, len(landline))]


def test_overlap_longer_span_wins() -> None:
    """When spans overlap, the longer finding wins whatever its priority."""
    cpf = cpf_with_check_digits("119876543")
    assert scan(cpf) == [Finding("cpf", 0, 11)]
    text = f"+55 {cpf}"  # the phone with country code is longer than the CPF inside it
    assert scan(text) == [Finding("phone", 0, len(text))]
    assert scan("52998224725") == [Finding("cpf", 0, 11)]
    email = "52998224725@example.com"
    assert scan(email) == [Finding("email", 0, len(email))]


def test_overlap_tie_prefers_cnpj_over_card() -> None:
    """A 14-digit number that is both a valid CNPJ and a valid Diners card is a CNPJ."""
    number = next(
        c
        for c in (cnpj_with_check_digits(f"36{n:010d}") for n in range(10_000))
        if luhn_complete(c[:-1]) == c
    )
    assert scan(number) == [Finding("cnpj", 0, 14)]


def test_findings_are_sorted_and_cover_every_kind() -> None:
    """A text with one of each kind yields them all, ordered by start, not overlapping."""
    text = (
        "Dados: CEP 01310-100; e-mail ana@banco.com.br; cartão 4111 1111 1111 1111; "
        "tel (21) 3456-7890; RG 29.465.327-2; CNPJ 11.222.333/0001-81; CPF 529.982.247-25."
    )
    found = scan(text)
    assert [f.kind for f in found] == [
        "cep",
        "email",
        "credit_card",
        "phone",
        "rg",
        "cnpj",
        "cpf",
    ]
    assert all(a.end <= b.start for a, b in itertools.pairwise(found))
    assert kinds_in(text) == set(KINDS)


def test_finding_is_frozen() -> None:
    """Findings are immutable value objects."""
    finding = Finding("cpf", 0, 11)
    with pytest.raises(AttributeError):
        finding.start = 1  # type: ignore[misc]
    assert finding == Finding("cpf", 0, 11)


# --- redact -------------------------------------------------------------------------------


def test_redact_replaces_every_kind_exactly() -> None:
    """redact() swaps each finding for its label and leaves the rest of the text intact."""
    text = (
        "CPF 529.982.247-25, CNPJ 11.222.333/0001-81, RG 29.465.327-2, "
        "tel +55 (11) 91234-5678, email joe@x.com.br, cartão 4111 1111 1111 1111, "
        "CEP 01310-100. Valor R$ 1.234,56 em 27/07/2025."
    )
    redacted, findings = redact(text)
    assert redacted == (
        "CPF [CPF], CNPJ [CNPJ], RG [RG], tel [PHONE], email [EMAIL], "
        "cartão [CREDIT_CARD], CEP [CEP]. Valor R$ 1.234,56 em 27/07/2025."
    )
    assert findings == scan(text)
    assert [f.kind for f in findings] == [
        "cpf",
        "cnpj",
        "rg",
        "phone",
        "email",
        "credit_card",
        "cep",
    ]


def test_redact_without_pii_returns_text_unchanged() -> None:
    """Text without PII comes back unchanged with no findings."""
    text = "Resuma o contrato de R$ 1.234,56 assinado em 27/07/2025."
    assert redact(text) == (text, [])


def test_redact_adjacent_findings() -> None:
    """Back-to-back findings are each replaced, keeping the separators between them."""
    assert redact("52998224725 11144477735,joe@x.com")[0] == "[CPF] [CPF],[EMAIL]"


# --- Performance --------------------------------------------------------------------------

HOSTILE = {
    "digits": "1" * 200_000,
    "dots": "." * 200_000,
    "digit-dot": "1." * 100_000,
    "digit-hyphen": "1-" * 100_000,
    "digit-space": "1 " * 100_000,
    "pairs": "11 " * 66_667,
    "at-signs": "@" * 200_000,
    "a-at": "a@" * 100_000,
    "dotted-local": "a." * 100_000 + "@",
    "dotted-domain": "a@" + "b." * 100_000,
    "phones": "(11) " * 40_000,
    "country-codes": "+55 " * 50_000,
    "card-groups": "4111 " * 40_000,
    "parens": "(" * 200_000,
    "rg-keywords": "RG " * 66_667 + "1",
    "cep-keywords": "CEP 0" * 40_000,
    "rg-shapes": "12.345.678-" * 18_182,
    "slashes": "1/" * 100_000,
    "eight-digit-runs": "12345678 " * 22_223,
}


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_input_scans_in_linear_time(name: str) -> None:
    """A 200 KB hostile string (no catastrophic backtracking) scans in well under a second."""
    text = HOSTILE[name]
    assert len(text) >= 190_000
    started = time.perf_counter()
    scan(text)
    redact(text)
    assert time.perf_counter() - started < 1.0


@pytest.mark.parametrize(
    "sentence",
    [
        "Olá! Preciso revisar o contrato 2024/0815 do cliente: saldo de R$ 12.345,67 em "
        "36 parcelas de R$ 498,10 a partir de 05/08/2025, taxa de 1,99% a.m. (CET 27,5% a.a.). "
        "Explique as condições em até três parágrafos. ",
        "2025-07-27 14:30:59,123 INFO [worker-3] request 8f2a done in 123 ms status=200\n",
    ],
)
def test_typical_prompt_scans_fast(sentence: str) -> None:
    """A 2 KB prompt full of numbers scans in far less than a millisecond on average."""
    prompt = (sentence * 30)[:2048]
    scan(prompt)
    runs = 200
    started = time.perf_counter()
    for _ in range(runs):
        scan(prompt)
    assert (time.perf_counter() - started) / runs < 0.5e-3


# --- Properties ---------------------------------------------------------------------------

cpf_bases = st.integers(0, 999_999_999).map(lambda n: f"{n:09d}").filter(lambda b: len(set(b)) > 1)


@PROPERTY
@given(
    base=cpf_bases,
    formatted=st.booleans(),
    before=st.sampled_from(["", " ", "CPF: ", "(", "cliente\n", "nº "]),
    after=st.sampled_from(["", ".", ",", " ", ")", "\n", ". Fim", "; ok"]),
)
def test_property_every_valid_cpf_is_found(
    base: str, formatted: bool, before: str, after: str
) -> None:
    """Every CPF with correct check digits is found with its exact span, in any context."""
    cpf = cpf_with_check_digits(base)
    value = fmt_cpf(cpf) if formatted else cpf
    text = before + value + after
    assert scan(text) == [Finding("cpf", len(before), len(before) + len(value))]


@PROPERTY
@given(base=cpf_bases, position=st.sampled_from([9, 10]), delta=st.integers(1, 9))
def test_property_cpf_with_a_wrong_check_digit_is_not_found(
    base: str, position: int, delta: int
) -> None:
    """Any change to either check digit of a valid CPF makes it not a CPF."""
    digits = list(cpf_with_check_digits(base))
    digits[position] = str((int(digits[position]) + delta) % 10)
    assert "cpf" not in kinds_in(fmt_cpf("".join(digits)))
    assert "cpf" not in kinds_in("".join(digits))


PII_SAMPLES = {
    "cpf": ["529.982.247-25", "11144477735"],
    "cnpj": ["11.222.333/0001-81", "11444777000161", "12.ABC.345/01DE-35"],
    "rg": ["29.465.327-2"],
    "phone": ["+55 (11) 91234-5678", "(21) 3456-7890", "11 91234 5678"],
    "email": ["ana.souza@banco.com.br", "x+y@z.io"],
    "credit_card": ["4111 1111 1111 1111", "3782 822463 10005", "5555555555554444"],
    "cep": ["01310-100", "22.250-040"],
}
pii_items = st.sampled_from([(k, v) for k, vs in PII_SAMPLES.items() for v in vs])
filler = st.sampled_from(["olá", "cliente", "dados:", "e", "-", "(", ")", ",", "R$", "valor", "\n"])
chunks = st.lists(st.one_of(pii_items, filler), max_size=12)


@PROPERTY
@given(chunks=chunks)
def test_property_scan_and_redact_round_trip(chunks: list[tuple[str, str] | str]) -> None:
    """Mixed PII and filler: every item is found exactly, and redaction leaves no PII."""
    text = ""
    expected: list[Finding] = []
    for chunk in chunks:
        if text:
            text += " "
        if isinstance(chunk, tuple):
            kind, value = chunk
            expected.append(Finding(kind, len(text), len(text) + len(value)))
            text += value
        else:
            text += chunk
    assert scan(text) == expected
    redacted, findings = redact(text)
    assert findings == expected
    assert scan(redacted) == []
    assert redacted == " ".join(f"[{c[0].upper()}]" if isinstance(c, tuple) else c for c in chunks)


@PROPERTY
@given(
    text=st.text(
        alphabet=st.sampled_from(list("0123456789 .-/()+@aAxX_çRGCEPrgcep,\n")), max_size=80
    )
)
def test_property_scan_invariants_on_noise(text: str) -> None:
    """On arbitrary noise, findings are in bounds, sorted, disjoint, and gone after redact."""
    found = scan(text)
    assert all(f.kind in KINDS and 0 <= f.start < f.end <= len(text) for f in found)
    assert all(a.end <= b.start for a, b in itertools.pairwise(found))
    redacted, findings = redact(text)
    assert findings == found
    values = {text[f.start : f.end] for f in found}
    assert not any(redacted[f.start : f.end] in values for f in scan(redacted))
