"""The demo's gallery: a :class:`~afmrl.retrieval.index.RetrievalIndex` built once, cached on disk.

:func:`open_gallery` indexes a catalogue split with :func:`afmrl.retrieval.indexing.build_index`
(the same resumable index folder ``afmrl index`` writes, with a progress display) plus one small
JPEG per listing for the result gallery and a few full-size example photos. Everything lives in
``CACHE/<key>/``, where the key fingerprints what the index depends on: the model weights, the
split's rows and the attribute setting. A restart with the same inputs reuses the folder (seconds);
other weights or data get a folder of their own; a start killed half-way resumes the index build
and redoes the photos.

Layout of ``CACHE/<key>/``: ``index/`` (the ``afmrl index`` folder: faiss index, ``listings.jsonl``
with each listing's title and attributes, ``afmrl_index.json``), ``photos/<position>.jpg``,
``examples/<position>.png`` and ``gallery.json``, written last, which marks the folder complete.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from afmrl.errors import UserError
from afmrl.io import building, fingerprint, ids_fingerprint, write_json_atomic
from afmrl.progress import progress_bar

if TYPE_CHECKING:
    from datasets import Dataset

GALLERY_FORMAT = "afmrl-demo-gallery-v1"
MARKER_FILE = "gallery.json"
#: Longer side of the result thumbnails.
PHOTO_SIDE = 256


@dataclass
class Gallery:
    """A ready gallery: the index, and per listing (by id) its title, attributes and photo."""

    folder: Path
    index: Any  # RetrievalIndex
    listings: dict[Any, dict[str, Any]]
    attributes: str
    examples: list[tuple[str, str]] = field(default_factory=list)
    reused: bool = False

    @property
    def index_folder(self) -> Path:
        return self.folder / "index"

    def photo(self, listing_id: Any) -> str | None:
        """Path of a listing's thumbnail (``None`` for an unknown id)."""
        row = self.listings.get(listing_id)
        return str(self.folder / "photos" / f"{row['position']:06d}.jpg") if row else None


