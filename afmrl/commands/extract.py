"""``afmrl extract``: add a generated-attributes column to every split of a catalogue.

Greedy, batched generation with the checkpoint's extractor; progress bar; resumable (finished
shards are kept in ``--work-dir``, default ``OUT.partial``, and a rerun after a kill continues
from them). The output is a ``DatasetDict`` (``save_to_disk``) that ``load_catalog`` reads, with
``extraction.json`` beside it: rows, invalid outputs and seconds per split.
"""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="AFMRL checkpoint with an extractor")
    parser.add_argument("--data", required=True, help="catalogue: save_to_disk folder, CSV, Hub id")
    parser.add_argument("--out", required=True, help="folder for the catalogue with the new column")
    parser.add_argument(
        "--column", default="attributes", help="name of the new column (default: %(default)s)"
    )
    parser.add_argument(
        "--splits", nargs="+", default=None, help="only these splits get the column (default: all)"
    )
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument(
        "--work-dir", default=None, help="finished shards, for resuming (default: OUT.partial)"
    )
    parser.add_argument("--keep-work", action="store_true", help="keep the shards afterwards")
    parser.add_argument(
        "--map-column",
        action="append",
        default=[],
        metavar="CONTRACT=YOURS",
        help="map a catalogue column to a contract name, e.g. title=product_name (repeatable)",
    )
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")


def run(args: argparse.Namespace) -> int:
    import json
    import shutil
    import time
    from pathlib import Path

    import torch
    from datasets import DatasetDict

    from afmrl.catalog import load_catalog, parse_column_mapping
    from modeling_afmrl.modeling_afmrl import AFMRLModel
    from trainers.extraction import extract_split

    if args.threads > 0:
        torch.set_num_threads(args.threads)
    if args.batch_size < 1:
        print(f"error: --batch-size must be >= 1, got {args.batch_size}")
        return 2
    out = Path(args.out)
    if out.resolve() == Path(args.data).resolve():
        print("error: --out must differ from --data (the catalogue is read while writing)")
        return 2
    data = load_catalog(args.data, columns=parse_column_mapping(args.map_column))
    splits = list(data) if args.splits is None else args.splits
    unknown = [s for s in splits if s not in data]
    if unknown:
        print(f"error: no split {unknown[0]!r} in {args.data} (splits: {list(data)})")
        return 2
    model = AFMRLModel.from_pretrained(args.model)
    if model.extractor is None:
        print(f"error: {args.model} has no attribute extractor")
        return 2
    model.eval()
    work = Path(args.work_dir) if args.work_dir else out.with_name(out.name + ".partial")
    model_id = str(Path(args.model).resolve()) if Path(args.model).exists() else args.model
    report: dict[str, dict] = {}
    result = {}
    for name, split in data.items():
        if name not in splits:
            result[name] = split
            continue
        t0 = time.perf_counter()
        output = extract_split(
            model,
            split,
            work / name,
            batch_size=args.batch_size,
            model_id=model_id,
            max_new_tokens=args.max_new_tokens,
        )
        if args.column in split.column_names:
            split = split.remove_columns(args.column)
        result[name] = split.add_column(args.column, output.texts)
        report[name] = {
            "rows": len(output.texts),
            "invalid": output.num_invalid,
            "resumed_rows": output.resumed_rows,
            "seconds": round(time.perf_counter() - t0, 1),
        }
        print(
            f"[extract] {name}: {len(output.texts)} rows, {output.num_invalid} invalid outputs, "
            f"{output.resumed_rows} resumed"
        )
    tmp = out.with_name(out.name + ".writing")
    if tmp.exists():
        shutil.rmtree(tmp)
    DatasetDict(result).save_to_disk(str(tmp))
    (tmp / "extraction.json").write_text(
        json.dumps({"model": model_id, "column": args.column, "splits": report}, indent=2) + "\n"
    )
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    if not args.keep_work:
        shutil.rmtree(work, ignore_errors=True)
    print(f"[extract] wrote {out}")
    return 0
