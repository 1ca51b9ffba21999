"""One listing = one product sold by one seller; one view = one photo + one title of it.

Every view is a pure function of ``(seed, product, seller, view)``: its random streams are
``default_rng([seed, TAG, product, seller, view])``, so rows can be generated in any order, in any
process, and the preview redraws exactly the bytes stored in the dataset.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from modeling_afmrl.attributes import render_attributes

from .plan import (
    TAG_SELLER_STYLE,
    TAG_SHOT,
    TAG_TEACHER,
    TAG_TEXTURE,
    TAG_TITLE,
    CatalogPlan,
)
from .render import PhotoStyle, encode_jpeg, jitter, render_photo, sample_seller_style
from .teacher import teacher_attributes
from .titles import TitleStyle, make_title, sample_title_style

_SHOP_HEADS = (
    "best", "top", "mega", "super", "daily", "smart", "happy", "prime", "urban", "value",
    "lucky", "star", "sunny", "green", "blue", "royal", "epic", "fresh",
)  # fmt: skip
_SHOP_TAILS = (
    "deals",
    "mart",
    "store",
    "shop",
    "outlet",
    "bazaar",
    "goods",
    "market",
    "buy",
    "hub",
)


@dataclass(frozen=True)
class Seller:
    """A shop: its name (watermarks), photo studio and title habits."""

    index: int
    name: str
    photo: PhotoStyle
    title: TitleStyle


@lru_cache(maxsize=16384)
def seller(seed: int, index: int) -> Seller:
    rng = np.random.default_rng([seed, TAG_SELLER_STYLE, index])
    name = (
        _SHOP_HEADS[int(rng.integers(len(_SHOP_HEADS)))]
        + _SHOP_TAILS[int(rng.integers(len(_SHOP_TAILS)))]
    )
    if rng.random() < 0.5:
        name += str(int(rng.integers(1, 100)))
    return Seller(index, name, sample_seller_style(rng, name), sample_title_style(rng))


@dataclass(frozen=True)
class View:
    """One photo (JPEG bytes) and one title of a listing, and the keys the title mentions."""

    jpeg: bytes
    title: str
    mentioned: frozenset[str]


def render_view(plan: CatalogPlan, product: int, slot: int, view: int) -> View:
    """Photo and title number ``view`` of the listing of ``product`` by its ``slot``-th seller."""
    cfg = plan.config
    shop = seller(cfg.seed, plan.seller(product, slot))
    attrs = plan.product_attributes(product)
    shot_rng = np.random.default_rng([cfg.seed, TAG_SHOT, product, shop.index, view])
    style = jitter(shop.photo, shot_rng)
    texture_seed = (cfg.seed, TAG_TEXTURE, product)
    img = render_photo(attrs, style, texture_seed, cfg.image_size, shot_rng)
    title_rng = np.random.default_rng([cfg.seed, TAG_TITLE, product, shop.index, view])
    title, mentioned = make_title(attrs, shop.title, title_rng)
    return View(encode_jpeg(img, style.jpeg_quality), title, mentioned)


def teacher_text(plan: CatalogPlan, product: int, slot: int, mentioned: frozenset[str]) -> str:
    """The simulated teacher's attribute string for a listing (it saw view 0's title)."""
    cfg = plan.config
    rng = np.random.default_rng([cfg.seed, TAG_TEACHER, product, plan.seller(product, slot)])
    gold = plan.product_attributes(product)
    return render_attributes(
        teacher_attributes(gold, mentioned, cfg.teacher_drop, cfg.teacher_wrong, rng)
    )


def gold_text(plan: CatalogPlan, product: int) -> str:
    return render_attributes(plan.product_attributes(product))
