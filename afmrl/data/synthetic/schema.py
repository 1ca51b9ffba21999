"""What the synthetic catalogue is made of: categories, attribute vocabularies and their title words.

Every value here is the *canonical* attribute value (what ``gold_attributes`` holds, already in
:func:`modeling_afmrl.attributes.normalize_value` form). Titles may spell colours, patterns and
shape values differently, but only with the variants listed in
:data:`modeling_afmrl.attributes.VALUE_SYNONYMS`, so normalisation maps them back.
"""

from __future__ import annotations

from dataclasses import dataclass

from modeling_afmrl.attributes import CANONICAL_KEY_ORDER, normalize_value

#: Canonical colour name -> RGB used to paint it (13 colours, all with title synonyms).
COLOURS: dict[str, tuple[int, int, int]] = {
    "navy": (30, 42, 96),
    "grey": (132, 134, 138),
    "red": (198, 32, 42),
    "green": (40, 128, 62),
    "yellow": (238, 204, 48),
    "orange": (238, 128, 34),
    "purple": (118, 60, 152),
    "pink": (240, 152, 184),
    "black": (26, 26, 28),
    "white": (244, 244, 240),
    "sky blue": (120, 182, 234),
    "brown": (118, 74, 40),
    "teal": (22, 138, 138),
}

PATTERNS: tuple[str, ...] = ("plain", "striped", "dotted", "checked", "camouflage")
#: Plain is the most common print, as in real catalogues.
PATTERN_WEIGHTS: tuple[float, ...] = (0.40, 0.16, 0.16, 0.14, 0.14)

#: Invented brand words printed on the products (never in titles). Several pairs differ by one
#: letter (KORVO / KARVO), as knock-offs and sub-brands do.
BRANDS: tuple[str, ...] = (
    "korvo", "karvo", "zenda", "zendo", "lumix", "lunix", "brava", "bravo", "tekko", "tikko",
    "nuvia", "novia", "orbin", "orlin", "pyxo", "ryxo", "sorel", "sorea", "vanto", "vento",
    "quill", "quell", "helio", "helix", "miko", "mako", "dova", "duva", "axel", "axle",
    "fenna", "ginto", "jolla", "kaido", "loomi", "marvo", "nesta", "oxbo", "pilar", "roxa",
)  # fmt: skip

COUNTS: tuple[str, ...] = ("1", "2", "3")
COUNT_WEIGHTS: tuple[float, ...] = (0.6, 0.25, 0.15)

#: Keys shared by every category, in the order titles and attribute strings list them.
SHARED_KEYS: tuple[str, ...] = CANONICAL_KEY_ORDER


@dataclass(frozen=True)
class ShapeKey:
    """A category-specific, visible shape attribute and how titles phrase each value."""

    name: str
    values: tuple[str, ...]
    #: value -> title phrase (default: the value itself; VALUE_SYNONYMS variants are added later).
    phrases: tuple[tuple[str, str], ...] = ()

    def phrase(self, value: str) -> str:
        return dict(self.phrases).get(value, value)


@dataclass(frozen=True)
class Category:
    """One product category: its shape attributes, its sizes and the words sellers use for it."""

    name: str
    shapes: tuple[ShapeKey, ...]
    sizes: tuple[str, ...]
    #: How a size value is written in a title: "apparel", "ml", "eu", "litre", "cm", "inch".
    size_kind: str
    #: The part painted in the secondary colour, as titles name it ("with red trim").
    part: str
    #: Noun phrases a title uses for the category (each contains the category word).
    nouns: tuple[str, ...]
    #: Category-specific promotional fluff.
    fluff: tuple[str, ...]

    @property
    def shape_keys(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.shapes)

    def shape(self, key: str) -> ShapeKey:
        for s in self.shapes:
            if s.name == key:
                return s
        raise KeyError(key)


