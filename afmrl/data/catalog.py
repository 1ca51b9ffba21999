"""Load a product catalogue into the AFMRL data contract (``docs/design.md``), whatever form it comes in.

Every command that reads data (training, extraction, evaluation) goes through :func:`load_catalog`:

- a folder written by ``DatasetDict.save_to_disk`` (a single saved ``Dataset`` becomes ``train``);
- a folder of images with a ``catalog.csv`` / ``catalog.jsonl``, or such a file given directly, whose
  image columns hold paths relative to the file and whose optional ``split`` column picks each
  row's split (rows without one go to ``train``);
- a Hugging Face Hub dataset id (``datasets.load_dataset``).

The result is a ``DatasetDict`` with contract split and column names; image columns are
``datasets.Image()``. Rows that would crash a run later (unreadable images, empty titles, missing
ids) are dropped here, counted per split and reason, logged, and returned in a
:class:`CatalogReport`. Images are checked without keeping them in memory: the image columns are
read undecoded in batches, each image is opened and decoded at thumbnail size, then dropped.

Only the standard library is imported at module level, so ``parse_column_mapping`` is cheap to
import from the CLI; ``datasets`` and PIL are imported when a catalogue is loaded.
"""

from __future__ import annotations

import csv
import io
import logging
import os
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from afmrl.errors import MissingPathError, UserError, one_line
from afmrl.io import looks_like_local_path

if TYPE_CHECKING:
    from datasets import Dataset, DatasetDict

logger = logging.getLogger(__name__)

TRAIN_SPLITS: tuple[str, ...] = ("train",)
EVAL_SPLITS: tuple[str, ...] = ("query", "gallery", "validation_query", "validation_gallery")
SPLITS: tuple[str, ...] = TRAIN_SPLITS + EVAL_SPLITS

#: Required and optional columns per kind of split (the data contract).
TRAIN_REQUIRED: tuple[str, ...] = ("listing_id", "image", "title")
TRAIN_OPTIONAL: tuple[str, ...] = (
    "pos_image", "pos_title", "teacher_attributes", "pos_teacher_attributes",
)  # fmt: skip
EVAL_REQUIRED: tuple[str, ...] = ("listing_id", "product_id", "image", "title")
EVAL_OPTIONAL: tuple[str, ...] = ("family_id", "teacher_attributes", "gold_attributes")

IMAGE_COLUMNS: tuple[str, ...] = ("image", "pos_image")
TITLE_COLUMNS: tuple[str, ...] = ("title", "pos_title")
ID_COLUMNS: tuple[str, ...] = ("listing_id", "product_id")
#: The names ``columns=`` may map to (``split`` is the split column of a CSV/JSONL file).
CONTRACT_COLUMNS: tuple[str, ...] = tuple(
    dict.fromkeys(TRAIN_REQUIRED + TRAIN_OPTIONAL + EVAL_REQUIRED + EVAL_OPTIONAL + ("split",))
)
#: File names looked for inside a folder, in this order.
TABLE_FILES: tuple[str, ...] = ("catalog.csv", "catalog.jsonl")
TABLE_SUFFIXES: tuple[str, ...] = (".csv", ".jsonl", ".json")
#: Longest side images are decoded at when checked (JPEG decodes at reduced scale directly).
CHECK_SIZE = (64, 64)


@dataclass
class CatalogReport:
    """What :func:`load_catalog` read, kept and skipped.

    ``skipped[split][reason]`` counts dropped rows; a reason names the column and the problem,
    e.g. ``"image: unreadable"``, ``"image: missing file"``, ``"title: empty"``.
    """

    source: str
    format: str
    rows: dict[str, int] = field(default_factory=dict)
    kept: dict[str, int] = field(default_factory=dict)
    skipped: dict[str, dict[str, int]] = field(default_factory=dict)

    @property
    def num_skipped(self) -> int:
        return sum(sum(reasons.values()) for reasons in self.skipped.values())

    def summary(self) -> str:
        """One line per split: ``train: 98/100 rows kept (image: unreadable 1, title: empty 1)``."""
        lines = []
        for split, total in self.rows.items():
            reasons = ", ".join(f"{r} {n}" for r, n in sorted(self.skipped.get(split, {}).items()))
            line = f"{split}: {self.kept.get(split, 0)}/{total} rows kept"
            lines.append(f"{line} (skipped: {reasons})" if reasons else line)
        return "\n".join(lines)


