"""Flags shared by the commands, and flags read from the settings dataclasses.

* :func:`add_fields` turns fields of a settings dataclass (``AGCLArguments``,
  ``ExtractorSFTArguments``, ``CatalogConfig``...) into flags: the default and the help come from the
  field (TRL's ``field(metadata={"help": ...})`` style), ``choices`` and a ``check`` (``positive``,
  ``non_negative``, ``fraction`` in [0, 1], ``share`` in (0, 1], ``tail``) from its metadata. A
  default is written once, beside its config.
* Numbers are checked by argparse while parsing, before any expensive work starts.
* ``--column CONTRACT=YOURS`` maps catalogue columns the same way in every command.
* :func:`check_out` refuses an ``--out`` that is a file, equals an input, or holds files that are
  not this command's earlier output.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from afmrl.errors import UserError


def _number(kind: type, test: Callable[[Any], bool], what: str) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if value != value or not test(value):  # NaN, or out of range
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
        return value

    parse.__name__ = what
    return parse


positive_int = _number(int, lambda v: v >= 1, "a positive integer")
non_negative_int = _number(int, lambda v: v >= 0, "an integer >= 0")
positive_float = _number(float, lambda v: 0 < v < float("inf"), "a positive number")
non_negative_float = _number(float, lambda v: 0 <= v < float("inf"), "a number >= 0")
fraction = _number(float, lambda v: 0 <= v <= 1, "a number in [0, 1]")
share = _number(float, lambda v: 0 < v <= 1, "a number in (0, 1]")
tail_count = _number(int, lambda v: v >= -1, "-1 (all), 0 (none) or a positive count")

#: ``metadata["check"]`` -> (int parser, float parser).
CHECKS: dict[str, dict[type, Callable[[str], Any]]] = {
    "positive": {int: positive_int, float: positive_float},
    "non_negative": {int: non_negative_int, float: non_negative_float},
    "fraction": {float: fraction},
    "share": {float: share},
    "tail": {int: tail_count},
}
_TYPES = {"int": int, "float": float, "str": str, "bool": bool}


def _field_type(field: dataclasses.Field) -> type:
    """The scalar type of a field annotated ``int``, ``float | None``, ``str``, ``bool``..."""
    names = [t.strip() for t in str(field.type).split("|") if t.strip() != "None"]
    if len(names) != 1 or names[0] not in _TYPES:
        raise TypeError(f"field {field.name!r} has type {field.type!r}: not a flag type")
    return _TYPES[names[0]]


def add_fields(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup,
    settings: type,
    *names: str,
    flags: Mapping[str, Iterable[str]] | None = None,
) -> None:
    """Add one flag per field ``names`` of the dataclass ``settings``.

    The flag is ``--field-name`` (plus aliases from ``flags``, e.g. ``{"learning_rate":
    ["--lr"]}``), its destination the field name, its default, help, choices and check the field's.
    Booleans become ``--x / --no-x``.
    """
    fields = {f.name: f for f in dataclasses.fields(settings)}
    for name in names:
        field = fields[name]
        kind = _field_type(field)
        default = (
            field.default_factory()
            if field.default is dataclasses.MISSING
            and field.default_factory is not dataclasses.MISSING
            else field.default
        )
        meta = field.metadata
        option_strings = [f"--{name.replace('_', '-')}", *(flags or {}).get(name, ())]
        kwargs: dict[str, Any] = {"dest": name, "default": default}
        help_text = meta.get("help", "")
        kwargs["help"] = (
            f"{help_text} (default: %(default)s)" if help_text else "(default: %(default)s)"
        )
        if kind is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        else:
            check = meta.get("check")
            kwargs["type"] = CHECKS[check][kind] if check else kind
            if "choices" in meta:
                kwargs["choices"] = meta["choices"]
        parser.add_argument(*option_strings, **kwargs)


def settings_from_args(settings: type, args: argparse.Namespace, **extra: Any) -> Any:
    """An instance of ``settings`` from the parsed flags that name its fields, plus ``extra``."""
    names = {f.name for f in dataclasses.fields(settings)}
    values = {k: v for k, v in vars(args).items() if k in names}
    return settings(**{**values, **extra})


def add_column_mapping(parser: argparse.ArgumentParser) -> None:
    """``--column CONTRACT=YOURS`` (repeatable): map your column names to the data contract's."""
    parser.add_argument(
        "--column",
        action="append",
        default=[],
        metavar="CONTRACT=YOURS",
        help="map a catalogue column to a contract name, e.g. title=product_name (repeatable)",
    )


