"""``afmrl calibrate``: fit P(identical | cosine) on the validation split, store it with the model.

Writes ``calibration.json`` into the checkpoint folder (atomically; or ``--out``), which the demo
reads: the Compare tab's probability and the Search tab's "identical" mark. ``--test`` also scores
the stored calibration on the test split (ECE, precision and recall at the threshold) without
letting it choose anything. See :mod:`afmrl.evaluation.calibration`.
"""

from __future__ import annotations

import argparse

from afmrl.cli.arguments import (
    add_batch_arguments,
    add_column_mapping,
    add_no_progress,
    non_negative_int,
    positive_int,
)
from afmrl.evaluation.calibration import DEFAULT_CANDIDATES, METHODS
from afmrl.retrieval.attributes import ATTRIBUTE_SOURCES
from afmrl.retrieval.encoding import DEFAULT_ENCODE_BATCH_SIZE


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="checkpoint folder to calibrate")
    parser.add_argument(
        "--data", required=True, help="catalogue with validation_query / validation_gallery"
    )
    parser.add_argument(
        "--out",
        default=None,
        help="where calibration.json goes: a folder or a .json file (default: the --model folder)",
    )
    parser.add_argument(
        "--method",
        choices=METHODS,
        default="isotonic",
        help="scikit-learn isotonic regression or Platt scaling (default: %(default)s)",
    )
    parser.add_argument(
        "--attributes",
        choices=("auto", *ATTRIBUTE_SOURCES),
        default="auto",
        help="attributes appended to each listing before scoring; auto = generated when the "
        "checkpoint has an extractor, else none -- what the demo searches with "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--candidates",
        type=non_negative_int,
        default=DEFAULT_CANDIDATES,
        help="pairs per validation query: its top-K gallery candidates (what a search shows); "
        "0 = every (query, gallery) pair (default: %(default)s)",
    )
    parser.add_argument(
        "--test",
        action="store_true",
        help="also report (and record) ECE, precision and recall on the test split; the test "
        "split never chooses the fit or the threshold",
    )
    add_batch_arguments(parser, DEFAULT_ENCODE_BATCH_SIZE, "listings per forward pass")
    parser.add_argument(
        "--cache", default=None, help="folder to cache generated attributes in (resumable)"
    )
    add_column_mapping(parser)
    parser.add_argument("--threads", type=positive_int, default=None, help="torch CPU threads")
    add_no_progress(parser)


def run(args: argparse.Namespace) -> int:
    import os
    from pathlib import Path

    from afmrl.data import parse_column_mapping
    from afmrl.errors import MissingPathError, UserError
    from afmrl.evaluation.calibration import CALIBRATION_FILE, calibrate_model
    from afmrl.io import looks_like_local_path, write_json_atomic
    from afmrl.models import load_model
    from afmrl.runtime import torch_settings

    if args.out is not None:
        out = Path(args.out)
        out = out if out.suffix == ".json" else out / CALIBRATION_FILE
    elif Path(args.model).is_dir():
        out = Path(args.model) / CALIBRATION_FILE
    elif Path(args.model).exists():
        raise UserError(f"--model {args.model}: is a file, not a checkpoint folder")
    elif looks_like_local_path(args.model):
        raise MissingPathError(f"--model {args.model}: no such folder")
    else:
        raise UserError(
            f"--model {args.model}: calibration.json goes into the checkpoint folder, and this is "
            "not a local folder: pass --out"
        )
    if out.exists() and not out.is_file():
        raise UserError(f"--out {out} exists and is not a file")
    model = load_model(args.model, need_extractor=args.attributes == "generated", what="--model")
    attributes = args.attributes
    if attributes == "auto":
        attributes = "generated" if model.extractor is not None else "none"
    with torch_settings(args.threads):
        calibrator, results = calibrate_model(
            model,
            args.data,
            method=args.method,
            attributes=attributes,
            candidates=args.candidates or None,
            test=args.test,
            columns=parse_column_mapping(args.column),
            batch_size=args.batch_size,
            max_new_tokens=args.max_new_tokens,
            cache_dir=args.cache,
            show_progress=not args.no_progress,
            describe={
                "data": os.path.abspath(args.data) if Path(args.data).exists() else args.data
            },
        )
    write_json_atomic(out, calibrator.to_json())
    print(
        f"[calibrate] {args.method} on {results['validation']['pairs']} validation pairs "
        f"({results['validation']['positives']} identical; "
        f"{calibrator.meta['fitted_on']['population']}), attributes: {attributes}; "
        f"'identical' when P >= {calibrator.threshold:.3f} (cosine >= "
        f"{calibrator.score_threshold:.4f})"
    )
    for split, r in results.items():
        name = "validation (fitted on it: in-sample)" if split == "validation" else split
        print(f"[calibrate] {name}: {_line(r)}")
        if "same_family" in r:
            print(f"[calibrate] {split}, same-family pairs only: {_line(r['same_family'])}")
    print(f"[calibrate] wrote {out}")
    return 0


def _line(r: dict) -> str:
    def f(v):
        return "n/a" if v is None else f"{v:.4f}"

    return (
        f"ECE {f(r['ece'])}, Brier {f(r['brier'])}, precision {f(r['precision'])}, "
        f"recall {f(r['recall'])}, F1 {f(r['f1'])} ({r['pairs']} pairs, {r['positives']} identical)"
    )
