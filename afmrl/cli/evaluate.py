"""``afmrl evaluate``: retrieval metrics of one or more checkpoints on a catalogue's eval splits.

Encodes the query and gallery splits (``--split test``: ``query`` / ``gallery``; ``--split
validation``: ``validation_query`` / ``validation_gallery``), searches the gallery exactly (faiss),
scores Recall@K, mAP@10, MRR, nDCG@10 (and the same restricted to each query's product family), and
writes ``OUT/metrics.json``, ``OUT/report.md`` and ``OUT/recall_at_k.png``. ``--compare`` adds more
checkpoints to the same table, ``--baselines`` the peers. ``--task attributes`` scores each
extractor's attributes against ``gold_attributes`` instead. See :mod:`afmrl.evaluation`.
"""

from __future__ import annotations

import argparse

from afmrl.cli.arguments import (
    add_batch_arguments,
    add_column_mapping,
    add_no_progress,
    positive_int,
)
from afmrl.evaluation.settings import DEFAULT_DEPTH, SPLIT_PAIRS, TASKS
from afmrl.retrieval.attributes import ATTRIBUTE_SOURCES
from afmrl.retrieval.encoding import DEFAULT_ENCODE_BATCH_SIZE


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
        choices=tuple(SPLIT_PAIRS),
        default="test",
        help="test = query/gallery, validation = validation_query/validation_gallery "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--task",
        choices=(*TASKS, "attributes"),
        default="listing",
        help="listing = photo+title -> photo+title, image = photo -> photo, text = title -> photo, "
        "attributes = the extractor's attributes scored against gold_attributes "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--attributes",
        choices=ATTRIBUTE_SOURCES,
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
        help="add the peers: title-only MiniLM, image-only EfficientNet-Lite0, their untrained "
        "fusion, chance",
    )
    parser.add_argument(
        "--baseline-model",
        default=None,
        help="an untrained embedded default (afmrl init) for --baselines (default: build one in a "
        "temporary folder, about 10 s)",
    )
    add_batch_arguments(parser, DEFAULT_ENCODE_BATCH_SIZE, "listings per forward pass")
    parser.add_argument(
        "--depth", type=positive_int, default=DEFAULT_DEPTH,
        help="ranked list length per query; MRR counts a first positive below it as 0 "
        "(default: %(default)s)",
    )  # fmt: skip
    add_column_mapping(parser)
    parser.add_argument("--no-plot", action="store_true", help="skip recall_at_k.png")
    parser.add_argument("--threads", type=positive_int, default=None, help="torch CPU threads")
    add_no_progress(parser)


def run(args: argparse.Namespace) -> int:
    from afmrl.cli.arguments import check_out
    from afmrl.runtime import torch_settings

    # An earlier evaluation's folder is reused (its cache of generated attributes too).
    out = check_out(
        args.out,
        inputs=[args.model, *args.compare, args.data],
        ours=lambda folder: (folder / "metrics.json").is_file() or (folder / "cache").is_dir(),
        overwrite=True,
    )
    with torch_settings(args.threads):
        if args.task == "attributes":
            return _attribute_task(args, out)
        return _retrieval_task(args, out)


def _retrieval_task(args: argparse.Namespace, out) -> int:
    import gc
    import os
    import sys
    import time

    from afmrl.data import parse_column_mapping
    from afmrl.evaluation.report import markdown_table, write_report
    from afmrl.evaluation.runner import (
        SPLIT_PAIRS,
        chance_levels,
        evaluate_model,
        load_eval_splits,
        model_display_name,
    )
    from afmrl.models import load_model

    start = time.perf_counter()
    split_names = SPLIT_PAIRS[args.split]
    query_ds, gallery_ds = load_eval_splits(
        args.data, args.split, parse_column_mapping(args.column)
    )
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
        model = load_model(path, need_extractor=args.attributes == "generated", what="--model")
        run = evaluate_model(
            model,
            query_ds,
            gallery_ds,
            attributes=args.attributes,
            name=name,
            cache_dir=_attribute_cache(out, name, model)
            if args.attributes == "generated"
            else None,
            max_new_tokens=args.max_new_tokens,
            **common,
        )
        run.settings["model"] = os.fspath(path)
        runs.append(run)
        print(f"[evaluate] {name}: {_summary(run.metrics)}", flush=True)
        del model
        gc.collect()
    if args.baselines:
        runs += _baseline_runs(args.baseline_model, query_ds, gallery_ds, common)
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


