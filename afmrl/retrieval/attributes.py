"""Attributes for a whole split: the extractor's generations, with one policy for malformed output.

:func:`generate_attributes` is the only way the library turns a split's photos and titles into
attribute strings. ``afmrl extract`` (the column it writes), ``afmrl evaluate --attributes generated``,
``afmrl index --attributes generated``, RAR and the demo all call it, so a column written by one is
exactly what the others see for the same rows and checkpoint.

The policy (:func:`~modeling_afmrl.attributes.canonical_attribute_text`): a well-formed generation
is kept in canonical form (normalised keys and values, canonical key order); a malformed one becomes
``""`` -- nothing is appended to that listing's text and the loss sees no attribute -- and is
counted. The raw generations are kept beside the texts for audits.

Generation is greedy and batched. With a ``work_dir`` it is resumable: rows are processed in shards
(:class:`~afmrl.io.ShardFolder`) whose manifest fingerprints the model weights, the rows and the
settings, so a killed run continues where it stopped and a folder made for another model, split or
setting is refused rather than mixed in; the same folder then serves as a cache.

Across the processes of a launch (``processes=``, :mod:`afmrl.retrieval.processes`; ``torchrun
--nproc-per-node N -m afmrl extract ...``): each process generates its contiguous part of the rows
(``split_dataset_by_node``) into its own ``WORK/part-RRRRR-of-NNNNN`` shard folder, and every process
gets the whole split's result, gathered in rank order (the split's row order).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from afmrl.io import ShardFolder, ids_fingerprint
from afmrl.progress import progress_bar
from modeling_afmrl.attributes import ATTRIBUTE_FORMAT_VERSION, canonical_attribute_text

from .processes import Processes

if TYPE_CHECKING:
    from datasets import Dataset

#: Where the attributes appended to a listing's text come from.
ATTRIBUTE_SOURCES: tuple[str, ...] = ("none", "teacher", "generated")
#: The column ``teacher`` reads (``gold_attributes`` is never read at retrieval time).
TEACHER_COLUMN = "teacher_attributes"
#: Generation budget per listing (tokens) unless told otherwise.
DEFAULT_MAX_NEW_TOKENS = 64
#: Listings per ``generate`` call unless told otherwise.
DEFAULT_GENERATION_BATCH_SIZE = 32


@dataclass
class GeneratedAttributes:
    """A split's attributes: ``texts[i]`` (canonical, or ``""`` when ``raw[i]`` was malformed)."""

    texts: list[str]
    raw: list[str]
    resumed_rows: int = 0

    @property
    def num_invalid(self) -> int:
        """Rows whose generation was malformed (their text is ``""``)."""
        return sum(not t for t in self.texts)


def attribute_texts(
    model: Any,
    images: Sequence[Any],
    titles: Sequence[str | None],
    *,
    batch_size: int = DEFAULT_GENERATION_BATCH_SIZE,
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
) -> tuple[list[str], list[str]]:
    """One batch of listings -> ``(texts, raw)`` under the module's policy (a few rows, no files)."""
    result = model.extract_attributes(
        list(images),
        ["" if t is None else str(t) for t in titles],
        return_raw=True,
        batch_size=batch_size,
        max_new_tokens=max_new_tokens,
    )
    raw = [str(r) for r in result.raw]
    return [canonical_attribute_text(r) for r in raw], raw


def _manifest(model: Any, split: Dataset, settings: dict[str, Any]) -> dict[str, Any]:
    """What must match for a work folder's shards to be reused: weights, rows, settings."""
    from afmrl.models import model_fingerprint

    ids = split["listing_id"] if "listing_id" in split.column_names else None
    return {
        "model": model_fingerprint(model),
        "rows": ids_fingerprint(ids) if ids is not None else split._fingerprint,
        "num_rows": len(split),
        "attribute_format": ATTRIBUTE_FORMAT_VERSION,
        **settings,
    }