def parse_column_mapping(items: Sequence[str] | None) -> dict[str, str]:
    """Turn ``["title=product_name", ...]`` (the CLI's ``--column``) into ``{"title": "product_name"}``.

    The left side is a contract column name, the right side the user's column name.
    """
    mapping: dict[str, str] = {}
    for item in items or ():
        contract, sep, user = str(item).partition("=")
        contract, user = contract.strip(), user.strip()
        if not sep or not contract or not user:
            raise UserError(
                f"bad column mapping {item!r}: expected CONTRACT=YOURS, e.g. title=product_name"
            )
        if contract in mapping:
            raise UserError(
                f"column {contract!r} is mapped twice ({mapping[contract]!r}, {user!r})"
            )
        mapping[contract] = user
    _check_column_mapping(mapping)
    return mapping


def load_catalog(
    path_or_hub_id: str | os.PathLike,
    columns: Mapping[str, str] | None = None,
    splits: Sequence[str] | Mapping[str, str] | None = None,
    *,
    check_images: bool = True,
    return_report: bool = False,
    revision: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    num_proc: int | None = None,
) -> DatasetDict | tuple[DatasetDict, CatalogReport]:
    """Load a catalogue as a ``DatasetDict`` in the AFMRL data contract.

    Args:
        path_or_hub_id: a ``save_to_disk`` folder, a folder holding ``catalog.csv`` /
            ``catalog.jsonl``, such a file, or a Hub dataset id.
        columns: contract name -> your column name, e.g. ``{"title": "product_name"}``; the
            columns are renamed to the contract names.
        splits: which splits to keep: a list of names, or contract name -> source split name
            (``{"query": "test_queries"}``). Default: every split, which must all be contract names.
        check_images: open every image (at thumbnail size) and drop unreadable ones. Titles and
            ids are always checked.
        return_report: also return the :class:`CatalogReport`.
        revision: Hub revision, for a Hub id.
        cache_dir: where ``datasets`` caches CSV/JSONL/Hub data (default: its usual cache).
        num_proc: processes for the image check.

    Raises:
        MissingPathError: nothing local by that name and it could not be loaded from the Hub.
        UserError: a split or a required column is missing (the message names it and lists what
            was found), a split is not a contract split, a mapping is wrong, or every row of a split
            had to be skipped.
    """
    mapping = dict(columns or {})
    _check_column_mapping(mapping)
    source = os.fspath(path_or_hub_id)
    raw, base_dir, fmt = _read_source(source, mapping, revision=revision, cache_dir=cache_dir)
    data = _select_splits(raw, splits, source)
    report = CatalogReport(source=source, format=fmt)
    out = {}
    for split, ds in data.items():
        ds = _rename_columns(ds, mapping, split)
        _check_required_columns(ds, split, mapping)
        ds = _prepare_image_columns(ds, split, base_dir)
        out[split] = _drop_bad_rows(ds, split, report, check_images=check_images, num_proc=num_proc)

    from datasets import DatasetDict

    result = DatasetDict(out)
    if report.num_skipped:
        logger.warning(
            "catalogue %s: skipped %d rows\n%s", source, report.num_skipped, report.summary()
        )
    else:
        logger.info("catalogue %s: %s", source, report.summary().replace("\n", "; "))
    return (result, report) if return_report else result


# --- reading ------------------------------------------------------------------------------------


