"""Building the catalogue: rows from a generator, one ``Dataset`` per split, a ``DatasetDict`` on disk.

Rows are produced by :func:`generate_rows` for a range of a split's row order, so a split is written
by ``Dataset.from_generator`` with sharded ``gen_kwargs`` (``num_proc`` workers) and never lives in
memory as a list. The content fingerprint is a sha256 over every split's rows in order, image bytes
included; the same config always gives the same fingerprint, whatever ``num_proc``.

Layout of ``out_dir``::

    dataset_dict.json, train/, validation_query/, validation_gallery/, query/, gallery/
    fingerprint.json         {"sha256": ..., "config": ..., "rows": ...}
    catalog.json             config, per-split counts and the attribute vocabularies
    truth/train_listings.jsonl   listing_id, pos_listing_id (the listing the second view comes
                                 from), product_id, family_id of every train row, in row order
                                 (for audits only: training must never read it)

A train row pairs a listing with another seller's listing of the same product (``pos_image`` /
``pos_title`` = that listing's main photo and title, ``pos_teacher_attributes`` = its own teacher
attributes), as product matching gives a marketplace;
``CatalogConfig(train_pairs="same_seller")`` pairs it with a second photo and title of the same
listing instead (an ablation: such pairs teach seller style, and evaluation asks for other sellers).
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from afmrl.errors import UserError
from afmrl.io import Fingerprint, building, fingerprint, write_json_atomic
from modeling_afmrl.attributes import ATTRIBUTE_FORMAT_VERSION

from .listing import gold_text, render_view, teacher_text
from .plan import (
    SPLITS,
    CatalogConfig,
    CatalogPlan,
    family_id,
    get_plan,
    listing_id,
    product_id,
)
from .schema import schema_summary

TRAIN_COLUMNS: tuple[str, ...] = (
    "listing_id", "image", "title", "pos_image", "pos_title", "teacher_attributes",
    "pos_teacher_attributes",
)  # fmt: skip
EVAL_COLUMNS: tuple[str, ...] = (
    "listing_id", "product_id", "family_id", "image", "title", "teacher_attributes",
    "gold_attributes",
)  # fmt: skip
IMAGE_COLUMNS = frozenset({"image", "pos_image"})
MARKER = "fingerprint.json"


def split_columns(split: str) -> tuple[str, ...]:
    return TRAIN_COLUMNS if split == "train" else EVAL_COLUMNS


def split_features(split: str):
    """The ``datasets.Features`` of a split (images as ``datasets.Image()`` holding JPEG bytes)."""
    from datasets import Features, Image, Value

    return Features(
        {c: Image() if c in IMAGE_COLUMNS else Value("string") for c in split_columns(split)}
    )


def make_row(plan: CatalogPlan, split: str, product: int, slot: int) -> dict:
    """One row of ``split`` for the listing of ``product`` by its ``slot``-th seller."""
    seed = plan.config.seed
    main = render_view(plan, product, slot, 0)
    row = {
        "listing_id": listing_id(seed, product, plan.seller(product, slot)),
        "image": {"bytes": main.jpeg, "path": None},
        "title": main.title,
    }
    teacher = teacher_text(plan, product, slot, main.mentioned)
    if split == "train":
        pos_slot, pos_view = plan.train_positive(product, slot)
        other = render_view(plan, product, pos_slot, pos_view)
        # The teacher reads a listing's main title: the second view's listing has its own
        # attributes (cross-seller), or shares this listing's (same-seller: same listing).
        pos_teacher = (
            teacher if pos_slot == slot else teacher_text(plan, product, pos_slot, other.mentioned)
        )
        row |= {
            "pos_image": {"bytes": other.jpeg, "path": None},
            "pos_title": other.title,
            "teacher_attributes": teacher,
            "pos_teacher_attributes": pos_teacher,
        }
    else:
        row |= {
            "product_id": product_id(product),
            "family_id": family_id(int(plan.product_family[product])),
            "teacher_attributes": teacher,
            "gold_attributes": gold_text(plan, product),
        }
    return {c: row[c] for c in split_columns(split)}


def generate_rows(
    config: CatalogConfig, split: str, shards: list[tuple[int, int]]
) -> Iterator[dict]:
    """Rows ``start:stop`` of ``split`` for each ``(start, stop)`` in ``shards`` (generator)."""
    plan = get_plan(config)
    products, slots = plan.split_listings(split)
    for start, stop in shards:
        for i in range(start, stop):
            yield make_row(plan, split, int(products[i]), int(slots[i]))


def _shards(n: int, parts: int) -> list[tuple[int, int]]:
    bounds = [round(i * n / parts) for i in range(parts + 1)]
    return [(a, b) for a, b in itertools.pairwise(bounds) if b > a]


def content_fingerprint(dataset_dict, batch_size: int = 512) -> str:
    """sha256 over every split's name, columns and rows in order (image bytes included)."""
    h = Fingerprint()
    for split in SPLITS:
        ds = dataset_dict[split]
        columns = list(ds.column_names)
        header = {"split": split, "columns": columns, "rows": ds.num_rows}
        h.update(json.dumps(header, sort_keys=True))
        for table in ds.with_format("arrow").iter(batch_size=batch_size):
            values = []
            for c in columns:
                col = table.column(c)
                if c in IMAGE_COLUMNS:
                    col = col.combine_chunks()
                    values += [col.field("bytes").to_pylist(), col.field("path").to_pylist()]
                else:
                    values.append(col.to_pylist())
            for row in zip(*values, strict=True):
                h.update(*row)
    return h.hexdigest()


