"""``afmrl synth``: write the synthetic fine-grained product catalogue as a ``datasets.DatasetDict``."""

from __future__ import annotations

import argparse

DEFAULT_PRODUCTS = 1000


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, help="output folder (save_to_disk layout)")
    parser.add_argument(
        "--products",
        type=int,
        default=DEFAULT_PRODUCTS,
        help="number of products (default: %(default)s)",
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    parser.add_argument("--preview", default=None, help="also write a contact sheet PNG here")
    parser.add_argument(
        "--image-size", type=int, default=128, help="image side in pixels (default: %(default)s)"
    )
    parser.add_argument(
        "--teacher-drop",
        type=float,
        default=0.10,
        help="fraction of attribute keys the simulated teacher leaves out (default: %(default)s)",
    )
    parser.add_argument(
        "--teacher-wrong",
        type=float,
        default=0.05,
        help="fraction of teacher values replaced by a wrong value of the same key "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--validation-fraction",
        type=float,
        default=0.2,
        help="share of families in validation_query/validation_gallery (default: %(default)s)",
    )
    parser.add_argument(
        "--test-fraction",
        type=float,
        default=0.2,
        help="share of families in query/gallery (default: %(default)s)",
    )
    parser.add_argument(
        "--num-proc",
        type=int,
        default=None,
        help="worker processes (default: min(2, CPUs)); the content does not depend on it",
    )


def run(args: argparse.Namespace) -> int:
    import sys

    from benchmarks.synthetic_catalog import CatalogConfig, build_catalog

    config = CatalogConfig(
        products=args.products,
        seed=args.seed,
        image_size=args.image_size,
        teacher_drop=args.teacher_drop,
        teacher_wrong=args.teacher_wrong,
        validation_fraction=args.validation_fraction,
        test_fraction=args.test_fraction,
    )
    try:
        config.validate()
        summary = build_catalog(config, args.out, num_proc=args.num_proc, preview=args.preview)
    except ValueError as err:
        print(f"afmrl synth: error: {err}", file=sys.stderr)
        return 2
    rows = ", ".join(f"{k} {v}" for k, v in summary["rows"].items())
    print(
        f"[synth] wrote {args.out}: {summary['products']} products, {summary['families']} families, "
        f"{summary['sellers']} sellers; rows: {rows}; {summary['seconds']}s"
    )
    print(f"[synth] fingerprint {summary['fingerprint']}")
    return 0