def _read_source(
    source: str,
    mapping: Mapping[str, str],
    *,
    revision: str | None,
    cache_dir: str | os.PathLike | None,
) -> tuple[DatasetDict, Path | None, str]:
    """The source as a ``DatasetDict`` of raw splits, the folder relative paths start from, its format."""
    from datasets import Dataset, DatasetDict, load_from_disk

    path = Path(source).expanduser()
    if path.is_dir():
        if (path / "dataset_dict.json").is_file() or (path / "state.json").is_file():
            try:
                loaded = load_from_disk(str(path))
            except Exception as err:  # datasets raises many types for a damaged folder
                raise UserError(
                    f"{source}: cannot read the saved dataset ({one_line(err)})"
                ) from err
            if isinstance(loaded, Dataset):
                loaded = DatasetDict({"train": loaded})
            return loaded, path.resolve(), "save_to_disk"
        tables = [path / name for name in TABLE_FILES if (path / name).is_file()]
        if len(tables) > 1:
            raise UserError(
                f"{source}: found both {tables[0].name} and {tables[1].name}; keep only one"
            )
        if not tables:
            raise MissingPathError(
                f"{source}: this folder has no {' or '.join(TABLE_FILES)} and is not a "
                "`save_to_disk` dataset (no dataset_dict.json or state.json)"
            )
        path = tables[0]
    if path.is_file():
        if path.suffix.lower() not in TABLE_SUFFIXES:
            raise UserError(
                f"{source}: unsupported file type {path.suffix!r}; expected one of {TABLE_SUFFIXES}"
            )
        return _read_table(path, mapping, cache_dir), path.resolve().parent, path.suffix[1:].lower()
    if looks_like_local_path(source, TABLE_SUFFIXES):
        raise MissingPathError(f"{source}: no such file or folder")
    return _load_hub(source, revision=revision, cache_dir=cache_dir), None, "hub"


def _read_table(path: Path, mapping: Mapping[str, str], cache_dir: Any) -> DatasetDict:
    """Read a CSV / JSONL file (memory-mapped through ``datasets``) and split it on its split column."""
    from datasets import Dataset, DatasetDict, Features, Value

    kwargs: dict[str, Any] = {"cache_dir": str(cache_dir) if cache_dir else None}
    try:
        if path.suffix.lower() == ".csv":
            with open(path, newline="", encoding="utf-8") as f:
                header = next(csv.reader(f), None)
            if not header:
                raise UserError(f"{path}: empty CSV file (no header row)")
            # Every CSV column is text: a SKU like "007" must not become the integer 7.
            features = Features({name: Value("string") for name in header})
            ds = Dataset.from_csv(str(path), features=features, **kwargs)
        else:
            if path.stat().st_size == 0:
                raise UserError(f"{path}: empty file")
            ds = Dataset.from_json(str(path), **kwargs)
    except UserError:
        raise
    except Exception as err:  # a malformed table: csv, datasets and pyarrow raise many types
        raise UserError(f"{path}: cannot read the table ({one_line(err)})") from err

    split_column = mapping.get("split", "split")
    if split_column not in ds.column_names:
        return DatasetDict({"train": ds})
    values = [v for v in ds.unique(split_column)]
    names = sorted({_split_value(v) for v in values})
    out = {}
    for name in names:
        out[name] = ds.filter(
            lambda batch, name=name: [_split_value(v) == name for v in batch],
            input_columns=split_column,
            batched=True,
            desc=f"split {name}",
        ).remove_columns(split_column)
    return DatasetDict(out)


def _split_value(value: Any) -> str:
    """A row's split: its split column, or ``train`` when that is empty."""
    return str(value).strip() if value is not None and str(value).strip() else "train"


def _load_hub(source: str, *, revision: str | None, cache_dir: Any) -> DatasetDict:
    """Every config of a Hub dataset, their splits together (``afmrl push`` stores the train pairs
    and the retrieval splits as two configs: their columns differ), with a clear error when the id
    cannot be loaded (offline or absent)."""
    from datasets import Dataset, DatasetDict, get_dataset_config_names, load_dataset

    try:
        loaded = DatasetDict()
        for config in get_dataset_config_names(source, revision=revision):
            part = load_dataset(source, config, revision=revision, cache_dir=cache_dir)
            if isinstance(part, Dataset):
                part = DatasetDict({"train": part})
            loaded.update(part)
    except Exception as err:
        offline = _hub_offline()
        why = (
            "the Hub is not reachable offline (HF_HUB_OFFLINE=1) and it is not in the local cache"
            if offline
            else "it was not found on the Hugging Face Hub or could not be loaded from it"
        )
        raise MissingPathError(
            f"could not load catalogue {source!r}: there is no local file or folder by that name, "
            f"and as a Hub dataset id {why} ({type(err).__name__}: {err})"
        ) from err
    return loaded


