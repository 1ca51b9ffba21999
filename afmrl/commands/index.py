"""``afmrl index``: encode a catalogue split into a faiss index, streaming and resumable.

Rows are read, encoded and written batch by batch: only one batch of images is ever in memory.
Each encoded batch is checkpointed in ``OUT/.partial/`` as ``batch-NNNNNN.npy`` (the ``[B, D]``
float32 embeddings) + ``batch-NNNNNN.json`` (their listing ids, titles, attributes), each written
atomically (temporary file, fsync, rename), then ``progress.json`` records the batch as done. A run
that is interrupted (killed, out of power) and started again with the same settings reuses every
finished batch and encodes only the rest; the settings (model weights, rows, batch size, modality,
attributes) are checked first, so a checkpoint is never mixed with another model's vectors.

When every batch is done the index is built from the shards (:class:`benchmarks.index.
RetrievalIndex`; IVF kinds are trained on a sample read from the shards) and saved atomically with
``RetrievalIndex.save``, next to ``listings.jsonl`` (id, title per row, for ``afmrl search``) and
``afmrl_index.json`` (how the gallery was encoded); then ``.partial/`` is removed.
"""

from __future__ import annotations

import argparse

PARTIAL_DIR = ".partial"
PROGRESS_FILE = "progress.json"
INFO_FILE = "afmrl_index.json"
LISTINGS_FILE = "listings.jsonl"
INFO_FORMAT = "afmrl-index-info"
CHECKPOINT_VERSION = 1


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="checkpoint folder (or Hub id)")
    parser.add_argument(
        "--data", required=True, help="catalogue: save_to_disk folder, CSV/JSONL, Hub id"
    )
    parser.add_argument("--out", required=True, help="index folder to write")
    parser.add_argument("--split", default="gallery", help="split to index (default: %(default)s)")
    parser.add_argument(
        "--kind",
        choices=("flat", "ivf", "ivfpq", "hnsw"),
        default="flat",
        help="flat = exact; ivf / ivfpq / hnsw = approximate, for large galleries "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--modality",
        choices=("listing", "image", "text"),
        default="listing",
        help="what is embedded: photo+title, photo only, or title only (default: %(default)s)",
    )
    parser.add_argument(
        "--attributes",
        choices=("none", "teacher", "generated"),
        default="none",
        help="append attributes to each listing's text: none, teacher (teacher_attributes column) "
        "or generated (the model's extractor, per batch) (default: %(default)s)",
    )
    parser.add_argument(
        "--batch-size", type=int, default=32, help="listings per batch (and per checkpoint shard)"
    )
    parser.add_argument(
        "--max-new-tokens",
        type=int,
        default=64,
        help="generation budget per listing for --attributes generated (default: %(default)s)",
    )
    parser.add_argument(
        "--nlist", type=int, default=None, help="IVF cells (default: about sqrt(N))"
    )
    parser.add_argument("--nprobe", type=int, default=16, help="IVF cells visited per query")
    parser.add_argument("--pq-m", type=int, default=None, help="IVF-PQ bytes per vector")
    parser.add_argument("--hnsw-m", type=int, default=32, help="HNSW graph degree")
    parser.add_argument(
        "--column",
        action="append",
        default=[],
        metavar="CONTRACT=YOURS",
        help="map a catalogue column to a contract name, e.g. title=product_name (repeatable)",
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="start over: discard an interrupted run's checkpoint and replace an existing index",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    # Testing aid: SIGKILL this process once N batches are checkpointed (a real, uncatchable crash).
    parser.add_argument(
        "--debug-kill-after-batches", type=int, default=None, help=argparse.SUPPRESS
    )


def run(args: argparse.Namespace) -> int:
    import sys

    def fail(message: str) -> int:
        print(f"afmrl index: error: {message}", file=sys.stderr)
        return 2

    if args.batch_size < 1:
        return fail(f"--batch-size must be a positive integer, got {args.batch_size}")
    try:
        return _index(args)
    except (ValueError, FileNotFoundError, NotADirectoryError, FileExistsError) as err:
        return fail(str(err))


# ----------------------------------------------------------------------------------- the run


def _index(args: argparse.Namespace) -> int:
    import math
    import os
    import shutil
    import time
    from pathlib import Path

    from afmrl.catalog import load_catalog, parse_column_mapping
    from benchmarks.index import META_FILE
    from benchmarks.retrieval import (
        ids_fingerprint,
        load_model,
        modality_columns,
        model_fingerprint,
    )

    start = time.perf_counter()
    out = Path(args.out)
    partial = out / PARTIAL_DIR
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"--out {out} exists and is not a folder")
    if (out / META_FILE).is_file() and not partial.exists() and not args.overwrite:
        raise FileExistsError(
            f"{out} already holds a complete index; use --overwrite to replace it"
        )
    if args.overwrite and partial.exists():
        shutil.rmtree(partial)

    columns = parse_column_mapping(args.column)
    ds = load_catalog(args.data, columns=columns, splits=[args.split])[args.split]
    n = len(ds)
    if n == 0:
        raise ValueError(f"split {args.split!r} of {args.data} has no rows to index")
    total = math.ceil(n / args.batch_size)
    ids = [_plain(v) for v in ds["listing_id"]]
    model = load_model(args.model)
    settings = {
        "version": CHECKPOINT_VERSION,
        "model": os.path.abspath(args.model) if Path(args.model).exists() else args.model,
        "model_fingerprint": model_fingerprint(model),
        "data": os.path.abspath(args.data) if Path(args.data).exists() else args.data,
        "split": args.split,
        "rows": n,
        "ids_sha256": ids_fingerprint(ids),
        "batch_size": args.batch_size,
        "modality": args.modality,
        "attributes": args.attributes,
        "max_new_tokens": args.max_new_tokens if args.attributes == "generated" else None,
    }
    if args.attributes == "teacher" and "teacher_attributes" not in ds.column_names:
        raise ValueError(
            f"--attributes teacher: split {args.split!r} has no 'teacher_attributes' column; "
            f"columns found: {ds.column_names}"
        )
    done = _resume(partial, settings, ids, args.batch_size, total)
    reused = done
    if done:
        print(f"[index] resuming: {done}/{total} batches already encoded in {partial}", flush=True)
    read = list(dict.fromkeys(["title", *modality_columns(args.modality)]))
    if args.attributes == "generated" and "image" not in read:
        read.append("image")  # the extractor reads the photo even for a title-only index
    if args.attributes == "teacher" and args.modality != "image":
        read.append("teacher_attributes")
    view = ds.select_columns(read)
    bar = _bar(total, done, args.no_progress)
    encoded = 0
    for batch in range(done, total):
        lo, hi = batch * args.batch_size, min(n, (batch + 1) * args.batch_size)
        rows = view[lo:hi]
        emb, attrs = _encode_rows(
            model, rows, args.modality, args.attributes, args.batch_size, args.max_new_tokens
        )
        _write_shard(partial, batch, emb, ids[lo:hi], rows.get("title"), attrs)
        _write_progress(partial, settings, batch + 1, total)
        encoded += 1
        if bar is not None:
            bar.update(1)
        if args.debug_kill_after_batches is not None and batch + 1 >= args.debug_kill_after_batches:
            _kill_self()
    if bar is not None:
        bar.close()
    print(
        f"[index] batches: {total} total, {reused} reused from an interrupted run, "
        f"{encoded} encoded now",
        flush=True,
    )
    index = _build_index(partial, total, args)
    _write_listings(out, partial, total)
    index.save(out)
    _write_info(out, settings, index, args.kind)
    shutil.rmtree(partial)
    print(
        f"[index] wrote {out}: {index.count} vectors of dim {index.dim}, kind {index.kind} "
        f"({time.perf_counter() - start:.0f} s)"
    )
    return 0


