"""Encoding a catalogue split into a searchable index folder, streaming and resumable.

Rows are read, encoded and checkpointed batch by batch: only one batch of images is ever in memory.
Each encoded batch is one shard of ``OUT/.partial/`` (:class:`~afmrl.io.ShardFolder`: the ``[B, D]``
float32 embeddings plus the batch's listing ids, titles and attributes), whose manifest records
the model's weights, the rows and the settings. A run that is interrupted (killed, out of power) and
started again with the same settings reuses every finished batch and encodes only the rest; a
checkpoint made with another model or other settings is refused, never mixed in.

When every batch is done the index is built from the shards (:class:`~afmrl.retrieval.index.
RetrievalIndex`; IVF kinds are trained on a sample read from the shards) beside ``OUT`` and swapped
in complete (:func:`afmrl.io.building`): ``index.json`` + the faiss file, ``listings.jsonl`` (id,
title and attributes per row, for ``afmrl search``) and ``afmrl_index.json`` (how the gallery was
encoded). An interrupted build leaves the previous index, if any, intact.

With ``attributes="generated"`` the split's attributes come from
:func:`afmrl.retrieval.attributes.generate_attributes` first (resumable too, in
``OUT/.partial/attributes``), so the texts are exactly what ``afmrl extract`` writes.

Across processes (``torchrun --nproc-per-node N -m afmrl index ...``, :mod:`afmrl.retrieval.
processes`): each process takes its contiguous part of the rows (``split_dataset_by_node``) and
checkpoints it in its own ``OUT/.partial/part-RRRRR-of-NNNNN/`` (a :class:`ShardFolder` whose
manifest adds the part's rows; its generated attributes in ``attributes/`` below it); once every part
is done, the main process alone builds the index from the parts' shards in rank order -- the same
rows in the same order as one process -- and swaps it in. A killed launch rerun with the same N
resumes every part.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from afmrl.errors import UserError
from afmrl.io import ShardFolder, atomic_path, building, ids_fingerprint, write_json_atomic
from afmrl.progress import progress_bar
from modeling_afmrl.attributes import canonical_attribute_text

from .attributes import (
    ATTRIBUTE_SOURCES,
    DEFAULT_MAX_NEW_TOKENS,
    TEACHER_COLUMN,
    generate_attributes,
)
from .encoding import DEFAULT_ENCODE_BATCH_SIZE, MODALITIES, check_choice, encode_batch
from .encoding import modality_columns as columns_of
from .index import (
    INDEX_KINDS,
    META_FILE,
    MIN_POINTS_PER_CENTROID,
    RetrievalIndex,
    default_nlist,
    default_train_size,
)
from .processes import Processes

if TYPE_CHECKING:
    from datasets import Dataset

PARTIAL_DIR = ".partial"
INFO_FILE = "afmrl_index.json"
LISTINGS_FILE = "listings.jsonl"
INFO_FORMAT = "afmrl-index-info"
#: What a part's manifest adds to the settings (``OUT/.partial/part-RRRRR-of-NNNNN``).
_PART_KEYS = ("process", "processes", "part_ids_sha256", "part_num_rows")


@dataclass
class IndexSummary:
    """What :func:`build_index` did."""

    count: int
    dim: int
    kind: str
    batches: int
    reused_batches: int
    seconds: float


def check_index_folder(out: Path, overwrite: bool) -> None:
    """Refuse an ``out`` that is a file, holds a complete index (without ``overwrite``) or holds
    anything that is not an index of ours."""
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} exists and is not a folder")
    if not out.is_dir() or not any(out.iterdir()):
        return
    ours = (
        (out / INFO_FILE).is_file() or (out / META_FILE).is_file() or (out / PARTIAL_DIR).is_dir()
    )
    if not ours:
        raise UserError(
            f"--out {out} is not empty and holds no index: refusing to write into a folder with "
            "other files"
        )
    if (out / META_FILE).is_file() and not (out / PARTIAL_DIR).exists() and not overwrite:
        raise UserError(
            f"--out {out} already holds a complete index; use --overwrite to replace it"
        )


def build_index(
    model: Any,
    split: Dataset,
    out: str | os.PathLike,
    *,
    kind: str = "flat",
    modality: str = "listing",
    attributes: str = "none",
    batch_size: int = DEFAULT_ENCODE_BATCH_SIZE,
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
    index_options: Mapping[str, Any] | None = None,
    describe: Mapping[str, Any] | None = None,
    overwrite: bool = False,
    show_progress: bool = True,
    on_batch: Callable[[int], None] | None = None,
    log: Callable[[str], None] = print,
    processes: Processes | None = None,
) -> IndexSummary:
    """Encode every row of ``split`` with ``model`` into an index folder ``out`` (resumable).

    Args:
        kind: ``flat`` (exact) or ``ivf`` / ``ivfpq`` / ``hnsw`` (approximate).
        modality: ``listing`` (photo + title), ``image`` or ``text``.
        attributes: ``none``, ``teacher`` (the ``teacher_attributes`` column) or ``generated``.
        index_options: ``RetrievalIndex`` options (``nlist``, ``nprobe``, ``pq_m``, ``hnsw_m``),
            validated before anything is encoded.
        describe: where the model and data came from, recorded in ``afmrl_index.json``.
        overwrite: start over, discarding an unfinished run and replacing a complete index.
        on_batch: called with the number of batches checkpointed so far (by this process), after
            each one.
        processes: the processes of a launch (:func:`~afmrl.retrieval.processes.
            launched_processes`); every one of them calls this with the same arguments, each
            encodes its part, the main one writes ``out``. Default: one process.
    """
    from afmrl.models import model_fingerprint

    start = time.perf_counter()
    procs = processes or Processes()
    check_choice(kind, INDEX_KINDS, "kind")
    check_choice(modality, MODALITIES, "modality")
    check_choice(attributes, ATTRIBUTE_SOURCES, "attributes")
    out = Path(out)
    check_index_folder(out, overwrite)
    options = dict(index_options or {})
    dim = int(model.config.embed_dim)
    RetrievalIndex(dim, kind, **_index_kwargs(kind, options, 1 << 20))  # validates the options now
    n = len(split)
    if n == 0:
        raise UserError("the split has no rows to index")
    if attributes == "teacher" and modality != "image" and TEACHER_COLUMN not in split.column_names:
        raise UserError(
            f"--attributes teacher: the split has no {TEACHER_COLUMN!r} column; "
            f"columns found: {split.column_names}"
        )
    ids = [_plain(v) for v in split["listing_id"]]
    manifest = {
        "model_fingerprint": model_fingerprint(model),
        "ids_sha256": ids_fingerprint(ids),
        "num_rows": n,
        "batch_size": batch_size,
        "modality": modality,
        "attributes": attributes,
        "max_new_tokens": max_new_tokens if attributes == "generated" else None,
    }
    if overwrite:
        procs.wait()  # every process has checked the folder before any of it goes
        if procs.main:
            shutil.rmtree(out / PARTIAL_DIR, ignore_errors=True)
        procs.wait()
    other = _other_process_counts(out / PARTIAL_DIR, procs.count)
    if other and procs.main:
        log(f"[index] {out / PARTIAL_DIR} also holds unfinished work of a run on "
            f"{' / '.join(map(str, other))} process(es): only a rerun on as many reuses it")  # fmt: skip
    part = procs.part(split)
    part_ids = ids if procs.count == 1 else [_plain(v) for v in part["listing_id"]]
    work = _part_work(out, manifest, procs, procs.rank, part_ids)
    total = math.ceil(len(part) / batch_size)
    done = work.open(total)
    if done:
        log(f"[index] {procs.label()}resuming: {done}/{total} batches already encoded in "
            f"{work.folder}")  # fmt: skip
    show = show_progress and procs.main  # one bar: the main process's part
    texts = _attribute_texts(
        model, part, modality, attributes, batch_size, max_new_tokens, work, show
    )
    view = part.select_columns(list(dict.fromkeys(["title", *columns_of(modality)])))
    with progress_bar(total=total, initial=done, desc="index", unit="batch", enabled=show) as bar:
        for batch in range(done, total):
            lo, hi = batch * batch_size, min(len(part), (batch + 1) * batch_size)
            _encode_shard(model, work, batch, view[lo:hi], part_ids[lo:hi],
                          texts[lo:hi] if texts is not None else None, modality, batch_size)  # fmt: skip
            bar.update(1)
            if on_batch is not None:
                on_batch(batch + 1)
    counts = procs.gather((total, done))  # with more than one process: all parts are encoded
    batches, reused = sum(c[0] for c in counts), sum(c[1] for c in counts)
    if procs.main:
        log(f"[index] batches: {batches} total, {reused} reused from an interrupted run, "
            f"{batches - reused} encoded now"
            + (f" ({procs.count} processes)" if procs.count > 1 else ""))  # fmt: skip
        shards = [(work, b) for b in range(total)]
        if procs.count > 1:
            shards = _all_part_shards(out, manifest, procs, split, batch_size)
        describe = dict(describe or {})
        if procs.count > 1:
            describe["processes"] = procs.count
        with building(out) as stage:
            _write_index_folder(stage, shards, dim, kind, options, describe, work)
    procs.wait()  # every process returns once the index is in place
    return IndexSummary(n, dim, kind, batches, reused, time.perf_counter() - start)


def _part_work(
    out: Path, manifest: Mapping[str, Any], procs: Processes, rank: int, part_ids: list
) -> ShardFolder:
    """The shard folder of process ``rank``: ``OUT/.partial`` itself for one process, else its
    part folder, whose manifest adds the part's rows (``part_ids``)."""
    hint = "use --overwrite to start over"
    if procs.count == 1:
        return ShardFolder(out / PARTIAL_DIR, manifest, restart_hint=hint)
    part = (rank, procs.count, ids_fingerprint(part_ids), len(part_ids))
    part_manifest = {**manifest, **dict(zip(_PART_KEYS, part, strict=True))}
    return ShardFolder(procs.part_folder(out / PARTIAL_DIR, rank), part_manifest, restart_hint=hint)


