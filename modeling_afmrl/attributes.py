"""The attribute text format, defined once and used by the catalogue, SFT, extraction, RAR and the demo.

An attribute string is ``key: value; key: value`` with lower-case snake_case keys and normalised
values, e.g. ``category: t-shirt; colour: navy; neckline: v-neck; count: 2``. The extractor is asked
for exactly this form; :func:`parse_attributes` reads whatever it produced without ever raising and
says whether the text was well formed. BM25 between attribute texts (AGCL's hard-negative weights,
one ``key=value`` term per attribute) and the attribute-agreement rule of its false-negative filter
are defined here too, as pure functions.

This file is shipped as remote code with every checkpoint: standard library only.
"""

from __future__ import annotations

import math
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


def attribute_agreement(a: Mapping[str, str], b: Mapping[str, str]) -> float:
    """Fraction of the keys present in both dicts whose values agree (0.0 when none is shared)."""
    shared = set(a) & set(b)
    if not shared:
        return 0.0
    return sum(a[k] == b[k] for k in shared) / len(shared)


# --------------------------------------------------------------------------------------------
# BM25 between attribute texts (AGCL's hard-negative weights)
# --------------------------------------------------------------------------------------------

#: Okapi BM25 defaults (Robertson & Zaragoza; Lucene uses the same).
BM25_K1 = 1.2
BM25_B = 0.75
#: Joins a key and its value into one BM25 term.
TERM_SEPARATOR = "="


class BM25Statistics(NamedTuple):
    """Collection statistics BM25 needs: document count, document frequency per term, mean length."""

    num_documents: int
    document_frequency: dict[str, int]
    average_length: float


def attribute_terms(attributes: Mapping[str, str] | str | None) -> list[str]:
    """The BM25 terms of one listing's attributes: one ``key=value`` term per attribute.

    A term is the whole normalised pair, so ``colour: navy`` and ``secondary_colour: navy`` are
    different terms and ``colour: navy blue`` is one term (a multi-word value is one fact, not
    several words). Accepts a dict or an attribute string (pairs readable from a malformed string
    are kept); ``None`` and empty input give no term.
    """
    if attributes is None:
        return []
    if isinstance(attributes, Mapping):
        attrs = normalize_attributes(attributes)
    else:
        attrs = parse_attributes(attributes).attributes
    return [f"{k}{TERM_SEPARATOR}{v}" for k, v in attrs.items()]


def bm25_statistics(documents: Iterable[Iterable[str]]) -> BM25Statistics:
    """Statistics of a collection of term lists (a batch, or a whole training corpus)."""
    df: dict[str, int] = {}
    n = total = 0
    for terms in documents:
        terms = list(terms)
        n += 1
        total += len(terms)
        for term in set(terms):
            df[term] = df.get(term, 0) + 1
    return BM25Statistics(n, df, total / n if n else 0.0)


def bm25_idf(term: str, stats: BM25Statistics) -> float:
    """Non-negative BM25 idf ``log(1 + (N - df + 0.5) / (df + 0.5))`` (Lucene's form)."""
    df = stats.document_frequency.get(term, 0)
    return math.log(1.0 + (stats.num_documents - df + 0.5) / (df + 0.5))


def bm25_score(
    query: Iterable[str],
    document: Iterable[str],
    stats: BM25Statistics,
    k1: float = BM25_K1,
    b: float = BM25_B,
) -> float:
    """Okapi BM25 of ``document`` (a term list) for ``query`` (a term list); 0 for an empty side.

    ``sum_t idf(t) * tf(t, d) * (k1 + 1) / (tf(t, d) + k1 * (1 - b + b * |d| / avgdl))`` over the
    query's terms (a repeated query term counts each time).
    """
    document = list(document)
    if not document or stats.average_length <= 0:
        return 0.0
    tf: dict[str, int] = {}
    for term in document:
        tf[term] = tf.get(term, 0) + 1
    norm = k1 * (1.0 - b + b * len(document) / stats.average_length)
    score = 0.0
    for term in query:
        f = tf.get(term, 0)
        if f:
            score += bm25_idf(term, stats) * f * (k1 + 1.0) / (f + norm)
    return score


def bm25_scores(
    queries: Iterable[Iterable[str]],
    documents: Iterable[Iterable[str]],
    stats: BM25Statistics | None = None,
    k1: float = BM25_K1,
    b: float = BM25_B,
) -> list[list[float]]:
    """``scores[i][j] = bm25_score(queries[i], documents[j])``; statistics default to ``documents``'."""
    documents = [list(d) for d in documents]
    stats = bm25_statistics(documents) if stats is None else stats
    return [[bm25_score(q, d, stats, k1, b) for d in documents] for q in map(list, queries)]


def attributes_agree(a: Mapping[str, str], b: Mapping[str, str], min_overlap: float = 0.8) -> bool:
    """AGCL's attribute false-negative rule: do ``a`` and ``b`` describe the same product?

    True when the keys both state cover at least ``min_overlap`` of the keys either states, and
    the two agree on every one of them. Listings with no shared key never agree; two empty
    dicts do not either. The overlap requirement keeps a near-identical sibling (same family, one
    attribute different) from matching just because one side omitted the attribute that differs.
    """
    if not 0.0 <= min_overlap <= 1.0:
        raise ValueError(f"min_overlap must be in [0, 1], got {min_overlap!r}")
    shared = set(a) & set(b)
    if not shared or len(shared) < min_overlap * len(set(a) | set(b)):
        return False
    return all(a[k] == b[k] for k in shared)
