"""A contact sheet of a few product families, so a person sees the catalogue's difficulty at a glance.

Each block is one family: one row per product (labelled with the value of the attribute the family
varies), one cell per listing (a different seller each), the listing's title wrapped underneath.
Images are redrawn from the plan; they are byte-identical to the dataset's rows.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

from PIL import Image, ImageDraw

from afmrl.io import atomic_path

from .drawing import font
from .listing import render_view
from .plan import TRAIN, CatalogPlan, family_id
from .schema import SHARED_KEYS

_BG = (255, 255, 255)
_INK = (20, 20, 20)
_MUTED = (90, 90, 90)
_PANEL = (242, 242, 240)


def _wrap(text: str, width: int, f) -> list[str]:
    lines, line = [], ""
    for word in text.split():
        trial = f"{line} {word}".strip()
        if f.getlength(trial) <= width or not line:
            line = trial
        else:
            lines.append(line)
            line = word
    return [*lines, line] if line else lines


def pick_families(plan: CatalogPlan, n: int) -> list[int]:
    """Up to ``n`` evaluation families (validation/test first) with different varying axes and
    categories, so the sheet shows as many kinds of near-duplicates as possible."""
    order = [f for f in range(len(plan.families)) if plan.family_split[f] != TRAIN]
    order += [f for f in range(len(plan.families)) if plan.family_split[f] == TRAIN]
    picked: list[int] = []
    axes: set[str] = set()
    cats: set[str] = set()
    for strict in (True, False):
        for f in order:
            fam = plan.families[f]
            if f in picked or len(fam.values) < 2:
                continue
            axis = fam.axis if fam.axis in SHARED_KEYS else "shape"
            if strict and (axis in axes or fam.category.name in cats):
                continue
            picked.append(f)
            axes.add(axis)
            cats.add(fam.category.name)
            if len(picked) == n:
                return picked
    return picked


def write_preview(
    plan: CatalogPlan,
    path: str | os.PathLike,
    n_families: int = 6,
    per_row: int = 2,
    scale: int = 2,
) -> Path:
    """Write the contact sheet PNG to ``path`` and return it."""
    cell = plan.config.image_size * scale
    pad, gap = 8, 24
    f_head, f_label, f_title = font(20), font(15), font(13)
    line_h = 16
    title_lines = 4
    max_sellers = int(plan.product_n_sellers.max())
    label_h = 22
    row_h = label_h + cell + pad + title_lines * line_h + pad
    block_w = max_sellers * (cell + pad) + pad

    blocks = []
    for f in pick_families(plan, n_families):
        fam = plan.families[f]
        products = list(plan.family_products(f))
        block = Image.new("RGB", (block_w, 34 + len(products) * row_h), _PANEL)
        d = ImageDraw.Draw(block)
        head = f"{family_id(f)} · {fam.category.name} · varies {fam.axis}"
        d.text((pad, 8), head, font=f_head, fill=_INK)
        for r, p in enumerate(products):
            y = 34 + r * row_h
            attrs = plan.product_attributes(p)
            label = f"product {p}: {fam.axis} = {attrs[fam.axis]}"
            d.text((pad, y + 2), label, font=f_label, fill=_MUTED)
            for k in range(int(plan.product_n_sellers[p])):
                view = render_view(plan, p, k, 0)
                img = Image.open(io.BytesIO(view.jpeg)).convert("RGB")
                img = img.resize((cell, cell), Image.Resampling.NEAREST)
                x = pad + k * (cell + pad)
                block.paste(img, (x, y + label_h))
                lines = _wrap(view.title, cell, f_title)[:title_lines]
                for i, line in enumerate(lines):
                    d.text((x, y + label_h + cell + 4 + i * line_h), line, font=f_title, fill=_INK)
        blocks.append(block)
    if not blocks:
        raise ValueError("no family with two or more products to preview")
    rows = [blocks[i : i + per_row] for i in range(0, len(blocks), per_row)]
    width = max(sum(b.width for b in row) + gap * (len(row) + 1) for row in rows)
    height = sum(max(b.height for b in row) for row in rows) + gap * (len(rows) + 1)
    sheet = Image.new("RGB", (width, height), _BG)
    y = gap
    for row in rows:
        x = gap
        for b in row:
            sheet.paste(b, (x, y))
            x += b.width + gap
        y += max(b.height for b in row) + gap
    out = Path(path)
    with atomic_path(out) as tmp:
        sheet.save(tmp, format="PNG")
    return out
