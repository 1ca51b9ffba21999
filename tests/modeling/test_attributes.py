"""Property and example tests for the attribute text format (``modeling_afmrl/attributes.py``).

The format is read by SFT, extraction, RAR rewards and the demo, often on whatever a model generated,
so the parser must never raise, rendering must be read back exactly, and normalisation must be a
fixed point (normalising twice changes nothing).
"""

from __future__ import annotations

import re

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from modeling_afmrl.attributes import (
    CANONICAL_KEY_ORDER,
    KEY_SYNONYMS,
    MAX_PARSE_CHARS,
    VALUE_SYNONYMS,
    ParsedAttributes,
    normalize_attributes,
    normalize_key,
    normalize_value,
    parse_attributes,
    render_attributes,
)

# Hypothesis budget: enough examples to find real bugs, small enough for a shared 2-core machine.
# (A decorator, not a global profile, so other test modules keep their own settings.)
budget = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

LEGAL_KEY = re.compile(r"[a-z][a-z0-9_]{0,39}")

# Fragments a generator (or a seller) actually produces: keys, synonyms, separators (ASCII and
# full-width), unicode look-alikes, whitespace of every kind.
FRAGMENTS = [
    *CANONICAL_KEY_ORDER,
    *KEY_SYNONYMS,
    "Color",
    "Main Colour",
    "Pattern ",
    *(v for variants in VALUE_SYNONYMS.values() for v in variants),
    "Dark Blue",
    ":",
    ": ",
    ";",
    "; ",
    "\n",
    "\r\n",
    "\t",
    "\u00a0",
    "\u2028",
    "：",
    "；",
    ",",
    ".",
    "-",
    "_",
    "H\u0331",
    "İ",
    "ﬃ",
    "ß",
    "é",
    "😀",
    "500ml",
    "x2",
    "",
]
attribute_like_text = st.lists(
    st.one_of(st.sampled_from(FRAGMENTS), st.text(max_size=8)), max_size=40
).map("".join)
any_text = st.one_of(st.text(), attribute_like_text)

# Keys the format can carry: already-canonical snake_case (``color`` would be rewritten to
# ``colour`` and ``a_`` to ``a``, so those are not fixed points and are excluded here).
legal_keys = st.from_regex(LEGAL_KEY, fullmatch=True).filter(lambda k: normalize_key(k) == k)
# Values already normalised and non-empty.
normalised_values = (
    st.one_of(
        st.text(max_size=60), st.sampled_from([v for vs in VALUE_SYNONYMS.values() for v in vs])
    )
    .map(normalize_value)
    .filter(bool)
)
valid_dicts = st.dictionaries(legal_keys, normalised_values, min_size=1, max_size=12)


def _check_parsed(parsed: object) -> None:
    """Invariants of any parse result, whatever the input."""
    assert isinstance(parsed, ParsedAttributes)
    attrs, valid = parsed
    assert isinstance(valid, bool)
    assert isinstance(attrs, dict)
    for key, value in attrs.items():
        assert LEGAL_KEY.fullmatch(key), key
        assert value and normalize_value(value) == value
    if valid:
        assert attrs, "valid output must carry at least one attribute"


# --- the parser never raises -------------------------------------------------------------------


@budget
@given(any_text)
@example("colour: red; colour: blue")
@example(":::;;;\n\n: : ;")
@example("\ud800: \udfff")  # lone surrogates
def test_parse_never_raises_and_is_consistent(text: str) -> None:
    parsed = parse_attributes(text)
    _check_parsed(parsed)
    # What the parser returns is already normalised: rendering it and parsing again is stable.
    if parsed.attributes:
        again = parse_attributes(render_attributes(parsed.attributes))
        assert again == ParsedAttributes(parsed.attributes, True)


@budget
@given(st.one_of(st.none(), st.integers(), st.floats(), st.binary(), st.lists(st.text())))
def test_parse_non_strings_is_empty_and_invalid(obj: object) -> None:
    assert parse_attributes(obj) == ParsedAttributes({}, False)


