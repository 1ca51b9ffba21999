"""Batch attribute extraction over a dataset split: batched greedy generation, resumable.

Rows are processed in shards of ``shard_size`` rows (a multiple of the batch size). Each finished
shard is written atomically (``shard-00012.json.tmp`` then ``os.replace``) into a work folder with a
``manifest.json`` fingerprinting the model, the split and the generation settings. A killed run
re-run with the same work folder skips the finished shards and continues; a work folder made for
another model, split or setting is refused rather than mixed in.

The result is one attribute string per row (the raw generation, stripped) and its validity
(:func:`modeling_afmrl.attributes.parse_attributes`), so invalid outputs can be counted.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from modeling_afmrl.attributes import parse_attributes

MANIFEST = "manifest.json"


@dataclass
class ExtractionOutput:
    """One split's generations: ``texts[i]`` for row ``i``, its validity, and the counts."""

    texts: list[str]
    valid: list[bool]
    resumed_rows: int

    @property
    def num_invalid(self) -> int:
        return sum(not v for v in self.valid)


def _shard_path(work_dir: Path, index: int) -> Path:
    return work_dir / f"shard-{index:05d}.json"


def _write_atomic(path: Path, payload: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(payload, f, ensure_ascii=False)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _check_manifest(work_dir: Path, manifest: dict) -> None:
    path = work_dir / MANIFEST
    if path.is_file():
        stored = json.loads(path.read_text())
        if stored != manifest:
            diff = sorted(
                k for k in set(stored) | set(manifest) if stored.get(k) != manifest.get(k)
            )
            raise ValueError(
                f"{work_dir} holds a partial extraction made with other settings (differs in: "
                f"{', '.join(diff)}); delete it or pick another work folder"
            )
    else:
        work_dir.mkdir(parents=True, exist_ok=True)
        _write_atomic(path, manifest)


def extraction_fingerprint(model_id: str, split_fingerprint: str, settings: dict) -> dict:
    """The manifest of a work folder: what must match for finished shards to be reused."""
    key = json.dumps(settings, sort_keys=True, default=str)
    return {
        "model": model_id,
        "split": split_fingerprint,
        "settings": hashlib.sha256(key.encode()).hexdigest(),
    }


def extract_split(
    model: Any,
    split: Any,
    work_dir: str | os.PathLike,
    batch_size: int = 32,
    shard_size: int | None = None,
    model_id: str = "",
    image_column: str = "image",
    title_column: str = "title",
    show_progress_bar: bool = True,
    on_batch: Callable[[int, int], None] | None = None,
    **generate_kwargs: Any,
) -> ExtractionOutput:
    """Generate attributes for every row of ``split`` (a ``datasets.Dataset``), resumably.

    Args:
        model: an ``AFMRLModel`` with an extractor (``extract_attributes`` is called per batch).
        split: the rows; ``image_column`` and ``title_column`` are read.
        work_dir: where finished shards live; rerunning with it resumes.
        batch_size: rows per ``generate`` call.
        shard_size: rows per shard file (default: ``batch_size``; rounded up to a multiple of it).
        model_id: the model's identity for the manifest (path or Hub id + revision).
        on_batch: called as ``on_batch(rows_done, rows_total)`` after each generated batch.
        **generate_kwargs: passed to ``generate`` (greedy by default, ``max_new_tokens=64``).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    for column in (image_column, title_column):
        if column not in split.column_names:
            raise ValueError(f"the split has no {column!r} column (columns: {split.column_names})")
    shard_size = batch_size if shard_size is None else max(shard_size, 1)
    shard_size = -(-shard_size // batch_size) * batch_size
    work = Path(work_dir)
    settings = {
        "batch_size": batch_size,
        "shard_size": shard_size,
        "image_column": image_column,
        "title_column": title_column,
        **generate_kwargs,
    }
    _check_manifest(
        work, extraction_fingerprint(model_id, getattr(split, "_fingerprint", ""), settings)
    )
    total = len(split)
    num_shards = -(-total // shard_size)
    texts: list[str] = []
    resumed = 0
    pending = [i for i in range(num_shards) if not _shard_path(work, i).is_file()]
    bar = None
    if show_progress_bar and pending:
        from tqdm.auto import tqdm

        bar = tqdm(
            total=total, desc="extract", unit="row", initial=total - len(pending) * shard_size
        )
    done = 0
    for index in range(num_shards):
        start, end = index * shard_size, min((index + 1) * shard_size, total)
        path = _shard_path(work, index)
        if path.is_file():
            shard = json.loads(path.read_text(encoding="utf-8"))
            if len(shard) != end - start:
                raise ValueError(f"{path} holds {len(shard)} rows, expected {end - start}")
            texts += shard
            resumed += len(shard)
            done = end
            continue
        rows = split.select(range(start, end))
        shard_texts: list[str] = []
        for b in range(0, end - start, batch_size):
            batch = rows.select(range(b, min(b + batch_size, end - start)))
            result = model.extract_attributes(
                batch[image_column],
                [str(t or "") for t in batch[title_column]],
                return_raw=True,
                batch_size=batch_size,
                **generate_kwargs,
            )
            shard_texts += list(result.raw)
            done = start + len(shard_texts)
            if bar is not None:
                bar.update(len(result.raw))
            if on_batch is not None:
                on_batch(done, total)
        _write_atomic(path, shard_texts)
        texts += shard_texts
    if bar is not None:
        bar.close()
    valid = [parse_attributes(t).valid for t in texts]
    return ExtractionOutput(texts, valid, resumed)
