"""The ``afmrl`` command line.

Every subcommand lives in ``afmrl/commands/<name>.py`` with ``add_arguments(parser)`` and
``run(args) -> int``. Command modules import only the standard library at top level; torch,
transformers, datasets and friends are imported inside ``run`` so that ``afmrl --help`` is instant.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from . import __version__

# name -> one-line help. Order is the order a user runs them in.
COMMANDS: dict[str, str] = {
    "synth": "write the synthetic fine-grained product catalogue (DatasetDict)",
    "init": "build the embedded default checkpoint offline",
    "train-extractor": "SFT warm-up of the attribute extractor on teacher attributes",
    "extract": "add a generated-attributes column to every split (batched, resumable)",
    "train-encoder": "stage 1: AGCL / InfoNCE contrastive training of the encoder",
    "pipeline": "run the main job end to end on the embedded default",
    "index": "encode a gallery split into a faiss index (streaming, resumable)",
    "search": "search an index with a photo and/or a title",
    "evaluate": "retrieval metrics, report and Recall@K plot (several models, baselines)",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="afmrl",
        description="Attribute-enhanced fine-grained multimodal product retrieval (AFMRL).",
    )
    parser.add_argument("--version", action="version", version=f"afmrl {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, help_text in COMMANDS.items():
        module = importlib.import_module(f"afmrl.commands.{name.replace('-', '_')}")
        cmd = sub.add_parser(name, help=help_text, description=help_text)
        module.add_arguments(cmd)
        cmd.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    return int(args._run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