def _other_process_counts(partial: Path, count: int) -> list[int]:
    """Process counts, other than ``count``, of runs that left shard folders in ``partial``."""
    found = set()
    if (partial / ShardFolder.MANIFEST_FILE).is_file():
        found.add(1)
    for folder in partial.glob("part-*-of-*"):
        tail = folder.name.rpartition("-of-")[2]
        if folder.is_dir() and tail.isdigit():
            found.add(int(tail))
    return sorted(found - {count})


def _all_part_shards(
    out: Path, manifest: Mapping[str, Any], procs: Processes, split: Dataset, batch_size: int
) -> list[tuple[ShardFolder, int]]:
    """``(folder, shard)`` of every part in rank order (the split's row order), each checked
    complete."""
    shards = []
    for rank in range(procs.count):
        part_ids = [_plain(v) for v in procs.part(split, rank)["listing_id"]]
        work = _part_work(out, manifest, procs, rank, part_ids)
        total = math.ceil(len(part_ids) / batch_size)
        done = work.open(total)
        if done != total:
            raise RuntimeError(f"{work.folder}: {done} of {total} batches done after the barrier")
        shards += [(work, b) for b in range(total)]
    return shards


def _encode_shard(model, work, batch, rows, ids, attrs, modality, batch_size) -> None:
    """Encode one batch of rows and checkpoint it as shard ``batch``."""
    emb = encode_batch(model, rows, modality, attrs, batch_size)
    columns = {"ids": ids, "titles": list(rows["title"])}
    if attrs is not None:
        columns["attributes"] = attrs
    work.write(batch, columns, {"embeddings": emb})


