"""The attribute text format, defined once and used by the catalogue, SFT, extraction, RAR and the demo.

An attribute string is ``key: value; key: value`` with lower-case snake_case keys and normalised
values, e.g. ``category: t-shirt; colour: navy; neckline: v-neck; count: 2``. The extractor is asked
for exactly this form; :func:`parse_attributes` reads whatever it produced without ever raising and
says whether the text was well formed, and :func:`canonical_attribute_text` is the one policy for
what of a generated or given attribute text enters an embedding, a loss or a dataset column.

This file is shipped as remote code with every checkpoint: standard library only, and only what a
checkpoint needs at load time (training-only maths such as BM25 lives in ``trainers``).
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Mapping
from typing import NamedTuple

#: Bumped whenever the rendered form or the prompt changes; stored in ``AFMRLConfig``.
ATTRIBUTE_FORMAT_VERSION = "afmrl-attributes-v1"

PAIR_SEPARATOR = "; "
KEY_VALUE_SEPARATOR = ": "
#: Longest text the parser looks at; longer generations are cut and flagged invalid.
MAX_PARSE_CHARS = 8192

#: The order keys are rendered in when no order is given (unknown keys follow, sorted).
CANONICAL_KEY_ORDER: tuple[str, ...] = (
    "category",
    "brand",
    "colour",
    "secondary_colour",
    "pattern",
    "size",
    "count",
)

#: Key spellings a teacher or a user may write, mapped to the canonical key.
KEY_SYNONYMS: dict[str, str] = {
    "color": "colour",
    "main_colour": "colour",
    "main_color": "colour",
    "secondary_color": "secondary_colour",
    "accent_colour": "secondary_colour",
    "accent_color": "secondary_colour",
    "brand_name": "brand",
    "printed_text": "brand",
    "pack": "count",
    "pack_count": "count",
    "quantity": "count",
    "capacity": "size",
    "type": "category",
    "product_type": "category",
}

#: Canonical value -> the other ways sellers write it. The catalogue's titles draw from these lists;
#: normalisation maps every variant back to the canonical value.
VALUE_SYNONYMS: dict[str, tuple[str, ...]] = {
    "navy": ("dark blue", "navy blue", "midnight blue"),
    "grey": ("gray", "charcoal grey", "ash"),
    "red": ("scarlet", "crimson"),
    "green": ("forest green", "emerald"),
    "yellow": ("mustard", "lemon"),
    "orange": ("tangerine", "burnt orange"),
    "purple": ("violet", "plum"),
    "pink": ("rose", "blush"),
    "black": ("jet black", "onyx"),
    "white": ("off white", "ivory"),
    "sky blue": ("light blue", "baby blue"),
    "brown": ("chocolate", "tan"),
    "teal": ("turquoise", "petrol"),
    "striped": ("stripes", "stripe", "pinstripe"),
    "dotted": ("polka dot", "dots", "spotted"),
    "checked": ("check", "plaid", "gingham"),
    "plain": ("solid", "solid colour", "solid color"),
    "camouflage": ("camo",),
    "v-neck": ("v neck", "vneck"),
    "crew neck": ("crewneck", "round neck"),
    "long sleeve": ("long sleeved", "long-sleeve"),
    "short sleeve": ("short sleeved", "short-sleeve"),
}

_VALUE_CANONICAL: dict[str, str] = {
    variant: canonical for canonical, variants in VALUE_SYNONYMS.items() for variant in variants
}
_KEY_RE = re.compile(r"[a-z][a-z0-9_]{0,39}")
_SPACES = re.compile(r"\s+")
_KEY_JUNK = re.compile(r"[\s\-]+")
_SPLIT_PAIRS = re.compile(r"[;\n]")

#: The instruction the extractor sees beside the product photo (SFT, extraction, RAR, demo).
EXTRACTOR_PROMPT = (
    "List the key attributes of this product as 'key: value; key: value' "
    "(category first, then brand, colour, secondary_colour, pattern, size, count and "
    "shape details). Title: {title}"
)


class ParsedAttributes(NamedTuple):
    """What :func:`parse_attributes` returns: the attributes read and whether the text was well formed."""

    attributes: dict[str, str]
    valid: bool


def _fold(text: str) -> str:
    """NFKC + lower case, repeated to a fixed point so that normalising twice changes nothing.

    One pass is not enough: lower-casing can create a sequence that NFKC composes further
    ("H" + U+0331 -> "h" + U+0331 -> U+1E96), and NFKC can produce upper case (U+1D2C -> "A").
    """
    for _ in range(4):
        folded = unicodedata.normalize("NFKC", text).lower()
        if folded == text:
            break
        text = folded
    return text


def normalize_key(key: str) -> str:
    """Canonical form of a key: NFKC, lower case, snake_case, synonyms resolved (idempotent)."""
    key = _fold(str(key)).strip()
    key = _KEY_JUNK.sub("_", key).strip("_")
    return KEY_SYNONYMS.get(key, key)


def normalize_value(value: str) -> str:
    """Canonical form of a value: NFKC, lower case, single spaces, synonyms resolved (idempotent).

    Separators that would break the format (``;`` and new lines) become commas.
    """
    value = _fold(str(value))
    value = _SPLIT_PAIRS.sub(",", value)
    value = _SPACES.sub(" ", value).strip(" ,.")
    return _VALUE_CANONICAL.get(value, value)


def normalize_attributes(attributes: Mapping[str, str]) -> dict[str, str]:
    """Normalise every key and value; drops empty values; the first of two colliding keys wins."""
    out: dict[str, str] = {}
    for key, value in attributes.items():
        k, v = normalize_key(key), normalize_value(value)
        if k and v and k not in out:
            out[k] = v
    return out


def render_attributes(
    attributes: Mapping[str, str], key_order: Iterable[str] = CANONICAL_KEY_ORDER
) -> str:
    """Render a dict as ``key: value; key: value`` (normalised; canonical keys first, others sorted).

    Raises ``ValueError`` for a key that :func:`parse_attributes` could not read back (after
    normalisation it must match ``[a-z][a-z0-9_]{0,39}``), so rendered text always parses.
    """
    attrs = normalize_attributes(attributes)
    for key in attrs:
        if not _KEY_RE.fullmatch(key):
            raise ValueError(
                f"attribute key {key!r} cannot be rendered: keys must be ASCII snake_case "
                "matching [a-z][a-z0-9_]{0,39} after normalisation"
            )
    order = [k for k in key_order if k in attrs]
    order += sorted(k for k in attrs if k not in order)
    return PAIR_SEPARATOR.join(f"{k}{KEY_VALUE_SEPARATOR}{attrs[k]}" for k in order)


def parse_attributes(text: object) -> ParsedAttributes:
    """Read an attribute string; never raises.

    Every ``key: value`` piece with a legal key is kept (first occurrence of a repeated key wins).
    ``valid`` is True only when the text is non-empty, every piece is a legal pair, no key repeats
    and nothing was cut; a malformed generation yields whatever pairs could be read (often none).
    """
    if not isinstance(text, str):
        return ParsedAttributes({}, False)
    valid = len(text) <= MAX_PARSE_CHARS
    text = text[:MAX_PARSE_CHARS]
    attrs: dict[str, str] = {}
    for piece in _SPLIT_PAIRS.split(text):
        piece = piece.strip()
        if not piece:
            continue
        key, sep, value = piece.partition(":")
        key, value = normalize_key(key), normalize_value(value)
        if not sep or not value or not _KEY_RE.fullmatch(key) or key in attrs:
            valid = False
            continue
        attrs[key] = value
    return ParsedAttributes(attrs, valid and bool(attrs))


def extractor_prompt(title: str) -> str:
    """The text half of the extractor's input for one listing."""
    title = _SPACES.sub(" ", str(title or "")).strip()
    return EXTRACTOR_PROMPT.format(title=title)


def extractor_messages(title: str) -> list[dict]:
    """The extractor's chat turn: one image block then the prompt (TRL / processor chat format)."""
    return [
        {
            "role": "user",
            "content": [{"type": "image"}, {"type": "text", "text": extractor_prompt(title)}],
        }
    ]


def canonical_attribute_text(attributes: Mapping[str, str] | str | None) -> str:
    """The attribute text that enters an embedding, a loss or a column, for any input.

    The one policy for malformed output, used by the processor, attribute generation for a split
    (``afmrl extract``, evaluation, indexing, the demo) and training: a dict or a well-formed string
    is rendered canonically (normalised keys and values, canonical key order); a malformed string,
    an empty one or ``None`` gives ``""``, so nothing is appended to the listing text and garbage
    never enters an embedding. Raises ``ValueError`` for a dict with a key that cannot be rendered.
    """
    if attributes is None:
        return ""
    if isinstance(attributes, Mapping):
        return render_attributes(attributes)
    if not isinstance(attributes, str):
        raise TypeError(
            f"attributes must be a dict, an attribute string or None, got {type(attributes).__name__}"
        )
    parsed = parse_attributes(attributes)
    return render_attributes(parsed.attributes) if parsed.valid else ""
