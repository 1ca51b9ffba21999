"""The catalogue plan: which products exist, how they group into families, who sells them, which split.

The plan holds only small integers and strings (a few MB for 100,000 products); images and titles
are computed per listing from ``numpy.random.default_rng([seed, TAG, product, ...])`` so that any
listing can be generated on its own, in any order, in any process.

Families are sampled one after another and a family is redrawn (``attempt`` + 1) when one of its
products would repeat a product already planned, so no two product ids share all attributes.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from afmrl.errors import UserError

from .config import CatalogConfig
from .schema import (
    BRANDS,
    CATEGORIES,
    COLOURS,
    COUNT_WEIGHTS,
    COUNTS,
    FAMILY_AXES,
    FAMILY_SIZE_WEIGHTS,
    FAMILY_SIZES,
    PATTERN_WEIGHTS,
    PATTERNS,
    SHARED_KEYS,
    Category,
    vocabulary,
)

# Stream tags: the second entry of every seed sequence, so that streams never collide.
TAG_FAMILY = 1
TAG_SELLERS = 2
TAG_SELLER_STYLE = 3
TAG_SHOT = 4
TAG_TITLE = 5
TAG_TEACHER = 6
TAG_TEXTURE = 7
TAG_ORDER = 8

SPLITS: tuple[str, ...] = ("train", "validation_query", "validation_gallery", "query", "gallery")
#: Family split codes.
TRAIN, VALIDATION, TEST = 0, 1, 2
SELLERS_PER_PRODUCT: tuple[int, ...] = (2, 3, 4)
SELLERS_PER_PRODUCT_WEIGHTS: tuple[float, ...] = (0.40, 0.35, 0.25)
#: Low-discrepancy split assignment: family f goes by frac((f + 1) / golden ratio), which gives
#: every split its share of families even for tiny catalogues.
_INV_GOLDEN = 0.6180339887498949


@dataclass(frozen=True)
class Family:
    """Products that share every attribute but one: ``axis`` takes ``values`` across the family."""

    index: int
    category: Category
    base: tuple[tuple[str, str], ...]
    axis: str
    values: tuple[str, ...]

    def product_attributes(self, member: int) -> dict[str, str]:
        attrs = dict(self.base)
        attrs[self.axis] = self.values[member]
        return attrs


def _choice(rng: np.random.Generator, items, weights=None):
    return items[int(rng.choice(len(items), p=weights))]


def sample_family(seed: int, index: int, attempt: int) -> Family:
    """Draw family ``index`` (pure function of its arguments)."""
    rng = np.random.default_rng([seed, TAG_FAMILY, index, attempt])
    cat = CATEGORIES[int(rng.integers(len(CATEGORIES)))]
    colours = list(COLOURS)
    colour, secondary = (colours[i] for i in rng.choice(len(colours), 2, replace=False))
    base = {
        "category": cat.name,
        "brand": _choice(rng, BRANDS),
        "colour": colour,
        "secondary_colour": secondary,
        "pattern": _choice(rng, PATTERNS, PATTERN_WEIGHTS),
        "size": _choice(rng, cat.sizes),
        "count": _choice(rng, COUNTS, COUNT_WEIGHTS),
    }
    for shape in cat.shapes:
        base[shape.name] = _choice(rng, shape.values)
    axes, weights = zip(*FAMILY_AXES, strict=True)
    axis = _choice(rng, axes, weights)
    if axis == "shape":
        axis = _choice(rng, cat.shape_keys)
    if axis == "colour":
        pool = [c for c in colours if c != secondary]
    elif axis == "secondary_colour":
        pool = [c for c in colours if c != colour]
    else:
        pool = list(vocabulary(axis, cat.name))
    size = min(_choice(rng, FAMILY_SIZES, FAMILY_SIZE_WEIGHTS), len(pool))
    others = [v for v in pool if v != base[axis]]
    picked = [others[i] for i in rng.choice(len(others), size - 1, replace=False)]
    values = (base[axis], *picked)
    ordered = tuple((k, base[k]) for k in SHARED_KEYS + cat.shape_keys)
    return Family(index, cat, ordered, axis, values)


def _signature(attrs: dict[str, str]) -> bytes:
    text = "\x1f".join(f"{k}={attrs[k]}" for k in sorted(attrs))
    return hashlib.blake2b(text.encode(), digest_size=12).digest()


def listing_id(seed: int, product: int, seller: int) -> str:
    """An opaque id: it reveals neither the product nor the seller (train rows stay unlinked)."""
    digest = hashlib.blake2b(f"afmrl-listing:{seed}:{product}:{seller}".encode(), digest_size=8)
    return digest.hexdigest()


def product_id(product: int) -> str:
    return f"p{product:07d}"


def family_id(family: int) -> str:
    return f"f{family:06d}"


class CatalogPlan:
    """Families, products, sellers and split membership for one :class:`CatalogConfig`."""

    def __init__(self, config: CatalogConfig):
        self.config = config.validate()
        seed, n = config.seed, config.products
        self.families: list[Family] = []
        starts = [0]
        seen: set[bytes] = set()
        while starts[-1] < n:
            index, attempt = len(self.families), 0
            while True:
                family = sample_family(seed, index, attempt)
                take = min(len(family.values), n - starts[-1])
                sigs = [_signature(family.product_attributes(m)) for m in range(take)]
                if not seen.intersection(sigs):
                    break
                attempt += 1
            if take < len(family.values):
                family = Family(
                    index, family.category, family.base, family.axis, family.values[:take]
                )
            seen.update(sigs)
            self.families.append(family)
            starts.append(starts[-1] + take)
        self.family_start = np.asarray(starts, dtype=np.int64)
        self.product_family = np.repeat(
            np.arange(len(self.families), dtype=np.int64), np.diff(self.family_start)
        )
        u = np.modf((np.arange(len(self.families)) + 1) * _INV_GOLDEN)[0]
        self.family_split = np.where(
            u < config.test_fraction,
            TEST,
            np.where(u < config.test_fraction + config.validation_fraction, VALIDATION, TRAIN),
        ).astype(np.int8)
        for code, name in ((TRAIN, "train"), (VALIDATION, "validation"), (TEST, "test")):
            if not (self.family_split == code).any():
                raise UserError(
                    f"products={n} is too small: the {name} split got no family; use more products"
                )
        # Sellers: a pool that grows with the catalogue; each product is sold by 2-4 of them.
        self.n_sellers = max(12, n // 20)
        self.product_sellers = np.full((n, max(SELLERS_PER_PRODUCT)), -1, dtype=np.int32)
        self.product_query_slot = np.zeros(n, dtype=np.int8)
        for p in range(n):
            rng = np.random.default_rng([seed, TAG_SELLERS, p])
            k = _choice(rng, SELLERS_PER_PRODUCT, SELLERS_PER_PRODUCT_WEIGHTS)
            self.product_sellers[p, :k] = rng.choice(self.n_sellers, k, replace=False)
            self.product_query_slot[p] = rng.integers(k)
        self.product_n_sellers = (self.product_sellers >= 0).sum(axis=1)

    # -- products -----------------------------------------------------------------------------
    def family_of(self, product: int) -> Family:
        return self.families[int(self.product_family[product])]

    def product_attributes(self, product: int) -> dict[str, str]:
        """The noise-free attributes of ``product`` (gold)."""
        family = self.family_of(product)
        return family.product_attributes(product - int(self.family_start[family.index]))

    def family_products(self, family: int) -> range:
        return range(int(self.family_start[family]), int(self.family_start[family + 1]))

    # -- splits -------------------------------------------------------------------------------
    def split_products(self, code: int) -> np.ndarray:
        return np.flatnonzero(self.family_split[self.product_family] == code)

    @cached_property
    def _split_listings(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        out = {}
        slots = np.arange(self.product_sellers.shape[1])
        for i, name in enumerate(SPLITS):
            code = {"train": TRAIN, "validation": VALIDATION}.get(name.split("_")[0], TEST)
            products = self.split_products(code)
            if name == "train":
                mask = slots[None, :] < self.product_n_sellers[products, None]
            else:
                is_query = slots[None, :] == self.product_query_slot[products, None]
                if name.endswith("query"):
                    mask = is_query
                else:
                    mask = (slots[None, :] < self.product_n_sellers[products, None]) & ~is_query
            rows, cols = np.nonzero(mask)
            pairs = np.stack([products[rows], cols], axis=1).astype(np.int64)
            # Rows are shuffled so that neighbouring rows say nothing about shared products.
            order = np.random.default_rng([self.config.seed, TAG_ORDER, i]).permutation(len(pairs))
            out[name] = (pairs[order, 0], pairs[order, 1])
        return out

    def split_listings(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        """``(product, seller_slot)`` of every row of ``split``, in row order."""
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
        return self._split_listings[split]

    def train_positive(self, product: int, slot: int) -> tuple[int, int]:
        """``(seller slot, view)`` of the second view of the train row of ``(product, slot)``.

        ``cross_seller``: the next seller of the product, cyclically, its main photo and title
        (view 0), i.e. another train row's listing (every product has at least two sellers);
        ``same_seller``: the same listing's second photo and title (view 1).
        """
        if self.config.train_pairs == "same_seller":
            return slot, 1
        return (slot + 1) % int(self.product_n_sellers[product]), 0

    def seller(self, product: int, slot: int) -> int:
        seller = int(self.product_sellers[product, slot])
        if seller < 0:
            raise IndexError(f"product {product} has no seller slot {slot}")
        return seller

    def summary(self) -> dict:
        return {
            "products": self.config.products,
            "families": len(self.families),
            "sellers": self.n_sellers,
            "listings": int(self.product_n_sellers.sum()),
        }


_PLANS: dict[CatalogConfig, CatalogPlan] = {}


def get_plan(config: CatalogConfig) -> CatalogPlan:
    """The plan for ``config``, built once per process (worker processes forked after the first
    build inherit it)."""
    plan = _PLANS.get(config)
    if plan is None:
        _PLANS.clear()
        plan = _PLANS[config] = CatalogPlan(config)
    return plan
