"""Seller titles: each seller writes the same product differently.

A :class:`TitleStyle` fixes a seller's habits: slot order, separator, how often they use a synonym
(``dark blue`` for navy, only from :data:`modeling_afmrl.attributes.VALUE_SYNONYMS`, so normalising
the title's words maps back to the canonical value), which attributes they tend to leave out, their
promotional words and their capitalisation.

Titles never name the brand, the print pattern or the pack count: those are visible only in the
photo. The size is only in the title, and a minority of titles omit it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from modeling_afmrl.attributes import VALUE_SYNONYMS

from .schema import CATEGORY_BY_NAME

SLOTS: tuple[str, ...] = ("colour", "shape", "category", "secondary", "size")
ORDERS: tuple[tuple[str, ...], ...] = (
    ("colour", "shape", "category", "secondary", "size"),
    ("category", "colour", "shape", "size", "secondary"),
    ("shape", "colour", "category", "size", "secondary"),
    ("size", "colour", "category", "shape", "secondary"),
    ("category", "size", "colour", "secondary", "shape"),
    ("colour", "category", "shape", "secondary", "size"),
)
SEPARATORS: tuple[str, ...] = (" ", " ", " - ", " | ", ", ")
PROMO_WORDS: tuple[str, ...] = (
    "NEW", "Hot Sale", "Free Shipping", "2026", "Best Seller", "Top Quality", "Limited Offer",
    "Premium", "Trendy", "Fast Delivery", "Original", "Sale", "High Quality", "Gift",
)  # fmt: skip
CASES: tuple[str, ...] = ("title", "lower", "upper", "sentence")
SIZE_FORMS: dict[str, tuple[str, ...]] = {
    "apparel": ("size {U}", "{U}", "sz {U}", "({U})"),
    "ml": ("{n}ml", "{n} ml", "{n}ML", "{n} mL"),
    "eu": ("EU {n}", "EU{n}", "size {n}", "eu size {n}"),
    "litre": ("{n}L", "{n} l", "{n} litre", "{n} liters"),
    "cm": ("{n}cm", "{n} cm", "{n} CM"),
    "inch": ("{n}in", "{n} inch", '{n}"', "{n}-inch"),
}
_SIZE_UNITS = ("ml", "l", "cm", "in")


@dataclass(frozen=True)
class TitleStyle:
    """One seller's title habits."""

    orders: tuple[tuple[str, ...], ...]
    separator: str
    synonym_rate: float
    #: slot or shape key -> probability of leaving it out of a title.
    omit: tuple[tuple[str, float], ...]
    promo: tuple[str, ...]
    promo_place: str
    fluff_rate: float
    case: str
    size_form: int


def sample_title_style(rng: np.random.Generator) -> TitleStyle:
    """A seller's title habits, drawn once per seller."""
    first = int(rng.integers(len(ORDERS)))
    second = int(rng.integers(len(ORDERS)))
    size_omit = float(rng.uniform(0.0, 0.05) if rng.random() < 0.7 else rng.uniform(0.15, 0.45))
    n_promo = int(rng.choice(4, p=[0.3, 0.3, 0.25, 0.15]))
    promo = tuple(PROMO_WORDS[i] for i in rng.choice(len(PROMO_WORDS), n_promo, replace=False))
    return TitleStyle(
        orders=(ORDERS[first], ORDERS[second]),
        separator=SEPARATORS[int(rng.integers(len(SEPARATORS)))],
        synonym_rate=float(rng.uniform(0.0, 0.8)),
        omit=(
            ("colour", float(rng.uniform(0.0, 0.12))),
            ("secondary", float(rng.uniform(0.2, 0.7))),
            ("shape", float(rng.uniform(0.1, 0.5))),
            ("size", size_omit),
        ),
        promo=promo,
        promo_place=("prefix", "suffix")[int(rng.integers(2))],
        fluff_rate=float(rng.uniform(0.0, 0.5)),
        case=CASES[int(rng.integers(len(CASES)))],
        size_form=int(rng.integers(4)),
    )


def _synonym(value: str, rate: float, rng: np.random.Generator) -> str:
    variants = VALUE_SYNONYMS.get(value, ())
    if variants and rng.random() < rate:
        return variants[int(rng.integers(len(variants)))]
    return value


def size_phrase(value: str, kind: str, form: int) -> str:
    """``value`` (canonical, e.g. ``500ml``, ``eu 42``, ``m``) written in size form ``form``."""
    forms = SIZE_FORMS[kind]
    template = forms[form % len(forms)]
    if kind == "apparel":
        return template.format(U=value.upper())
    number = value.removeprefix("eu ")
    for unit in _SIZE_UNITS:
        if (
            kind != "eu"
            and number.endswith(unit)
            and number[: -len(unit)].replace(".", "").isdigit()
        ):
            number = number[: -len(unit)]
            break
    return template.format(n=number)


def _apply_case(text: str, case: str) -> str:
    if case == "lower":
        return text.lower()
    if case == "upper":
        return text.upper()
    if case == "sentence":
        return text[:1].upper() + text[1:]
    return " ".join(w[:1].upper() + w[1:] for w in text.split(" "))


def make_title(
    attrs: Mapping[str, str], style: TitleStyle, rng: np.random.Generator
) -> tuple[str, frozenset[str]]:
    """One title for a product in a seller's style; also returns the attribute keys it mentions."""
    cat = CATEGORY_BY_NAME[attrs["category"]]
    omit = dict(style.omit)
    mentioned = {"category"}
    pieces: dict[str, str] = {"category": cat.nouns[int(rng.integers(len(cat.nouns)))]}
    if rng.random() >= omit["colour"]:
        pieces["colour"] = _synonym(attrs["colour"], style.synonym_rate, rng)
        mentioned.add("colour")
    if rng.random() >= omit["secondary"]:
        sec = _synonym(attrs["secondary_colour"], style.synonym_rate, rng)
        pieces["secondary"] = (
            f"with {sec} {cat.part}" if rng.random() < 0.7 else f"{sec} {cat.part}"
        )
        mentioned.add("secondary_colour")
    shapes = []
    for shape in cat.shapes:
        if rng.random() >= omit["shape"]:
            shapes.append(_synonym(shape.phrase(attrs[shape.name]), style.synonym_rate, rng))
            mentioned.add(shape.name)
    if shapes:
        pieces["shape"] = " ".join(shapes)
    if rng.random() >= omit["size"]:
        form = style.size_form if rng.random() < 0.8 else int(rng.integers(4))
        pieces["size"] = size_phrase(attrs["size"], cat.size_kind, form)
        mentioned.add("size")
    order = style.orders[0] if rng.random() < 0.8 else style.orders[1]
    body = style.separator.join(pieces[slot] for slot in order if slot in pieces)
    if rng.random() < style.fluff_rate:
        body = f"{body}{style.separator}{cat.fluff[int(rng.integers(len(cat.fluff)))]}"
    body = _apply_case(body, style.case)
    if style.promo:
        k = int(rng.integers(1, len(style.promo) + 1))
        words = [style.promo[i] for i in rng.choice(len(style.promo), k, replace=False)]
        promo = " ".join(words)
        body = f"{promo} {body}" if style.promo_place == "prefix" else f"{body} {promo}"
    return body, frozenset(mentioned)