def add_no_progress(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--no-progress", action="store_true", help="no progress display (a log gets a few lines)"
    )


def add_run_arguments(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup,
    *,
    checkpoint_dir: bool = True,
    keep_checkpoints: bool = True,
) -> None:
    """The run options every training command shares: ``--checkpoint-dir``, ``--resume``,
    ``--keep-checkpoints``, ``--seed``, ``--threads``, ``--overwrite``, ``--no-progress``."""
    if checkpoint_dir:
        parser.add_argument(
            "--checkpoint-dir", default=None, help="Trainer checkpoints (default: OUT.checkpoints)"
        )
    parser.add_argument("--resume", action="store_true", help="resume from the last checkpoint")
    if keep_checkpoints:
        parser.add_argument(
            "--keep-checkpoints", action="store_true", help="keep the checkpoint folder afterwards"
        )
    parser.add_argument("--seed", type=int, default=0, help="(default: %(default)s)")
    parser.add_argument("--threads", type=positive_int, default=None, help="torch CPU threads")
    parser.add_argument(
        "--overwrite", action="store_true", help="replace a checkpoint already in --out"
    )
    add_no_progress(parser)


def check_out(
    out: str | os.PathLike,
    *,
    inputs: Iterable[str | os.PathLike | None] = (),
    ours: Callable[[Path], bool] | None = None,
    overwrite: bool = False,
) -> Path:
    """Refuse an ``--out`` that would lose what the user has; returns it as a ``Path``.

    Refused: a file; a path equal to (or inside, or holding) an input; a non-empty folder that is
    not this command's earlier output (``ours``); this command's finished output without
    ``overwrite``. Commands then build beside ``out`` and swap in (:func:`afmrl.io.building`).
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} exists and is not a folder")
    target = out.resolve()
    for item in inputs:
        if item is None or not Path(item).exists():
            continue
        source = Path(item).resolve()
        if target == source or source in target.parents or target in source.parents:
            raise UserError(f"--out {out} overlaps the input {item}: choose another folder")
    if out.is_dir() and any(out.iterdir()):
        if ours is None or not ours(out):
            raise UserError(
                f"--out {out} is not empty and holds no earlier output of this command: refusing "
                "to replace files you may need (choose an empty or new folder)"
            )
        if not overwrite:
            raise UserError(f"--out {out} already holds a finished output; use --overwrite")
    return out


def training_output(
    args: argparse.Namespace, checkpoint_dir: str | None = None
) -> tuple[Path, Path]:
    """``(out, checkpoints)`` of a training command: ``--out`` checked (a checkpoint may be
    replaced with ``--overwrite``), Trainer checkpoints in ``checkpoint_dir`` (default
    ``OUT.checkpoints``), which ``--resume`` requires."""
    from afmrl.models import is_checkpoint_folder

    out = check_out(
        args.out,
        inputs=[args.model, args.data],
        ours=is_checkpoint_folder,
        overwrite=args.overwrite,
    )
    checkpoints = Path(checkpoint_dir or f"{out}.checkpoints")
    if args.resume and not any(checkpoints.glob("checkpoint-*")):
        raise UserError(f"--resume: no checkpoint-* folder in {checkpoints}")
    return out, checkpoints


def add_batch_arguments(
    parser: argparse.ArgumentParser, batch_size: int, what: str, generation: bool = True
) -> None:
    """``--batch-size`` (``what`` it counts) and, with ``generation``, ``--max-new-tokens``."""
    from afmrl.retrieval.attributes import DEFAULT_MAX_NEW_TOKENS

    parser.add_argument(
        "--batch-size", type=positive_int, default=batch_size, help=f"{what} (default: %(default)s)"
    )
    if generation:
        parser.add_argument(
            "--max-new-tokens",
            type=positive_int,
            default=DEFAULT_MAX_NEW_TOKENS,
            help="generation budget per listing when attributes are generated "
            "(default: %(default)s)",
        )


__all__ = [
    "add_batch_arguments",
    "add_column_mapping",
    "add_fields",
    "add_no_progress",
    "add_run_arguments",
    "check_out",
    "fraction",
    "non_negative_float",
    "non_negative_int",
    "positive_float",
    "positive_int",
    "settings_from_args",
    "share",
    "tail_count",
    "training_output",
]