def _hub_offline() -> bool:
    try:
        from huggingface_hub import constants

        return bool(constants.HF_HUB_OFFLINE)
    except Exception:  # pragma: no cover - huggingface_hub always ships with datasets
        return os.environ.get("HF_HUB_OFFLINE", "0").lower() in {"1", "true", "yes", "on"}


# --- splits and columns -------------------------------------------------------------------------


def _select_splits(
    raw: DatasetDict, splits: Sequence[str] | Mapping[str, str] | None, source: str
) -> dict[str, Dataset]:
    """Pick and rename splits to contract names; an unknown split name is an error, not a guess."""
    found = list(raw.keys())
    if splits is None:
        wanted = {name: name for name in found}
    elif isinstance(splits, Mapping):
        wanted = dict(splits)
    elif isinstance(splits, str):
        wanted = {splits: splits}
    else:
        wanted = {name: name for name in splits}
    for contract, name in wanted.items():
        if contract not in SPLITS:
            hint = (
                " (choose splits with splits=[...], or map one with splits={'query': 'test'})"
                if splits is None
                else ""
            )
            raise UserError(
                f"{source}: split {contract!r} is not a contract split; "
                f"expected some of {list(SPLITS)}{hint}"
            )
        if name not in raw:
            raise UserError(f"{source}: no split {name!r}; splits found: {found}")
    if not wanted:
        raise UserError(f"{source}: no splits to load; splits found: {found}")
    return {contract: raw[name] for contract, name in wanted.items()}


def _check_column_mapping(mapping: Mapping[str, str]) -> None:
    for contract, user in mapping.items():
        if contract not in CONTRACT_COLUMNS:
            raise UserError(
                f"cannot map column {contract!r}: not a contract column; "
                f"expected one of {list(CONTRACT_COLUMNS)}"
            )
        if not isinstance(user, str) or not user:
            raise UserError(f"column mapping for {contract!r} must be a column name, got {user!r}")
    users = [u for u in mapping.values()]
    duplicates = sorted({u for u in users if users.count(u) > 1})
    if duplicates:
        raise UserError(f"column(s) {duplicates} mapped to more than one contract column")


def _rename_columns(ds: Dataset, mapping: Mapping[str, str], split: str) -> Dataset:
    renames = {
        user: contract
        for contract, user in mapping.items()
        if contract != "split" and user != contract and user in ds.column_names
    }
    clashes = [c for c in renames.values() if c in ds.column_names and c not in renames]
    if clashes:
        raise UserError(
            f"split {split!r}: cannot rename "
            + ", ".join(f"{mapping[c]!r} to {c!r}" for c in clashes)
            + f": a column {clashes[0]!r} already exists; columns found: {ds.column_names}"
        )
    return ds.rename_columns(renames) if renames else ds


def _check_required_columns(ds: Dataset, split: str, mapping: Mapping[str, str]) -> None:
    required = TRAIN_REQUIRED if split in TRAIN_SPLITS else EVAL_REQUIRED
    missing = [c for c in required if c not in ds.column_names]
    if missing:
        named = ", ".join(
            f"{c!r} (mapped from {mapping[c]!r})" if c in mapping else repr(c) for c in missing
        )
        raise UserError(
            f"split {split!r} is missing required column(s) {named}; columns found: "
            f"{ds.column_names}. Map your own names with columns={{'title': 'product_name'}} "
            "(CLI: --column title=product_name)."
        )