def _write_index_folder(stage, shards, dim, kind, options, describe, work):
    """The index, ``listings.jsonl`` and ``afmrl_index.json`` from the finished shards."""
    index = _fill_index(shards, dim, kind, options)
    # What the vectors were made with, kept in index.json: `afmrl search` refuses another model.
    model = (describe or {}).get("model")
    index.built_with = {"model": model, "model_fingerprint": work.manifest["model_fingerprint"]}
    index.save(stage)
    _write_listings(stage / LISTINGS_FILE, shards)
    meta = json.loads((stage / META_FILE).read_text(encoding="utf-8"))
    # The settings: the manifest of one process (a part's manifest adds where its rows are).
    settings = {k: v for k, v in work.manifest.items() if k not in _PART_KEYS}
    info = {
        "format": INFO_FORMAT,
        **dict(describe or {}),
        **settings,
        "kind": kind,
        "params": index.params,
        "count": index.count,
        "dim": index.dim,
        "index_sha256": meta["sha256"],
        "listings_file": LISTINGS_FILE,
    }
    write_json_atomic(stage / INFO_FILE, info, indent=1)
    return index


def _attribute_texts(model, split, modality, attributes, batch_size, max_new_tokens, work, show):
    """One attribute text per row (or ``None``) for the listing text of every batch."""
    if attributes == "none" or modality == "image":
        return None
    if attributes == "teacher":
        return [canonical_attribute_text(v or "") for v in split[TEACHER_COLUMN]]
    return generate_attributes(
        model,
        split,
        work_dir=work.folder / "attributes",
        batch_size=batch_size,
        max_new_tokens=max_new_tokens,
        desc="index: extract",
        show_progress=show,
    ).texts