def generate_attributes(
    model: Any,
    split: Dataset,
    *,
    work_dir: str | os.PathLike | None = None,
    batch_size: int = DEFAULT_GENERATION_BATCH_SIZE,
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
    shard_size: int | None = None,
    image_column: str = "image",
    title_column: str = "title",
    desc: str = "extract",
    show_progress: bool = True,
    processes: Processes | None = None,
) -> GeneratedAttributes:
    """Generate the attributes of every row of ``split`` with ``model``'s extractor.

    Args:
        model: an ``AFMRLModel`` with an extractor.
        split: a ``datasets.Dataset`` with ``image_column`` and ``title_column`` (and ideally
            ``listing_id``, which identifies the rows in the manifest).
        work_dir: where finished shards are kept; rerunning with it resumes (or reuses) them.
        batch_size: listings per ``generate`` call.
        max_new_tokens: generation budget per listing.
        shard_size: rows per shard (default: ``batch_size``; rounded up to a multiple of it).
        processes: the processes of a launch (:func:`~afmrl.retrieval.processes.
            launched_processes`): every one of them calls this with the same arguments and
            generates its part (its shards in ``work_dir/part-RRRRR-of-NNNNN``). Default: one.

    Returns:
        :class:`GeneratedAttributes`, one text per row in row order (on every process).
    """
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be a positive integer, got {max_new_tokens!r}")
    for column in (image_column, title_column):
        if column not in split.column_names:
            raise ValueError(f"the split has no {column!r} column (columns: {split.column_names})")
    shard_size = -(-max(shard_size or batch_size, 1) // batch_size) * batch_size
    settings = {
        "columns": [image_column, title_column],
        "batch_size": batch_size,
        "shard_size": shard_size,
        "max_new_tokens": max_new_tokens,
    }
    procs = processes or Processes()
    mine = _generate_part(
        model,
        procs.part(split),
        None if work_dir is None else procs.part_folder(work_dir),
        settings,
        desc,
        show_progress and procs.main,
    )
    if procs.count == 1:
        return mine
    parts = procs.gather(mine)
    return GeneratedAttributes(
        [t for part in parts for t in part.texts],
        [r for part in parts for r in part.raw],
        sum(part.resumed_rows for part in parts),
    )


def _generate_part(
    model: Any,
    split: Dataset,
    work_dir: Path | None,
    settings: dict[str, Any],
    desc: str,
    show_progress: bool,
) -> GeneratedAttributes:
    """:func:`generate_attributes` of one process's rows, resuming from ``work_dir``."""
    image_column, title_column = settings["columns"]
    batch_size, shard_size = settings["batch_size"], settings["shard_size"]
    max_new_tokens = settings["max_new_tokens"]
    total = len(split)
    num_shards = -(-total // shard_size)
    shards = None
    done = 0
    if work_dir is not None:
        shards = ShardFolder(work_dir, _manifest(model, split, settings))
        done = shards.open(num_shards)
    texts: list[str] = []
    raw: list[str] = []
    for index in range(done):
        rows, _ = shards.read(index)
        texts += rows["texts"]
        raw += rows["raw"]
    resumed = len(texts)
    view = split.select_columns([image_column, title_column])
    with progress_bar(
        total=total, initial=resumed, desc=desc, unit="row", enabled=show_progress
    ) as bar:
        for index in range(done, num_shards):
            start, end = index * shard_size, min((index + 1) * shard_size, total)
            shard_texts: list[str] = []
            shard_raw: list[str] = []
            for b in range(start, end, batch_size):
                batch = view[b : min(b + batch_size, end)]
                t, r = attribute_texts(
                    model,
                    batch[image_column],
                    batch[title_column],
                    batch_size=batch_size,
                    max_new_tokens=max_new_tokens,
                )
                shard_texts += t
                shard_raw += r
                bar.update(len(t))
            if shards is not None:
                shards.write(index, {"texts": shard_texts, "raw": shard_raw})
            texts += shard_texts
            raw += shard_raw
    return GeneratedAttributes(texts, raw, resumed)


__all__ = [
    "ATTRIBUTE_SOURCES",
    "DEFAULT_GENERATION_BATCH_SIZE",
    "DEFAULT_MAX_NEW_TOKENS",
    "TEACHER_COLUMN",
    "GeneratedAttributes",
    "attribute_texts",
    "generate_attributes",
]