def _encode_rows(
    model, rows: dict, modality: str, attributes: str, batch_size: int, max_new_tokens: int
):
    """One batch -> (``[B, D]`` float32, attribute strings or None)."""
    from benchmarks.retrieval import encode_batch, extract_attribute_strings

    attrs = None
    if modality != "image":
        if attributes == "teacher":
            attrs = ["" if v is None else str(v) for v in rows["teacher_attributes"]]
        elif attributes == "generated":
            attrs = extract_attribute_strings(
                model, rows["image"], rows["title"], batch_size, max_new_tokens
            )
    return encode_batch(model, rows, modality, attrs, batch_size), attrs


# ---------------------------------------------------------------------------- checkpointing


def _resume(partial, settings: dict, ids: list, batch_size: int, total: int) -> int:
    """How many leading batches of a previous run can be reused (0 when starting fresh).

    Raises ``ValueError`` when ``partial`` holds a run with other settings.
    """
    import json

    progress_path = partial / PROGRESS_FILE
    if not progress_path.is_file():
        return 0
    for stale in partial.glob(".tmp-*"):  # an interrupted write; never counted as done
        stale.unlink(missing_ok=True)
    try:
        progress = json.loads(progress_path.read_text(encoding="utf-8"))
        saved = progress["settings"]
        done = int(progress["batches_done"])
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ValueError(
            f"{progress_path} is unreadable ({err}); use --overwrite to start over"
        ) from err
    # Where the model and data live may change; what they hold (fingerprints) may not.
    changed = [k for k in settings if k not in ("model", "data") and saved.get(k) != settings[k]]
    if changed:
        detail = "; ".join(f"{k}: {saved.get(k)!r} then, {settings[k]!r} now" for k in changed)
        raise ValueError(
            f"{partial} holds an interrupted run with other settings ({detail}); rerun with the "
            "same settings to resume, or use --overwrite to start over"
        )
    for batch in range(min(done, total)):
        if not _shard_ok(partial, batch, ids[batch * batch_size : (batch + 1) * batch_size]):
            print(f"[index] checkpoint shard {batch} is missing or damaged; re-encoding from it")
            return batch
    return min(done, total)