def _index_kwargs(kind: str, options: Mapping[str, Any], count: int) -> dict[str, Any]:
    """Constructor options for ``kind`` (IVF ``nlist`` defaults to about sqrt(count))."""
    kwargs: dict[str, Any] = {}
    if kind in ("ivf", "ivfpq"):
        nlist = options.get("nlist") or min(
            default_nlist(count), max(1, count // MIN_POINTS_PER_CENTROID)
        )
        kwargs.update(nlist=nlist, nprobe=options.get("nprobe") or 16)
        if kind == "ivfpq" and options.get("pq_m"):
            kwargs["pq_m"] = options["pq_m"]
        # Past RAM (RetrievalIndex): inverted lists in a memory-mapped file, and/or shards.
        kwargs.update({k: options[k] for k in ("lists", "shards") if options.get(k)})
    if kind == "hnsw" and options.get("hnsw_m"):
        kwargs["hnsw_m"] = options["hnsw_m"]
    return kwargs


def _fill_index(
    shards: Sequence[tuple[ShardFolder, int]], dim: int, kind: str, options: Mapping[str, Any]
) -> RetrievalIndex:
    """A ``RetrievalIndex`` filled from the shards, in order, one shard in memory at a time."""
    sizes = [len(work.read(b, mmap=True)[1]["embeddings"]) for work, b in shards]
    n = sum(sizes)
    index = RetrievalIndex(dim, kind, **_index_kwargs(kind, options, n))
    if kind in ("ivf", "ivfpq"):
        size = min(n, default_train_size(index.params["nlist"], kind == "ivfpq"))
        rows = np.sort(np.random.default_rng(0).choice(n, size=size, replace=False))
        sample, offset = [], 0
        for (work, b), count in zip(shards, sizes, strict=True):
            local = rows[(rows >= offset) & (rows < offset + count)] - offset
            if len(local):
                sample.append(work.read(b, mmap=True)[1]["embeddings"][local])
            offset += count
        index.train(np.concatenate(sample), expected_count=n)
    index.reserve(n)
    for work, b in shards:
        rows, arrays = work.read(b)
        index.add(arrays["embeddings"], rows["ids"])
    return index


def _write_listings(path: Path, shards: Sequence[tuple[ShardFolder, int]]) -> None:
    """``listings.jsonl``: one ``{"id", "title"[, "attributes"]}`` per row, insertion order."""
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        for work, b in shards:
            rows, _ = work.read(b, mmap=True)
            attrs = rows.get("attributes") or [None] * len(rows["ids"])
            for i, title, attr in zip(rows["ids"], rows["titles"], attrs, strict=True):
                item = {"id": i, "title": title}
                if attr is not None:
                    item["attributes"] = attr
                f.write(json.dumps(item, ensure_ascii=False) + "\n")


def _plain(value: Any) -> Any:
    """numpy scalars -> Python values (ids are str or int)."""
    return value.item() if hasattr(value, "item") else value


__all__ = [
    "INFO_FILE",
    "LISTINGS_FILE",
    "PARTIAL_DIR",
    "IndexSummary",
    "build_index",
    "check_index_folder",
]
