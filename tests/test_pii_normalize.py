"""Tests for common.pii_normalize: what the detector reads, and the map back to the original."""

from __future__ import annotations

import pytest

from common.pii_normalize import normalise


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("５２９.９８２.２４７-２５", "529.982.247-25"),  # full-width digits
        ("٥٢٩.٩٨٢.٢٤٧-٢٥", "529.982.247-25"),  # Arabic-Indic digits
        ("५२९९८२२४७२५", "52998224725"),  # Devanagari digits
        ("529\u200b982\u200d247\u00ad25\ufeff", "52998224725"),  # zero-width, soft hyphen, BOM
        ("\u202e529\u202c", "529"),  # bidi controls
        ("5\u03032\u20e39", "529"),  # combining marks
        ("529\u2013982\u2014247\u221225", "529-982-247-25"),  # Unicode dashes and minus
        ("529\u00a0982\u2009247", "529 982 247"),  # no-break and thin spaces
        ("ana＠example．com", "ana@example.com"),
        ("①②③", "123"),
        ("аna@exаmple.cοm", "ana@example.com"),  # Cyrillic а, Greek ο
        ("tab\tand\nnewline", "tab\tand\nnewline"),
        ("a\x00b\x1bc", "abc"),  # control characters
        ("ação é útil", "ação é útil"),  # characters that normalise to themselves stay
    ],
)
def test_normalised_text(text: str, expected: str) -> None:
    """Digits of any script, invisible characters, dashes, spaces and compatibility forms."""
    assert normalise(text).text == expected


def test_ascii_text_is_returned_as_is() -> None:
    """Printable ASCII is not copied: the same string object comes back, spans unchanged."""
    text = "CPF 529.982.247-25"
    normalised = normalise(text)
    assert normalised.text is text
    assert normalised.span(4, 18) == (4, 18)


def test_spans_map_back_to_the_original_characters() -> None:
    """A span of the normalised text covers exactly the original characters, invisibles inside."""
    text = "x \u200b５\u200d２\u00ad９ y ﬁ 7"
    normalised = normalise(text)
    assert normalised.text == "x 529 y fi 7"
    start = normalised.text.index("529")
    assert normalised.span(start, start + 3) == (text.index("５"), text.index("９") + 1)
    assert normalised.span(len(normalised.text) - 1, len(normalised.text)) == (
        len(text) - 1,
        len(text),
    )
    fi = normalised.text.index("fi")
    assert normalised.span(fi, fi + 1) == normalised.span(fi + 1, fi + 2)  # one ligature


def test_every_position_maps_inside_the_original() -> None:
    """Every normalised position maps to an original position, in non-decreasing order."""
    text = "\u200b" * 3 + "a５\u00adb①c" + "\ufeff" * 2 + "d"
    normalised = normalise(text)
    positions = [normalised.position(i) for i in range(len(normalised.text))]
    assert positions == sorted(positions)
    assert all(0 <= p < len(text) for p in positions)
    assert "".join(text[p] for p in positions) == "a５b①cd"