def _shard_ok(partial, batch: int, ids: list) -> bool:
    import json

    import numpy as np

    vec, meta = _shard_paths(partial, batch)
    try:
        x = np.load(vec, mmap_mode="r", allow_pickle=False)
        rows = json.loads(meta.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return x.ndim == 2 and len(x) == len(ids) and rows.get("ids") == ids


def _shard_paths(partial, batch: int):
    return partial / f"batch-{batch:06d}.npy", partial / f"batch-{batch:06d}.json"


def _write_shard(partial, batch: int, emb, ids: list, titles, attrs) -> None:
    """The batch's rows (json) then its vectors (npy), each atomically."""
    import json

    import numpy as np

    from benchmarks.atomic_io import write_text_atomic

    partial.mkdir(parents=True, exist_ok=True)
    vec, meta = _shard_paths(partial, batch)
    rows = {"ids": ids, "titles": list(titles) if titles is not None else None, "attributes": attrs}
    write_text_atomic(meta, json.dumps(rows))
    tmp = partial / f".tmp-{vec.name}"
    with open(tmp, "wb") as f:
        np.save(f, np.ascontiguousarray(emb, dtype=np.float32), allow_pickle=False)
        f.flush()
        _fsync(f)
    tmp.replace(vec)


def _write_progress(partial, settings: dict, done: int, total: int) -> None:
    import json

    from benchmarks.atomic_io import write_text_atomic

    payload = {"settings": settings, "batches_done": done, "batches_total": total}
    write_text_atomic(partial / PROGRESS_FILE, json.dumps(payload, indent=1))


def _fsync(f) -> None:
    import os

    os.fsync(f.fileno())


def _kill_self() -> None:
    import os
    import signal

    os.kill(os.getpid(), signal.SIGKILL)


# --------------------------------------------------------------------------------- building


def _build_index(partial, total: int, args: argparse.Namespace):
    """A ``RetrievalIndex`` filled from the shards, one shard in memory at a time."""
    import json

    import numpy as np

    from benchmarks.index import MIN_POINTS_PER_CENTROID, RetrievalIndex, default_nlist
    from benchmarks.index import default_train_size as train_size

    shapes = [np.load(_shard_paths(partial, b)[0], mmap_mode="r").shape for b in range(total)]
    n, dim = sum(s[0] for s in shapes), shapes[0][1]
    options: dict = {}
    if args.kind in ("ivf", "ivfpq"):
        nlist = args.nlist or min(default_nlist(n), max(1, n // MIN_POINTS_PER_CENTROID))
        options.update(nlist=nlist, nprobe=args.nprobe)
        if args.kind == "ivfpq" and args.pq_m:
            options["pq_m"] = args.pq_m
    if args.kind == "hnsw":
        options["hnsw_m"] = args.hnsw_m
    index = RetrievalIndex(dim, args.kind, **options)
    if args.kind in ("ivf", "ivfpq"):
        size = min(n, train_size(index.params["nlist"], args.kind == "ivfpq"))
        rows = np.sort(np.random.default_rng(0).choice(n, size=size, replace=False))
        sample, offset = [], 0
        for b, shape in enumerate(shapes):
            local = rows[(rows >= offset) & (rows < offset + shape[0])] - offset
            if len(local):
                sample.append(np.load(_shard_paths(partial, b)[0], mmap_mode="r")[local])
            offset += shape[0]
        index.train(np.concatenate(sample), expected_count=n)
    index.reserve(n)
    for b in range(total):
        vec, meta = _shard_paths(partial, b)
        ids = json.loads(meta.read_text(encoding="utf-8"))["ids"]
        index.add(np.load(vec, allow_pickle=False), ids)
    return index


def _write_listings(out, partial, total: int) -> None:
    """``listings.jsonl``: one ``{"id", "title"[, "attributes"]}`` per row, insertion order."""
    import json
    import os

    out.mkdir(parents=True, exist_ok=True)
    tmp = out / f".tmp-{LISTINGS_FILE}"
    with open(tmp, "w", encoding="utf-8") as f:
        for b in range(total):
            rows = json.loads(_shard_paths(partial, b)[1].read_text(encoding="utf-8"))
            titles = rows.get("titles") or [None] * len(rows["ids"])
            attrs = rows.get("attributes") or [None] * len(rows["ids"])
            for i, title, attr in zip(rows["ids"], titles, attrs, strict=True):
                item = {"id": i, "title": title}
                if attr is not None:
                    item["attributes"] = attr
                f.write(json.dumps(item, ensure_ascii=False) + "\n")
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(out / LISTINGS_FILE)


def _write_info(out, settings: dict, index, kind: str) -> None:
    import json

    from benchmarks.atomic_io import write_text_atomic
    from benchmarks.index import META_FILE

    meta = json.loads((out / META_FILE).read_text(encoding="utf-8"))
    info = {
        "format": INFO_FORMAT,
        **{k: v for k, v in settings.items() if k != "version"},
        "kind": kind,
        "count": index.count,
        "dim": index.dim,
        "index_sha256": meta["sha256"],
        "listings_file": LISTINGS_FILE,
    }
    write_text_atomic(out / INFO_FILE, json.dumps(info, indent=1))


def _bar(total: int, done: int, disabled: bool):
    if disabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=done, desc="index", unit="batch")


def _plain(value):
    """numpy scalars -> Python values (ids are str or int)."""
    return value.item() if hasattr(value, "item") else value