@settings(budget, max_examples=40)
@given(any_text.filter(bool), st.integers(min_value=1, max_value=400))
def test_parse_huge_text_is_cut_and_invalid(chunk: str, repeat: int) -> None:
    # Up to 100 kB+ strings (a run-away generation): no raise, and flagged invalid once cut.
    text = (chunk * (100_000 // len(chunk) + 1))[: 100_000 + repeat]
    parsed = parse_attributes(text)
    _check_parsed(parsed)
    assert parsed.valid is False


def test_parse_100kb_of_repeated_pairs() -> None:
    text = "colour: red; " * 8_000  # about 100 kB, the same key over and over
    assert len(text) > 100_000 > MAX_PARSE_CHARS
    assert parse_attributes(text) == ParsedAttributes({"colour": "red"}, False)


# --- render -> parse is the identity on valid dicts --------------------------------------------


@budget
@given(valid_dicts)
def test_render_parse_round_trip(attrs: dict[str, str]) -> None:
    text = render_attributes(attrs)
    assert parse_attributes(text) == ParsedAttributes(attrs, True)
    # Insertion order does not matter: the rendering is canonical.
    assert render_attributes(dict(reversed(list(attrs.items())))) == text


@budget
@given(valid_dicts)
def test_render_puts_canonical_keys_first(attrs: dict[str, str]) -> None:
    keys = [piece.split(": ", 1)[0] for piece in render_attributes(attrs).split("; ")]
    canonical = [k for k in CANONICAL_KEY_ORDER if k in attrs]
    assert keys[: len(canonical)] == canonical
    assert keys[len(canonical) :] == sorted(keys[len(canonical) :])


@budget
@given(
    st.one_of(
        st.from_regex(r"[a-z][a-z0-9_]{39,59}[a-z0-9]", fullmatch=True),  # too long
        st.sampled_from(["größe", "1st_colour", "колір", "colour!"]),  # not ASCII snake_case
    )
)
def test_render_rejects_keys_the_parser_cannot_read(key: str) -> None:
    with pytest.raises(ValueError, match=re.escape(repr(normalize_key(key)))):
        render_attributes({"colour": "red", key: "x"})


# --- normalisation is idempotent ---------------------------------------------------------------


@budget
@given(any_text)
@example("H\u0331")  # lower() + NFKC composes to U+1E96 only on a second pass (fixed in _fold)
@example("\u0130\u0316")  # İ + combining mark: lower() yields i + U+0307, then NFKC reorders
@example("\u1d2c")  # NFKC of a modifier letter is an upper-case "A"
def test_normalize_key_is_idempotent(text: str) -> None:
    once = normalize_key(text)
    assert normalize_key(once) == once


@budget
@given(any_text)
@example("H\u0331")
@example("\u0130\u0316")
@example(" Dark Blue ;. ")
def test_normalize_value_is_idempotent(text: str) -> None:
    once = normalize_value(text)
    assert normalize_value(once) == once
    assert ";" not in once and "\n" not in once
    assert once == once.strip(" ,.")


@budget
@given(st.dictionaries(any_text, any_text, max_size=10))
def test_normalize_attributes_is_idempotent(attrs: dict[str, str]) -> None:
    once = normalize_attributes(attrs)
    assert normalize_attributes(once) == once
    assert all(k and v for k, v in once.items())


# --- examples ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "canonical"),
    [("Dark Blue", "navy"), ("  NAVY   BLUE ", "navy"), ("Gray", "grey"), ("Polka Dot", "dotted")],
)
def test_value_synonyms_map_to_canonical(raw: str, canonical: str) -> None:
    assert normalize_value(raw) == canonical


@pytest.mark.parametrize(
    ("raw", "canonical"),
    [
        ("Color", "colour"),
        ("Main Color", "colour"),
        ("product-type", "category"),
        (" Size ", "size"),
    ],
)
def test_key_synonyms_map_to_canonical(raw: str, canonical: str) -> None:
    assert normalize_key(raw) == canonical


def test_every_value_variant_maps_to_its_canonical_value() -> None:
    for canonical, variants in VALUE_SYNONYMS.items():
        assert normalize_value(canonical) == canonical
        for variant in variants:
            assert normalize_value(variant.title()) == canonical, variant


def test_parse_normalises_keys_and_values() -> None:
    parsed = parse_attributes("Category: T-Shirt\nColor: Dark Blue; Neckline: V Neck")
    assert parsed == ParsedAttributes(
        {"category": "t-shirt", "colour": "navy", "neckline": "v-neck"}, True
    )


def test_repeated_key_is_invalid_and_first_wins() -> None:
    assert parse_attributes("colour: red; size: m; colour: blue") == ParsedAttributes(
        {"colour": "red", "size": "m"}, False
    )
    # A synonym of a key already seen is a repeat too.
    assert parse_attributes("colour: red; Color: blue") == ParsedAttributes(
        {"colour": "red"}, False
    )


@pytest.mark.parametrize(
    "junk",
    ["", "   ", "lorem ipsum dolor sit amet", ";;;\n;", ":", ": red", "colour:", "!!!: ???"],
)
def test_junk_is_empty_and_invalid(junk: str) -> None:
    assert parse_attributes(junk) == ParsedAttributes({}, False)


def test_missing_separator_keeps_the_good_pairs_but_is_invalid() -> None:
    assert parse_attributes("colour red; size: m") == ParsedAttributes({"size": "m"}, False)


def test_render_example() -> None:
    text = render_attributes(
        {"zeta": "1", "Size": "500 ML", "alpha": "x", "Color": "Dark Blue", "category": "Bottle"}
    )
    assert text == "category: bottle; colour: navy; size: 500 ml; alpha: x; zeta: 1"