def _baseline_runs(baseline_model, query_ds, gallery_ds, common: dict) -> list:
    """The peers, computed with an untrained embedded default (built here unless given)."""
    import tempfile
    from pathlib import Path

    from afmrl.evaluation.baselines import build_baseline_model, run_baselines
    from afmrl.models import load_model

    runs = []
    with tempfile.TemporaryDirectory(prefix="afmrl-baseline-") as tmp:
        if baseline_model is None:
            print("[evaluate] building the untrained embedded default for the baselines")
            baseline_model = build_baseline_model(Path(tmp) / "default", progress=lambda _: None)
        model = load_model(baseline_model, what="--baseline-model")
        for run in run_baselines(model, query_ds, gallery_ds, **common):
            runs.append(run)
            print(f"[evaluate] {run.name}: {_summary(run.metrics)}", flush=True)
    return runs


def _attribute_task(args: argparse.Namespace, out) -> int:
    """Score each model's extractor on the eval splits: ``metrics.json`` and ``report.md``."""
    import time

    from afmrl.data import load_catalog, parse_column_mapping
    from afmrl.evaluation.attributes import (
        TEST_SPLITS,
        VALIDATION_SPLITS,
        evaluate_attributes,
        format_attribute_table,
    )
    from afmrl.evaluation.runner import model_display_name
    from afmrl.io import write_json_atomic, write_text_atomic
    from afmrl.models import load_model

    start = time.perf_counter()
    splits = VALIDATION_SPLITS if args.split == "validation" else TEST_SPLITS
    data = load_catalog(args.data, columns=parse_column_mapping(args.column), splits=list(splits))
    systems: dict[str, dict] = {}
    names: list[str] = []
    for path in [args.model, *args.compare]:
        name = model_display_name(path, names)
        names.append(name)
        model = load_model(path, need_extractor=True, what="--model")
        metrics = evaluate_attributes(
            model, data, splits, batch_size=args.batch_size, max_new_tokens=args.max_new_tokens,
            show_progress=not args.no_progress,
        )  # fmt: skip
        systems[name] = metrics
        print(
            f"[evaluate] {name}: valid {metrics['valid_rate']:.3f}, f1 {metrics['f1']:.3f}",
            flush=True,
        )
    table = format_attribute_table(systems)
    header = f"# Attribute extraction on {' + '.join(splits)} (per-key accuracy vs gold)\n\n"
    write_json_atomic(out / "metrics.json", systems)
    write_text_atomic(out / "report.md", header + table + "\n")
    print(table)
    print(
        f"[evaluate] wrote {out / 'metrics.json'}, {out / 'report.md'} "
        f"({time.perf_counter() - start:.0f} s)"
    )
    return 0


def _attribute_cache(out, name: str, model):
    """``OUT/cache/<name>-<weights fingerprint>``: generated attributes are reused for the same
    weights only, so evaluating a retrained model at the same path starts a fresh cache (the
    previous weights' caches of that name are removed)."""
    import shutil

    from afmrl.models import model_fingerprint

    folder = out / "cache" / f"{name}-{model_fingerprint(model)[:16]}"
    if folder.parent.is_dir():
        for stale in folder.parent.glob(f"{name}-*"):
            if stale != folder and stale.name.removeprefix(f"{name}-").isalnum():
                shutil.rmtree(stale, ignore_errors=True)
    return folder


def _summary(metrics: dict) -> str:
    keys = ("recall@1", "recall@10", "map@10", "hard_recall@1")
    return ", ".join(f"{k} {metrics[k]:.3f}" for k in keys if k in metrics)
