"""Check digits and issuer tables of the personal-data detector (pure functions on bytes).

Every check takes the ASCII characters of a match with its punctuation removed (`digits`).
CPF and CNPJ use the Receita Federal mod-11 rules (the alphanumeric CNPJ of IN 2.229/2024
too: a character's value is its ASCII code - 48); the SSP-SP RG a mod-11 check digit
(10 is X); cards the Luhn check plus a known issuer's prefix and length.
"""

from __future__ import annotations

from operator import mul

__all__ = [
    "card_valid",
    "cep_valid",
    "cnpj_valid",
    "cpf_valid",
    "digits",
    "rg_valid",
]

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


def digits(matched: str) -> bytes:
    """The characters of a match without its punctuation, as ASCII bytes."""
    return matched.encode().translate(None, _PUNCTUATION)


def cpf_valid(digits: bytes) -> bool:
    """Whether 11 digits form a CPF: both mod-11 check digits right, not all one digit."""
    if len(digits) != 11 or digits == digits[:1] * 11:
        return False
    v = digits.translate(_VALUES)
    first: int = sum(map(mul, v, _CPF_WEIGHTS_1))
    second: int = sum(map(mul, v, _CPF_WEIGHTS_2))
    return first * 10 % 11 % 10 == v[9] and second * 10 % 11 % 10 == v[10]


def cnpj_valid(chars: bytes) -> bool:
    """Whether 14 characters (digits, or the 12-character alphanumeric root) form a CNPJ."""
    if len(chars) != 14 or chars == chars[:1] * 14:
        return False
    v = chars.translate(_VALUES)
    rest_1: int = sum(map(mul, v, _CNPJ_WEIGHTS_1)) % 11
    rest_2: int = sum(map(mul, v, _CNPJ_WEIGHTS_2)) % 11
    return v[12] == (0 if rest_1 < 2 else 11 - rest_1) and v[13] == (
        0 if rest_2 < 2 else 11 - rest_2
    )


def rg_valid(chars: bytes) -> bool:
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


def card_valid(digits: bytes) -> bool:
    """Whether a digit string is a plausible card: a known issuer's prefix and length, Luhn."""
    size = len(digits)
    for low, high, sizes in _CARD_ISSUERS:
        if size in sizes and low <= digits[: len(low)] <= high:
            return _luhn_valid(digits)
    return False


def cep_valid(digits: bytes) -> bool:
    """Whether a CEP is in range (the lowest is 01000-000)."""
    return not digits.startswith(b"00")
