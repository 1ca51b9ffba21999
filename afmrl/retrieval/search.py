"""Searching an index folder written by :func:`afmrl.retrieval.indexing.build_index`.

The query is embedded with the model the index was built with (recorded in ``afmrl_index.json``,
unless another is given): photo + title as a listing, or a photo / a title alone (the dual encoder
puts all three in one space). If the gallery was encoded with generated attributes, the query's are
generated too, by the same function and policy (photo + title needed); they can also be given by
hand. Results come back as ``(rank, score, id, title)`` rows, titles read from ``listings.jsonl``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from afmrl.errors import MissingPathError, UserError
from modeling_afmrl.attributes import canonical_attribute_text

from .attributes import attribute_texts
from .index import META_FILE, RetrievalIndex
from .indexing import INFO_FILE, LISTINGS_FILE


@dataclass
class Hit:
    """One search result."""

    rank: int
    score: float
    id: Any
    title: str | None


def read_index_info(folder: str | os.PathLike) -> dict | None:
    """``afmrl_index.json`` if it belongs to the index saved in ``folder`` (else None)."""
    folder = Path(folder)
    try:
        info = json.loads((folder / INFO_FILE).read_text(encoding="utf-8"))
        meta = json.loads((folder / META_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(info, dict) or info.get("index_sha256") != meta.get("sha256"):
        return None  # settings of another (older) index
    return info


def lookup_listings(folder: str | os.PathLike, ids: Iterable[Any]) -> dict:
    """``{id: row}`` from ``listings.jsonl`` for the wanted ids (streamed: one line at a time)."""
    wanted, found = set(ids), {}
    path = Path(folder) / LISTINGS_FILE
    if not path.is_file():
        return found
    with open(path, encoding="utf-8") as f:
        for line in f:
            row = json.loads(line)
            if row.get("id") in wanted:
                found[row["id"]] = row
                if len(found) == len(wanted):
                    break
    return found


def _query_photo(path: Path):
    """The query photo as an RGB image, or a one-line error naming the file."""
    from modeling_afmrl.processing_afmrl import to_rgb_image

    if not path.is_file():
        raise MissingPathError(f"--image {path}: no such file")
    try:
        return to_rgb_image(path, name=f"--image {path}")
    except (ValueError, TypeError) as err:
        raise UserError(str(err)) from err


def search_index(
    folder: str | os.PathLike,
    model: Any,
    *,
    image: Any = None,
    title: str | None = None,
    attributes: str | None = None,
    k: int = 10,
    index: RetrievalIndex | None = None,
) -> tuple[list[Hit], str | None]:
    """The ``k`` nearest listings of ``folder``'s index for a photo and/or a title.

    Returns the hits and the attribute text the query was encoded with (``None`` when none).
    When the gallery carries generated attributes and none are given, the query's are generated
    when both a photo and a title are given. ``index`` is the folder's index when already loaded.
    """
    if image is None and not title:
        raise UserError("give a query: a photo and/or a title")
    if isinstance(image, str | os.PathLike):
        image = _query_photo(Path(image))
    index = index if index is not None else RetrievalIndex.load(folder)
    info = read_index_info(folder) or {}
    if attributes is None and info.get("attributes") == "generated" and image is not None and title:
        attributes = attribute_texts(model, [image], [title])[0][0]
    attributes = canonical_attribute_text(attributes) if attributes else None
    inputs: dict[str, Any] = {}
    if image is not None:
        inputs["images"] = [image]
    if title:
        inputs["texts"] = [title]
        if attributes:
            inputs["attributes"] = [attributes]
    query = model.encode(**inputs).numpy()
    if query.shape[1] != index.dim:
        raise UserError(
            f"the model embeds in {query.shape[1]} dims but the index holds {index.dim}-dim vectors"
        )
    scores, ids = index.search(query, k=k)
    pairs = [(float(s), i) for s, i in zip(scores[0].tolist(), ids[0].tolist(), strict=True)]
    pairs = [(s, i) for s, i in pairs if i is not None and i != -1]
    rows = lookup_listings(folder, [i for _, i in pairs])
    hits = [Hit(r, s, i, rows.get(i, {}).get("title")) for r, (s, i) in enumerate(pairs, 1)]
    return hits, attributes or None


__all__ = ["Hit", "lookup_listings", "read_index_info", "search_index"]
