"""``afmrl evaluate``: retrieval metrics of one or more checkpoints on a catalogue's eval splits.

Encodes the query and gallery splits (``--split test``: ``query`` / ``gallery``; ``--split
validation``: ``validation_query`` / ``validation_gallery``), searches the gallery exactly (faiss),
scores Recall@K, mAP@10, MRR, nDCG@10 (and the same restricted to each query's product family), and
writes ``OUT/metrics.json``, ``OUT/report.md`` and ``OUT/recall_at_k.png``. ``--compare`` adds more
checkpoints to the same table, ``--baselines`` the zero-shot baselines (the untrained embedded
default, one modality at a time). See :mod:`benchmarks.retrieval`.
"""

from __future__ import annotations

import argparse

SPLITS = ("test", "validation")
TASKS = ("listing", "image", "text", "attributes")
ATTRIBUTES = ("none", "teacher", "generated")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="checkpoint folder (or Hub id) to evaluate")
    parser.add_argument(
        "--data", required=True, help="catalogue: save_to_disk folder, CSV/JSONL, Hub id"
    )
    parser.add_argument(
        "--out", required=True, help="folder for metrics.json, report.md, recall_at_k.png"
    )
    parser.add_argument(
        "--split",
        choices=SPLITS,
        default="test",
        help="test = query/gallery, validation = validation_query/validation_gallery "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--task",
        choices=TASKS,
        default="listing",
        help="listing = photo+title -> photo+title, image = photo -> photo, text = title -> photo, "
        "attributes = the extractor's attributes scored against gold_attributes "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--attributes",
        choices=ATTRIBUTES,
        default="none",
        help="append attributes to the listing text: none, teacher (the teacher_attributes column) "
        "or generated (each model's extractor, run on both splits and cached in OUT/cache) "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--compare", nargs="+", default=[], metavar="MODEL", help="more checkpoints, same table"
    )
    parser.add_argument(
        "--baselines",
        action="store_true",
        help="add the zero-shot baselines (title-only MiniLM, image-only EfficientNet-Lite0, "
        "their untrained fusion)",
    )
    parser.add_argument(
        "--baseline-model",
        default=None,
        help="an untrained embedded default (afmrl init) for --baselines (default: build one in a "
        "temporary folder, about 10 s)",
    )
    parser.add_argument("--batch-size", type=int, default=32, help="listings per forward pass")
    parser.add_argument(
        "--depth", type=int, default=100, help="ranked list length per query (default: %(default)s)"
    )
    parser.add_argument(
        "--column",
        action="append",
        default=[],
        metavar="CONTRACT=YOURS",
        help="map a catalogue column to a contract name, e.g. title=product_name (repeatable)",
    )
    parser.add_argument(
        "--max-new-tokens",
        type=int,
        default=64,
        help="generation budget per listing for --attributes generated (default: %(default)s)",
    )
    parser.add_argument("--no-plot", action="store_true", help="skip recall_at_k.png")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    import sys

    def fail(message: str) -> int:
        print(f"afmrl evaluate: error: {message}", file=sys.stderr)
        return 2

    if args.batch_size < 1:
        return fail(f"--batch-size must be a positive integer, got {args.batch_size}")
    if args.depth < 1:
        return fail(f"--depth must be a positive integer, got {args.depth}")
    try:
        return _evaluate(args)
    except (ValueError, FileNotFoundError, NotADirectoryError) as err:
        return fail(str(err))


def _evaluate(args: argparse.Namespace) -> int:
    import gc
    import os
    import sys
    import tempfile
    import time
    from pathlib import Path

    from afmrl.catalog import parse_column_mapping
    from benchmarks.baselines import build_baseline_model, run_baselines
    from benchmarks.report import markdown_table, write_report
    from benchmarks.retrieval import (
        SPLIT_PAIRS,
        chance_levels,
        evaluate_model,
        load_eval_splits,
        load_model,
        model_display_name,
    )

    if args.task == "attributes":
        from benchmarks.attribute_eval import run_attribute_task

        return run_attribute_task(args)
    start = time.perf_counter()
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"--out {out} exists and is not a folder")
    columns = parse_column_mapping(args.column)
    split_names = SPLIT_PAIRS[args.split]
    query_ds, gallery_ds = load_eval_splits(args.data, args.split, columns)
    print(
        f"[evaluate] {args.data}: {split_names[0]} {len(query_ds)} rows, "
        f"{split_names[1]} {len(gallery_ds)} rows; task {args.task}, attributes {args.attributes}",
        flush=True,
    )
    common = {
        "task": args.task,
        "batch_size": args.batch_size,
        "depth": args.depth,
        "show_progress": not args.no_progress,
        "split_names": split_names,
    }
    runs, names = [], []
    for path in [args.model, *args.compare]:
        name = model_display_name(path, names)
        names.append(name)
        print(f"[evaluate] {name}: loading {path}", flush=True)
        model = load_model(path)
        run = evaluate_model(
            model,
            query_ds,
            gallery_ds,
            attributes=args.attributes,
            name=name,
            cache_dir=out / "cache" / name,
            max_new_tokens=args.max_new_tokens,
            **common,
        )
        run.settings["model"] = os.fspath(path)
        runs.append(run)
        print(f"[evaluate] {name}: {_summary(run.metrics)}", flush=True)
        del model
        gc.collect()
    if args.baselines:
        with tempfile.TemporaryDirectory(prefix="afmrl-baseline-") as tmp:
            baseline_path = args.baseline_model
            if baseline_path is None:
                print("[evaluate] building the untrained embedded default for the baselines")
                baseline_path = build_baseline_model(Path(tmp) / "default", progress=lambda _: None)
            model = load_model(baseline_path)
            for run in run_baselines(model, query_ds, gallery_ds, **common):
                runs.append(run)
                print(f"[evaluate] {run.name}: {_summary(run.metrics)}", flush=True)
            del model
    chance = chance_levels(runs[0])
    config = {
        "data": os.fspath(args.data),
        "split": args.split,
        "query_split": split_names[0],
        "gallery_split": split_names[1],
        "task": args.task,
        "attributes": args.attributes,
        "depth": args.depth,
        "models": {r.name: r.settings.get("model", r.settings.get("baseline")) for r in runs},
    }
    try:
        paths = write_report(out, runs, chance, config, plot=not args.no_plot)
    except ModuleNotFoundError as err:  # matplotlib missing: the numbers are written already
        print(f"afmrl evaluate: warning: recall_at_k.png not drawn: {err}", file=sys.stderr)
        paths = write_report(out, runs, chance, config, plot=False)
    print(markdown_table(runs, chance))
    written = ", ".join(str(p) for p in paths.values())
    print(f"[evaluate] wrote {written} ({time.perf_counter() - start:.0f} s)")
    return 0


def _summary(metrics: dict) -> str:
    keys = ("recall@1", "recall@10", "map@10", "hard_recall@1")
    return ", ".join(f"{k} {metrics[k]:.3f}" for k in keys if k in metrics)