def _prepare_image_columns(ds: Dataset, split: str, base_dir: Path | None) -> Dataset:
    """Cast image columns to undecoded ``Image`` (path strings resolved against ``base_dir``)."""
    from datasets import Image, Value

    for col in IMAGE_COLUMNS:
        if col not in ds.column_names:
            continue
        feature = ds.features[col]
        if isinstance(feature, Value) and feature.dtype in ("string", "large_string"):
            ds = ds.map(
                _resolve_batch,
                input_columns=col,
                batched=True,
                fn_kwargs={"column": col, "base_dir": base_dir},
                desc=f"{split}: resolve {col} paths",
            )
        try:
            ds = ds.cast_column(col, Image(decode=False))
        except Exception as err:
            raise UserError(
                f"split {split!r}: column {col!r} has type {feature}; expected images "
                "(datasets.Image), image file paths or image bytes"
            ) from err
    return ds


def _resolve_batch(paths: list, column: str, base_dir: Path | None) -> dict[str, list]:
    return {column: [_resolve(p, base_dir) for p in paths]}


def _resolve(path: str | None, base_dir: Path | None) -> str | None:
    if path is None or not str(path).strip():
        return None
    path = os.path.expanduser(str(path).strip())
    if base_dir is None or "://" in path or os.path.isabs(path):
        return path
    return str(base_dir / path)


# --- row checks ---------------------------------------------------------------------------------


def _drop_bad_rows(
    ds: Dataset, split: str, report: CatalogReport, *, check_images: bool, num_proc: int | None
) -> Dataset:
    """Drop rows with missing ids, empty titles or unreadable images; count them in ``report``."""
    from datasets import Image

    # Ids the split needs: product_id defines positives in eval splits; train has no product ids.
    ids = ID_COLUMNS if split in EVAL_SPLITS else ("listing_id",)
    cols = [c for c in ids + TITLE_COLUMNS if c in ds.column_names]
    if check_images:
        cols += [c for c in IMAGE_COLUMNS if c in ds.column_names]
    # One batched pass over the undecoded columns yields a small in-memory column of reasons (no
    # copy of the images); never from cache, since image files may have changed since last time.
    reasons = list(
        ds.map(
            _row_problems,
            batched=True,
            batch_size=64,
            input_columns=cols,
            remove_columns=ds.column_names,
            fn_kwargs={"columns": cols},
            keep_in_memory=True,
            load_from_cache_file=False,
            num_proc=num_proc,
            desc=f"{split}: checking rows",
        )["_problem"]
    )
    counts = Counter(r for r in reasons if r)
    report.rows[split] = len(ds)
    report.skipped[split] = dict(counts)
    if counts:
        keep = [i for i, r in enumerate(reasons) if not r]
        if not keep and len(ds):
            raise UserError(
                f"split {split!r}: all {len(ds)} rows were skipped ({dict(counts)}); "
                "check the image paths and the title column"
            )
        ds = ds.select(keep)
    report.kept[split] = len(ds)
    for col in IMAGE_COLUMNS:
        if col in ds.column_names:
            ds = ds.cast_column(col, Image())
    return ds


def _row_problems(*values: list, columns: Sequence[str]) -> dict[str, list]:
    """For a batch, the first problem of each row (``""`` when none), cheapest checks first."""
    batch = dict(zip(columns, values, strict=True))
    n = len(values[0]) if values else 0
    problems = []
    for i in range(n):
        problem = ""
        for col in columns:
            value = batch[col][i]
            if col in ID_COLUMNS:
                if value is None or (isinstance(value, str) and not value.strip()):
                    problem = f"{col}: missing"
            elif col in TITLE_COLUMNS:
                if value is None or (isinstance(value, str) and not value.strip()):
                    problem = f"{col}: empty"
            elif col in IMAGE_COLUMNS:
                problem = _image_problem(value)
                problem = f"{col}: {problem}" if problem else ""
            if problem:
                break
        problems.append(problem)
    return {"_problem": problems}


def _image_problem(value: Any) -> str:
    """Why an undecoded image cannot be used (``""`` when it opens and decodes)."""
    from PIL import Image as PILImage

    if value is None:
        return "missing"
    data, path = value.get("bytes"), value.get("path")
    if data is None and not path:
        return "missing"
    if data is None and "://" not in path and not os.path.isfile(path):
        return "missing file"
    try:
        with PILImage.open(io.BytesIO(data) if data is not None else path) as img:
            img.draft("RGB", CHECK_SIZE)
            img.load()
    except Exception:
        return "unreadable"
    return ""
