"""``afmrl pipeline``: the main job, end to end on the embedded default.

Today it builds the synthetic catalogue with a preview sheet; later stages (embedded default model,
extractor SFT, extraction, AGCL, RAR, evaluation) are appended here as they land.
"""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="outputs/quickstart", help="output folder")
    parser.add_argument(
        "--products", type=int, default=None, help="catalogue size (default: synth's)"
    )
    parser.add_argument("--seed", type=int, default=0)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from afmrl.cli import main

    out = Path(args.out)
    synth = ["synth", "--out", str(out / "catalog"), "--seed", str(args.seed)]
    synth += ["--preview", str(out / "catalog_preview.png")]
    if args.products is not None:
        synth += ["--products", str(args.products)]
    print("[pipeline] 1/1 catalogue:", " ".join(synth), flush=True)
    return main(synth)