def default_cache_root() -> Path:
    """``$AFMRL_DEMO_CACHE``, else ``~/.cache/afmrl/demo``."""
    env = os.environ.get("AFMRL_DEMO_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "afmrl" / "demo"


def gallery_key(
    model_fingerprint: str, split: Dataset, attributes: str, max_new_tokens: int
) -> str:
    """What the cached gallery depends on: weights, rows (ids and content) and attribute setting."""
    return fingerprint(
        GALLERY_FORMAT,
        model_fingerprint,
        ids_fingerprint(split["listing_id"]),
        getattr(split, "_fingerprint", None),
        attributes,
        max_new_tokens if attributes == "generated" else None,
    )[:20]


def open_gallery(
    model: Any,
    split: Dataset,
    cache_root: str | os.PathLike,
    *,
    attributes: str = "none",
    batch_size: int = 32,
    max_new_tokens: int = 64,
    examples: int = 6,
    describe: dict[str, Any] | None = None,
    show_progress: bool = True,
    log: Callable[[str], None] = print,
) -> Gallery:
    """The gallery of ``split`` for ``model``: reused from ``cache_root`` or built there.

    Args:
        attributes: what is appended to each listing's title in its embedding: ``none``,
            ``teacher`` (the ``teacher_attributes`` column) or ``generated`` (the extractor).
        examples: how many example photos (spread over the split) the UI offers.
        describe: where the model and the data came from (recorded in the index's info file).
    """
    from afmrl.models import model_fingerprint
    from afmrl.retrieval.index import RetrievalIndex
    from afmrl.retrieval.indexing import build_index
    from afmrl.retrieval.search import read_index_info

    if len(split) == 0:
        raise UserError("the gallery split has no rows")
    weights = model_fingerprint(model)
    key = gallery_key(weights, split, attributes, max_new_tokens)
    folder = Path(cache_root) / key
    marker = folder / MARKER_FILE
    if marker.is_file():
        try:
            return _open(folder, reused=True)
        except (UserError, OSError, ValueError, KeyError) as err:
            log(f"[demo] cached gallery {folder} is unusable ({err}); rebuilding it")
            marker.unlink()
    start = time.perf_counter()
    log(f"[demo] indexing {len(split)} gallery listings into {folder} (once; reused next start)")
    info = read_index_info(folder / "index")
    if info is None or info.get("model_fingerprint") != weights:
        build_index(
            model,
            split,
            folder / "index",
            attributes=attributes,
            batch_size=batch_size,
            max_new_tokens=max_new_tokens,
            describe=describe,
            overwrite=info is not None,
            show_progress=show_progress,
            log=log,
        )
    RetrievalIndex.load(folder / "index")  # refuses a damaged index before anything else
    _write_photos(split, folder, examples, show_progress)
    write_json_atomic(
        marker,
        {
            "format": GALLERY_FORMAT,
            "key": key,
            "model_fingerprint": weights,
            "rows": len(split),
            "attributes": attributes,
            **dict(describe or {}),
            "seconds": round(time.perf_counter() - start, 1),
        },
    )
    log(f"[demo] gallery ready in {time.perf_counter() - start:.0f} s")
    return _open(folder, reused=False)


def _open(folder: Path, reused: bool) -> Gallery:
    """A complete cache folder -> :class:`Gallery`."""
    from afmrl.retrieval.index import RetrievalIndex
    from afmrl.retrieval.indexing import LISTINGS_FILE
    from afmrl.retrieval.search import read_index_info

    meta = json.loads((folder / MARKER_FILE).read_text(encoding="utf-8"))
    index = RetrievalIndex.load(folder / "index")
    info = read_index_info(folder / "index")
    if info is None:
        raise UserError(f"{folder / 'index'}: the index info file does not match the index")
    listings: dict[Any, dict[str, Any]] = {}
    with open(folder / "index" / LISTINGS_FILE, encoding="utf-8") as f:
        for position, line in enumerate(f):
            row = json.loads(line)
            listings[row["id"]] = {
                "position": position,
                "title": row.get("title") or "",
                "attributes": row.get("attributes") or "",
            }
    if len(listings) != index.count:
        raise UserError(f"{folder}: {len(listings)} listings for {index.count} vectors")
    examples = json.loads((folder / "examples" / "examples.json").read_text(encoding="utf-8"))
    pairs = [(str(folder / "examples" / e["file"]), e["title"]) for e in examples]
    return Gallery(folder, index, listings, meta["attributes"], pairs, reused)


def _write_photos(split: Dataset, folder: Path, examples: int, show_progress: bool) -> None:
    """``photos/`` (a thumbnail per row) and ``examples/`` (a few full photos + titles)."""
    from PIL import Image

    from modeling_afmrl.processing_afmrl import to_rgb_image

    n = len(split)
    picks = sorted({round(i * (n - 1) / max(examples - 1, 1)) for i in range(examples)})[:n]
    view = split.select_columns(["image", "title"])
    with building(folder / "photos") as photos, building(folder / "examples") as stage:
        chosen = []
        bar = progress_bar(
            range(0, n, 64),
            total=-(-n // 64),
            desc="demo: photos",
            unit="batch",
            enabled=show_progress,
        )
        for start in bar:
            rows = view[start : start + 64]
            for offset, (item, title) in enumerate(zip(rows["image"], rows["title"], strict=True)):
                i = start + offset
                image = to_rgb_image(item, f"gallery row {i}")
                if i in picks:
                    image.save(stage / f"{i:06d}.png")
                    chosen.append({"file": f"{i:06d}.png", "title": title or ""})
                image.thumbnail((PHOTO_SIDE, PHOTO_SIDE), Image.Resampling.LANCZOS)
                image.save(photos / f"{i:06d}.jpg", quality=90)
        write_json_atomic(stage / "examples.json", chosen)


__all__ = ["GALLERY_FORMAT", "Gallery", "default_cache_root", "gallery_key", "open_gallery"]
