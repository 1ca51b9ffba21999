"""``afmrl synth``: write the synthetic fine-grained product catalogue as a ``datasets.DatasetDict``.

The catalogue is built beside ``--out`` and swapped in when complete; ``--out`` may hold only an
earlier synthetic catalogue (which is replaced) or nothing.
"""

from __future__ import annotations

import argparse

from afmrl.cli.arguments import add_fields, positive_int, settings_from_args
from afmrl.data.synthetic.config import CatalogConfig


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, help="output folder (save_to_disk layout)")
    add_fields(parser, CatalogConfig, *(f for f in CatalogConfig.__dataclass_fields__))
    parser.add_argument("--preview", default=None, help="also write a contact sheet PNG here")
    parser.add_argument(
        "--num-proc",
        type=positive_int,
        default=None,
        help="worker processes (default: min(2, CPUs)); the content does not depend on it",
    )


def run(args: argparse.Namespace) -> int:
    from afmrl.data.synthetic import build_catalog

    config = settings_from_args(CatalogConfig, args).validate()
    summary = build_catalog(config, args.out, num_proc=args.num_proc, preview=args.preview)
    rows = ", ".join(f"{k} {v}" for k, v in summary["rows"].items())
    print(
        f"[synth] wrote {args.out}: {summary['products']} products, {summary['families']} families, "
        f"{summary['sellers']} sellers; rows: {rows}; {summary['seconds']}s"
    )
    print(f"[synth] fingerprint {summary['fingerprint']}")
    return 0