def _check_out_dir(out: Path) -> None:
    """``out`` may be replaced only when it is absent, empty, or a catalogue built by this command."""
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not (out / MARKER).is_file():
        raise UserError(
            f"--out {out} is not empty and holds no {MARKER}: refusing to replace a folder that is "
            "not a synthetic catalogue"
        )


def _write_splits(
    config: CatalogConfig,
    plan: CatalogPlan,
    folder: Path,
    num_proc: int,
    log: Callable[[str], None],
    t0: float,
) -> str:
    """Generate every split into ``folder`` (``save_to_disk`` layout); returns the content
    fingerprint, read back from disk."""
    from datasets import Dataset, DatasetDict, load_from_disk
    from datasets.utils import (
        are_progress_bars_disabled,
        disable_progress_bars,
        enable_progress_bars,
    )

    bars_were_off = are_progress_bars_disabled()
    disable_progress_bars()
    cache = Path(tempfile.mkdtemp(prefix=f".{folder.name}.cache-", dir=folder.parent))
    try:
        splits = {}
        for split in SPLITS:
            n = len(plan.split_listings(split)[0])
            shards = _shards(n, num_proc)
            key = fingerprint([config.to_dict(), split])[:16]
            splits[split] = Dataset.from_generator(
                generate_rows,
                features=split_features(split),
                gen_kwargs={"config": config, "split": split, "shards": shards},
                num_proc=num_proc if len(shards) > 1 else None,
                cache_dir=str(cache / split),
                split=split,
                fingerprint=f"afmrl-synth-{key}",
            )
            log(f"[synth] {split}: {n} rows ({time.perf_counter() - t0:.1f}s)")
        DatasetDict(splits).save_to_disk(str(folder))
        del splits
    finally:
        shutil.rmtree(cache, ignore_errors=True)
        if not bars_were_off:
            enable_progress_bars()
    return content_fingerprint(load_from_disk(str(folder)))


def _write_truth(plan: CatalogPlan, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    products, slots = plan.split_listings("train")
    with path.open("w", encoding="utf-8") as f:
        for p, k in zip(products.tolist(), slots.tolist(), strict=True):
            pos_slot, _ = plan.train_positive(p, k)
            record = {
                "listing_id": listing_id(plan.config.seed, p, plan.seller(p, k)),
                "pos_listing_id": listing_id(plan.config.seed, p, plan.seller(p, pos_slot)),
                "product_id": product_id(p),
                "family_id": family_id(int(plan.product_family[p])),
            }
            f.write(json.dumps(record) + "\n")


def build_catalog(
    config: CatalogConfig,
    out_dir: str | os.PathLike,
    *,
    num_proc: int | None = None,
    preview: str | os.PathLike | None = None,
    log: Callable[[str], None] = print,
) -> dict:
    """Write the catalogue for ``config`` to ``out_dir``; returns the summary (also in catalog.json).

    ``num_proc`` defaults to ``min(2, os.cpu_count())``; the content does not depend on it. The
    catalogue is built beside ``out_dir`` and swapped in when complete: an interrupted build leaves
    the previous catalogue intact. ``out_dir`` may hold only a previous catalogue (or nothing).
    """
    t0 = time.perf_counter()
    config.validate()
    num_proc = max(1, int(num_proc or min(2, os.cpu_count() or 1)))
    out = Path(out_dir)
    _check_out_dir(out)
    plan = get_plan(config)
    log(
        f"[synth] plan: {plan.summary()} (seed {config.seed}, {config.image_size}px, "
        f"num_proc {num_proc}) in {time.perf_counter() - t0:.1f}s"
    )
    with building(out) as stage:
        digest = _write_splits(config, plan, stage, num_proc, log, t0)
        _write_truth(plan, stage / "truth" / "train_listings.jsonl")
        rows = {s: len(plan.split_listings(s)[0]) for s in SPLITS}
        summary = {
            "attribute_format": ATTRIBUTE_FORMAT_VERSION,
            "config": config.to_dict(),
            "fingerprint": digest,
            "rows": rows,
            **plan.summary(),
            "split_products": {
                "train": len(plan.split_products(0)),
                "validation": len(plan.split_products(1)),
                "test": len(plan.split_products(2)),
            },
            "split_families": {
                name: int((plan.family_split == code).sum())
                for code, name in enumerate(("train", "validation", "test"))
            },
        }
        write_json_atomic(
            stage / MARKER, {"sha256": digest, "config": config.to_dict(), "rows": rows}
        )
        write_json_atomic(stage / "catalog.json", {**summary, "schema": schema_summary()})
    if preview is not None:
        from .preview import write_preview

        write_preview(plan, preview)
        log(f"[synth] preview: {preview}")
    summary["seconds"] = round(time.perf_counter() - t0, 1)
    return summary
