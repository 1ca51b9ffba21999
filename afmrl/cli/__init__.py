"""The ``afmrl`` command line.

Every subcommand lives in ``afmrl/cli/<name>.py`` with ``add_arguments(parser)`` and
``run(args) -> int``. Command modules import only the standard library (and light settings modules)
at top level; torch, transformers, datasets and friends are imported inside ``run`` so that
``afmrl --help`` is instant.

One error path: a problem with what the user gave (a missing path, a wrong column, a bad number, an
unloadable checkpoint, a bad flag) raises :class:`~afmrl.errors.UserError`; :func:`main` is the only
place that turns it into one line on stderr and exit status 2. Ctrl-C prints one line and exits
with 130; the long commands leave resumable state behind. Anything else is a bug and keeps its
traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from afmrl import __version__
from afmrl.errors import UserError, one_line

# name -> one-line help. Order is the order a user runs them in.
COMMANDS: dict[str, str] = {
    "synth": "write the synthetic fine-grained product catalogue (DatasetDict)",
    "init": "build the embedded default checkpoint offline",
    "train-extractor": "SFT warm-up of the attribute extractor on teacher attributes",
    "extract": "add a generated-attributes column to every split (batched, resumable)",
    "train-encoder": "stage 1: AGCL / InfoNCE contrastive training of the encoder",
    "train-rar": "stage 2: RAR, GRPO on the extractor with a retrieval reward (TRL)",
    "cit": "cyclic iterative training: re-extract with the RAR extractor, continue AGCL, evaluate",
    "pipeline": "run the main job end to end on the embedded default",
    "index": "encode a gallery split into a faiss index (streaming, resumable)",
    "search": "search an index with a photo and/or a title",
    "evaluate": "retrieval metrics, report and Recall@K plot (several models, baselines)",
    "calibrate": "fit P(identical | score) on the validation split, stored with the checkpoint",
    "demo": "the Gradio demo (the Space): search, see why, fix an attribute, compare",
    "push": "upload a checkpoint with its card, the catalogue as a dataset, the demo as a Space",
}
INTERRUPTED = "interrupted; rerun the same command to resume"


class ArgumentParser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose errors are :class:`UserError` (one line, via :func:`main`)."""

    def error(self, message: str):
        raise UserError(message)


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog="afmrl",
        description="Attribute-enhanced fine-grained multimodal product retrieval (AFMRL).",
    )
    parser.add_argument("--version", action="version", version=f"afmrl {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=ArgumentParser)
    for name, help_text in COMMANDS.items():
        module = importlib.import_module(f"afmrl.cli.{name.replace('-', '_')}")
        cmd = sub.add_parser(name, help=help_text, description=help_text)
        module.add_arguments(cmd)
        cmd.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one command; returns its exit status (2 for a user error, 130 when interrupted)."""
    from afmrl.runtime import quiet_libraries

    argv = sys.argv[1:] if argv is None else list(argv)
    command = next((a for a in argv if not a.startswith("-")), None)
    prefix = f"afmrl {command}" if command in COMMANDS else "afmrl"
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        if args.command is None:
            parser.print_help()
            return 0
        with quiet_libraries():
            return int(args._run(args) or 0)
    except UserError as err:
        print(f"{prefix}: error: {one_line(err, limit=1000)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{prefix}: {INTERRUPTED}", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
