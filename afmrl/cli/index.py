"""``afmrl index``: encode a catalogue split into a faiss index folder, streaming and resumable.

See :mod:`afmrl.retrieval.indexing` for the folder layout, the checkpointing and the resume rules.
Index options are checked before anything is encoded. Under ``torchrun --nproc-per-node N -m afmrl
index ...`` (or ``accelerate launch``) each process encodes its part of the split and the main one
writes the index (:mod:`afmrl.retrieval.processes`).
"""

from __future__ import annotations

import argparse

from afmrl.cli.arguments import (
    add_batch_arguments,
    add_column_mapping,
    add_no_progress,
    check_out,
    positive_int,
)
from afmrl.retrieval.attributes import ATTRIBUTE_SOURCES
from afmrl.retrieval.encoding import DEFAULT_ENCODE_BATCH_SIZE, MODALITIES
from afmrl.retrieval.index import INDEX_KINDS, INDEX_LISTS, IVF_KINDS


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="checkpoint folder (or Hub id)")
    parser.add_argument(
        "--data", required=True, help="catalogue: save_to_disk folder, CSV/JSONL, Hub id"
    )
    parser.add_argument("--out", required=True, help="index folder to write")
    parser.add_argument("--split", default="gallery", help="split to index (default: %(default)s)")
    parser.add_argument(
        "--kind",
        choices=INDEX_KINDS,
        default="flat",
        help="flat = exact; ivf / ivfpq / hnsw = approximate, for large galleries "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--modality",
        choices=MODALITIES,
        default="listing",
        help="what is embedded: photo+title, photo only, or title only (default: %(default)s)",
    )
    parser.add_argument(
        "--attributes",
        choices=ATTRIBUTE_SOURCES,
        default="none",
        help="append attributes to each listing's text: none, teacher (teacher_attributes column) "
        "or generated (the model's extractor) (default: %(default)s)",
    )
    add_batch_arguments(
        parser, DEFAULT_ENCODE_BATCH_SIZE, "listings per batch (and per checkpoint shard)"
    )
    parser.add_argument(
        "--nlist", type=positive_int, default=None, help="IVF cells (default: about sqrt(N))"
    )
    parser.add_argument(
        "--nprobe",
        type=positive_int,
        default=16,
        help="IVF cells visited per query, recorded as the index's default (afmrl search "
        "--nprobe overrides it)",
    )
    parser.add_argument(
        "--pq-m", type=positive_int, default=None, help="IVF-PQ bytes per vector (divides dim)"
    )
    parser.add_argument("--hnsw-m", type=positive_int, default=32, help="HNSW graph degree")
    parser.add_argument(
        "--lists",
        choices=INDEX_LISTS,
        default="ram",
        help="ivf / ivfpq: keep the inverted lists in RAM, or in a memory-mapped file beside the "
        "index (filled block by block; for galleries past RAM) (default: %(default)s)",
    )
    parser.add_argument(
        "--shards",
        type=positive_int,
        default=1,
        help="ivf / ivfpq: deal the vectors over this many faiss indexes (one file each), searched "
        "together with faiss.IndexShards (default: %(default)s)",
    )
    add_column_mapping(parser)
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="start over: discard an interrupted run's checkpoint and replace an existing index",
    )
    parser.add_argument("--threads", type=positive_int, default=None, help="torch CPU threads")
    add_no_progress(parser)
    # Testing aid: SIGKILL this process once N batches are checkpointed (a real, uncatchable crash).
    parser.add_argument(
        "--debug-kill-after-batches", type=int, default=None, help=argparse.SUPPRESS
    )


def run(args: argparse.Namespace) -> int:
    import os
    import signal
    from pathlib import Path

    from afmrl.data import load_catalog, parse_column_mapping
    from afmrl.models import load_model
    from afmrl.retrieval.indexing import build_index, check_index_folder
    from afmrl.retrieval.processes import launched_processes
    from afmrl.runtime import torch_settings

    if args.kind not in IVF_KINDS and (args.lists != "ram" or args.shards != 1):
        from afmrl.errors import UserError

        raise UserError(f"--lists ondisk and --shards need --kind ivf or ivfpq, not {args.kind}")
    check_out(args.out, inputs=[args.model, args.data], ours=lambda _: True, overwrite=True)
    check_index_folder(Path(args.out), args.overwrite)
    split = load_catalog(args.data, columns=parse_column_mapping(args.column), splits=[args.split])
    model = load_model(args.model, need_extractor=args.attributes == "generated", what="--model")

    def on_batch(done: int) -> None:
        if args.debug_kill_after_batches is not None and done >= args.debug_kill_after_batches:
            os.kill(os.getpid(), signal.SIGKILL)

    with torch_settings(args.threads), launched_processes() as processes:
        summary = build_index(
            model,
            split[args.split],
            args.out,
            kind=args.kind,
            modality=args.modality,
            attributes=args.attributes,
            batch_size=args.batch_size,
            max_new_tokens=args.max_new_tokens,
            index_options={
                "nlist": args.nlist,
                "nprobe": args.nprobe,
                "pq_m": args.pq_m,
                "hnsw_m": args.hnsw_m,
                "lists": args.lists,
                "shards": args.shards,
            },
            describe={
                "model": os.path.abspath(args.model) if Path(args.model).exists() else args.model,
                "data": os.path.abspath(args.data) if Path(args.data).exists() else args.data,
                "split": args.split,
            },
            overwrite=args.overwrite,
            show_progress=not args.no_progress,
            on_batch=on_batch,
            processes=processes,
        )
    if processes.main:
        print(
            f"[index] wrote {args.out}: {summary.count} vectors of dim {summary.dim}, kind "
            f"{summary.kind} ({summary.seconds:.0f} s)"
        )
    return 0
