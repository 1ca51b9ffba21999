"""``afmrl extract``: add a generated-attributes column to every split of a catalogue.

Greedy, batched generation with the checkpoint's extractor through
:func:`afmrl.retrieval.attributes.generate_attributes` -- the function ``afmrl evaluate --attributes
generated`` and ``afmrl index`` use, with its policy for malformed output (canonical text, or ``""``
when malformed) -- so the column is exactly what they see. Resumable: finished shards are kept in
``--work-dir`` (default ``OUT.partial``) and a rerun after a kill continues from them. The output is
a ``DatasetDict`` (``save_to_disk``) that ``load_catalog`` reads, built beside ``--out`` and swapped in
when complete, with ``extraction.json``: rows, malformed outputs and seconds per split. A train
split's second listing (``pos_image`` / ``pos_title``) gets its own column ``pos_<column>``.

Under ``torchrun --nproc-per-node N -m afmrl extract ...`` (or ``accelerate launch``) each process
generates its part of every split (shards in ``WORK/<split>/part-RRRRR-of-NNNNN``) and the main
process writes ``--out`` alone (:mod:`afmrl.retrieval.processes`).
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
from afmrl.retrieval.attributes import DEFAULT_GENERATION_BATCH_SIZE

REPORT_FILE = "extraction.json"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="AFMRL checkpoint with an extractor")
    parser.add_argument("--data", required=True, help="catalogue: save_to_disk folder, CSV, Hub id")
    parser.add_argument("--out", required=True, help="folder for the catalogue with the new column")
    add_column_mapping(parser)
    parser.add_argument(
        "--attributes-column",
        default="attributes",
        help="name of the new column (default: %(default)s)",
    )
    parser.add_argument(
        "--splits", nargs="+", default=None, help="only these splits get the column (default: all)"
    )
    add_batch_arguments(parser, DEFAULT_GENERATION_BATCH_SIZE, "listings per generate call")
    parser.add_argument(
        "--no-pos-view",
        action="store_true",
        help="do not also extract the second listing of train pairs (pos_image/pos_title -> "
        "pos_<column>, the attributes training appends to that view)",
    )
    parser.add_argument(
        "--work-dir", default=None, help="finished shards, for resuming (default: OUT.partial)"
    )
    parser.add_argument("--keep-work", action="store_true", help="keep the shards afterwards")
    parser.add_argument("--threads", type=positive_int, default=None, help="torch CPU threads")
    parser.add_argument(
        "--overwrite", action="store_true", help="replace an earlier afmrl extract output in --out"
    )
    add_no_progress(parser)


def run(args: argparse.Namespace) -> int:
    import shutil
    import time
    from pathlib import Path

    out = check_out(
        args.out,
        inputs=[args.model, args.data],
        ours=lambda folder: (folder / REPORT_FILE).is_file(),
        overwrite=args.overwrite,
    )
    from datasets import DatasetDict

    from afmrl.data import load_catalog, parse_column_mapping
    from afmrl.errors import UserError
    from afmrl.io import building, write_json_atomic
    from afmrl.models import load_model
    from afmrl.retrieval.attributes import generate_attributes
    from afmrl.retrieval.processes import launched_processes
    from afmrl.runtime import torch_settings

    data = load_catalog(args.data, columns=parse_column_mapping(args.column))
    splits = list(data) if args.splits is None else args.splits
    unknown = [s for s in splits if s not in data]
    if unknown:
        raise UserError(f"--splits: no split {unknown[0]!r} in {args.data} (splits: {list(data)})")
    model = load_model(args.model, need_extractor=True, what="--model")
    work = Path(args.work_dir) if args.work_dir else Path(f"{out}.partial")
    report: dict[str, dict] = {}
    result = {}
    with torch_settings(args.threads), launched_processes() as processes:
        for name, split in data.items():
            if name not in splits:
                result[name] = split
                continue
            t0 = time.perf_counter()
            report[name] = {}
            views = [("", "image", "title")]
            if not args.no_pos_view and {"pos_image", "pos_title"} <= set(split.column_names):
                # The second view of a pair may show another listing (cross-seller pairs): it
                # gets its own attributes, which training appends to that view.
                views.append(("pos_", "pos_image", "pos_title"))
            for prefix, image_column, title_column in views:
                column = f"{prefix}{args.attributes_column}"
                generated = generate_attributes(
                    model,
                    split,
                    work_dir=work / f"{name}{'-pos' if prefix else ''}",
                    batch_size=args.batch_size,
                    max_new_tokens=args.max_new_tokens,
                    image_column=image_column,
                    title_column=title_column,
                    desc=f"extract {name} {image_column}",
                    show_progress=not args.no_progress,
                    processes=processes,
                )
                if column in split.column_names:
                    split = split.remove_columns(column)
                split = split.add_column(column, generated.texts)
                report[name][column] = {
                    "rows": len(generated.texts),
                    "malformed": generated.num_invalid,
                    "resumed_rows": generated.resumed_rows,
                }
                if processes.main:
                    print(
                        f"[extract] {name} -> {column}: {len(generated.texts)} rows, "
                        f"{generated.num_invalid} malformed outputs (empty text), "
                        f"{generated.resumed_rows} resumed",
                        flush=True,
                    )
            report[name]["seconds"] = round(time.perf_counter() - t0, 1)
            result[name] = split
        if processes.main:
            with building(out) as stage:
                DatasetDict(result).save_to_disk(str(stage))
                write_json_atomic(
                    stage / REPORT_FILE,
                    {"model": str(args.model), "column": args.attributes_column, "splits": report},
                )
            if not args.keep_work:
                shutil.rmtree(work, ignore_errors=True)
            print(f"[extract] wrote {out}")
        processes.wait()  # every process returns once the output is in place
    return 0
