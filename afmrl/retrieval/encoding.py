"""Embedding the rows of a catalogue split, batch by batch, in one of three modalities.

A *modality* says what of a listing enters its embedding: ``listing`` (photo + title [+ attributes]),
``image`` (photo only: no text, not even an empty title) or ``text`` (title [+ attributes] only). The
dual encoder puts all three in one space. Images are read undecoded from the dataset and decoded per
batch, so only one batch of images is ever in memory; only the ``[N, D]`` embeddings are kept.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from afmrl.progress import progress_bar

if TYPE_CHECKING:
    from datasets import Dataset

MODALITIES: tuple[str, ...] = ("listing", "image", "text")
#: Listings per forward pass unless told otherwise.
DEFAULT_ENCODE_BATCH_SIZE = 32


def check_choice(value: str, choices: Sequence[str], name: str) -> None:
    """Raise ``ValueError`` naming ``name`` when ``value`` is not one of ``choices``."""
    if value not in choices:
        raise ValueError(f"{name} must be one of {list(choices)}, got {value!r}")


def iter_row_batches(
    ds: Dataset, batch_size: int, columns: Sequence[str], start: int = 0
) -> Iterator[tuple[int, dict[str, list]]]:
    """``(offset, {column: values})`` for consecutive slices of ``ds``, from row ``start``.

    Image columns come as the catalogue stores them (undecoded ``{"bytes", "path"}`` dicts after
    ``load_catalog``), so a batch holds only its own encoded images.
    """
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    missing = [c for c in columns if c not in ds.column_names]
    if missing:
        raise ValueError(f"columns {missing} are missing; columns found: {ds.column_names}")
    view = ds.select_columns(list(columns))
    for offset in range(start, len(ds), batch_size):
        yield offset, view[offset : offset + batch_size]


def modality_columns(modality: str) -> tuple[str, ...]:
    """The catalogue columns a side in ``modality`` reads."""
    check_choice(modality, MODALITIES, "modality")
    return {"listing": ("image", "title"), "image": ("image",), "text": ("title",)}[modality]


def encode_inputs(
    rows: Mapping[str, Sequence], modality: str, attributes: Sequence[str] | None = None
) -> dict[str, Any]:
    """Keyword arguments for ``model.encode`` for one batch in ``modality``.

    ``image`` passes the photos only (no text, no attributes: a genuinely image-only embedding);
    ``text`` passes titles (+ attributes) only; ``listing`` passes both.
    """
    check_choice(modality, MODALITIES, "modality")
    kwargs: dict[str, Any] = {}
    if modality in ("listing", "image"):
        kwargs["images"] = list(rows["image"])
    if modality in ("listing", "text"):
        kwargs["texts"] = ["" if t is None else t for t in rows["title"]]
        if attributes is not None:
            kwargs["attributes"] = list(attributes)
    return kwargs


def encode_batch(
    model,
    rows: Mapping[str, Sequence],
    modality: str,
    attributes: Sequence[str] | None = None,
    batch_size: int = DEFAULT_ENCODE_BATCH_SIZE,
) -> np.ndarray:
    """One batch of rows -> ``[B, D]`` float32 embeddings (L2-normalised by the model)."""
    emb = model.encode(**encode_inputs(rows, modality, attributes), batch_size=batch_size)
    return np.ascontiguousarray(emb.detach().cpu().numpy(), dtype=np.float32)


def encode_split(
    model,
    ds: Dataset,
    modality: str,
    attributes: Sequence[str] | None = None,
    batch_size: int = DEFAULT_ENCODE_BATCH_SIZE,
    desc: str = "encode",
    show_progress: bool = True,
) -> np.ndarray:
    """``[N, D]`` float32 embeddings of every row of ``ds`` in ``modality`` (streamed by batch).

    ``attributes`` holds one attribute string per row (ignored for ``image``).
    """
    n = len(ds)
    if attributes is not None and len(attributes) != n:
        raise ValueError(f"got {len(attributes)} attribute strings for {n} rows")
    if modality == "image":
        attributes = None
    chunks = []
    batches = iter_row_batches(ds, batch_size, modality_columns(modality))
    bar = progress_bar(
        batches, total=math.ceil(n / batch_size), desc=desc, unit="batch", enabled=show_progress
    )
    for offset, rows in bar:
        batch_attrs = attributes[offset : offset + batch_size] if attributes is not None else None
        chunks.append(encode_batch(model, rows, modality, batch_attrs, batch_size))
    if not chunks:
        raise ValueError(f"{desc}: the split is empty")
    return np.concatenate(chunks)


__all__ = [
    "DEFAULT_ENCODE_BATCH_SIZE",
    "MODALITIES",
    "check_choice",
    "encode_batch",
    "encode_inputs",
    "encode_split",
    "iter_row_batches",
    "modality_columns",
]