CATEGORIES: tuple[Category, ...] = (
    Category(
        "t-shirt",
        (
            ShapeKey("neckline", ("crew neck", "v-neck", "polo collar")),
            ShapeKey("sleeve", ("short sleeve", "long sleeve", "sleeveless")),
        ),
        ("s", "m", "l", "xl"),
        "apparel",
        "trim",
        ("t-shirt", "cotton t-shirt", "t-shirt top", "unisex t-shirt"),
        ("breathable", "100% cotton", "regular fit", "summer"),
    ),
    Category(
        "mug",
        (
            ShapeKey(
                "handle",
                ("round", "square", "none"),
                (("round", "round handle"), ("square", "square handle"), ("none", "no handle")),
            ),
            ShapeKey("body", ("straight", "tapered", "barrel")),
        ),
        ("250ml", "350ml", "450ml"),
        "ml",
        "rim",
        ("mug", "ceramic mug", "coffee mug", "tea mug"),
        ("dishwasher safe", "microwave safe", "gift idea"),
    ),
    Category(
        "bottle",
        (
            ShapeKey("lid", ("screw cap", "flip top", "sport spout")),
            ShapeKey("body", ("slim", "wide", "curved")),
        ),
        ("500ml", "750ml", "1000ml"),
        "ml",
        "lid",
        ("bottle", "water bottle", "sports bottle", "drinking bottle"),
        ("leak proof", "bpa free", "reusable"),
    ),
    Category(
        "sneaker",
        (
            ShapeKey(
                "closure",
                ("laces", "velcro", "slip-on"),
                (("laces", "lace-up"), ("velcro", "velcro strap"), ("slip-on", "slip-on")),
            ),
            ShapeKey("cut", ("low top", "mid top", "high top")),
        ),
        ("eu 38", "eu 39", "eu 40", "eu 41", "eu 42", "eu 43", "eu 44", "eu 45"),
        "eu",
        "sole",
        ("sneaker", "sneakers", "running sneaker", "casual sneaker"),
        ("lightweight", "non-slip", "breathable", "unisex"),
    ),
    Category(
        "backpack",
        (
            ShapeKey(
                "pocket",
                ("none", "single", "double"),
                (
                    ("none", "no front pocket"),
                    ("single", "front pocket"),
                    ("double", "double front pocket"),
                ),
            ),
            ShapeKey(
                "closure",
                ("zip", "flap", "roll top"),
                (("zip", "zip top"), ("flap", "flap top"), ("roll top", "roll top")),
            ),
        ),
        ("15l", "20l", "25l", "30l"),
        "litre",
        "straps",
        ("backpack", "travel backpack", "school backpack", "laptop backpack"),
        ("waterproof", "large capacity", "anti-theft"),
    ),
    Category(
        "cap",
        (
            ShapeKey(
                "brim", ("curved", "flat"), (("curved", "curved brim"), ("flat", "flat brim"))
            ),
            ShapeKey("crown", ("high", "low"), (("high", "high crown"), ("low", "low profile"))),
        ),
        ("54cm", "56cm", "58cm", "60cm"),
        "cm",
        "brim",
        ("cap", "baseball cap", "sports cap", "snapback cap"),
        ("adjustable", "sun protection", "unisex"),
    ),
    Category(
        "phone case",
        (
            ShapeKey("camera", ("single lens", "dual lens", "triple lens")),
            ShapeKey(
                "corners",
                ("rounded", "square"),
                (("rounded", "rounded corners"), ("square", "square corners")),
            ),
        ),
        ("5.8in", "6.1in", "6.7in"),
        "inch",
        "bumper",
        ("phone case", "phone cover case", "slim phone case", "protective phone case"),
        ("shockproof", "anti-scratch", "slim fit"),
    ),
    Category(
        "lamp",
        (
            ShapeKey(
                "shade",
                ("cone", "drum", "dome"),
                (("cone", "cone shade"), ("drum", "drum shade"), ("dome", "dome shade")),
            ),
            ShapeKey(
                "base", ("round", "square"), (("round", "round base"), ("square", "square base"))
            ),
        ),
        ("30cm", "40cm", "50cm"),
        "cm",
        "base",
        ("lamp", "desk lamp", "table lamp", "bedside lamp"),
        ("led", "energy saving", "modern"),
    ),
)

CATEGORY_BY_NAME: dict[str, Category] = {c.name: c for c in CATEGORIES}

#: Axes a family can vary, with their weights. "shape" means one of the category's shape keys.
FAMILY_AXES: tuple[tuple[str, float], ...] = (
    ("colour", 0.18),
    ("secondary_colour", 0.10),
    ("pattern", 0.12),
    ("brand", 0.14),
    ("size", 0.12),
    ("count", 0.10),
    ("shape", 0.24),
)

#: Family sizes (products per family) and how often each occurs.
FAMILY_SIZES: tuple[int, ...] = (2, 3, 4)
FAMILY_SIZE_WEIGHTS: tuple[float, ...] = (0.45, 0.35, 0.20)


def attribute_keys(category: str) -> tuple[str, ...]:
    """Every key a product of ``category`` has: the shared keys then its shape keys."""
    return SHARED_KEYS + CATEGORY_BY_NAME[category].shape_keys


def vocabulary(key: str, category: str) -> tuple[str, ...]:
    """Every canonical value ``key`` can take for a product of ``category``."""
    cat = CATEGORY_BY_NAME[category]
    if key == "category":
        return tuple(c.name for c in CATEGORIES)
    if key == "brand":
        return BRANDS
    if key in ("colour", "secondary_colour"):
        return tuple(COLOURS)
    if key == "pattern":
        return PATTERNS
    if key == "size":
        return cat.sizes
    if key == "count":
        return COUNTS
    return cat.shape(key).values


def schema_summary() -> dict:
    """The vocabularies as plain JSON (written next to the dataset for scorers and cards)."""
    return {
        "shared_keys": list(SHARED_KEYS),
        "colours": list(COLOURS),
        "patterns": list(PATTERNS),
        "brands": list(BRANDS),
        "counts": list(COUNTS),
        "categories": {
            c.name: {
                "shapes": {s.name: list(s.values) for s in c.shapes},
                "sizes": list(c.sizes),
            }
            for c in CATEGORIES
        },
    }


def _check_canonical() -> None:
    """Every vocabulary value must already be in normalised form (so gold == normalised gold)."""
    for cat in CATEGORIES:
        for key in attribute_keys(cat.name):
            for value in vocabulary(key, cat.name):
                assert normalize_value(value) == value, (key, value)


_check_canonical()
