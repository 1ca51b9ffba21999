"""Publishing on the Hugging Face Hub: a checkpoint with its model card, the catalogue as a Hub
dataset, and the demo as a Gradio Space.

Every upload goes through ``huggingface_hub.HfApi``: ``create_repo(exist_ok=True)``, then one
``create_commit`` per repository holding the whole file list (so a repository never shows half a
push). The cards come from :mod:`hub_cards.cards`; the user's folders are only read (a card is
uploaded, not written into the checkpoint).

- model: every file of the checkpoint folder + ``README.md`` (the model card, ``model-index`` from
  an ``afmrl evaluate`` ``metrics.json`` when given);
- dataset: one parquet file per split under ``data/`` (images embedded as bytes, as
  ``datasets.push_to_hub`` writes them) + ``README.md`` (dataset card with the split config);
- Space: ``app.py``, the ``afmrl``, ``modeling_afmrl`` and ``trainers`` packages, ``requirements.txt`` (the
  installed ``afmrl``'s own requirements), ``space.json`` (which model and catalogue ``app.py``
  serves) + ``README.md`` (Gradio SDK header).

No token, an offline or unreachable Hub, a repository that exists as another type, and a token
without write access are each one line (:class:`~afmrl.errors.UserError`).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from .errors import UserError, one_line

if TYPE_CHECKING:
    from datasets import DatasetDict

T = TypeVar("T")
#: Where ``app.py`` (the Space's entry point) lives: the root of an afmrl source checkout.
SOURCE_ROOT = Path(__file__).resolve().parents[1]
#: The packages a Space needs to run ``afmrl demo``: the library, the remote code, and the trainers'
#: settings modules, which the command line's parser reads for every command's flags.
SPACE_PACKAGES = ("afmrl", "modeling_afmrl", "trainers")
#: What ``app.py`` reads to know its model and catalogue (environment variables take precedence).
SPACE_CONFIG = "space.json"


@dataclass
class HubUpload:
    """One repository's commit: ``files`` maps the path in the repository to a local file or bytes."""

    repo_id: str
    repo_type: str
    files: dict[str, Path | bytes] = field(default_factory=dict)


def folder_files(folder: Path, prefix: str = "") -> dict[str, Path]:
    """Every file under ``folder`` (hidden files and caches left out), by its repository path."""
    files = {}
    for path in sorted(folder.rglob("*")):
        parts = path.relative_to(folder).parts
        if path.is_file() and not any(p == "__pycache__" or p.startswith(".") for p in parts):
            files[prefix + "/".join(parts)] = path
    return files


def check_repo_id(repo_id: str, flag: str) -> str:
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError as err:
        raise UserError(f"{flag} {repo_id!r}: {one_line(err)}") from err
    if "/" not in repo_id:
        raise UserError(f"{flag} {repo_id!r}: give it as ORG/NAME (or USER/NAME)")
    return repo_id


def require_token() -> str:
    """The Hub token, or a one-line error saying how to get one."""
    from huggingface_hub import get_token

    token = get_token()
    if not token:
        raise UserError(
            "no Hugging Face token: run `hf auth login` or set HF_TOKEN (a token with write access)"
        )
    return token


def model_upload(
    checkpoint: Path,
    repo_id: str,
    *,
    metrics: Mapping[str, Any] | None = None,
    dataset_id: str | None = None,
) -> HubUpload:
    """The checkpoint's files and its model card."""
    from hub_cards.cards import model_card

    files: dict[str, Path | bytes] = dict(folder_files(checkpoint))
    card = model_card(checkpoint, repo_id=repo_id, metrics=metrics, dataset_id=dataset_id)
    files["README.md"] = str(card).encode()
    return HubUpload(repo_id, "model", files)


def dataset_upload(data: DatasetDict, catalog: str, repo_id: str, workdir: Path) -> HubUpload:
    """Every split of ``data`` (the catalogue loaded from ``catalog``) as parquet, images
    embedded, under ``data/``, and its card."""
    from datasets.table import embed_table_storage

    from hub_cards.cards import dataset_card

    files: dict[str, Path | bytes] = {}
    rows = {}
    for name, split in data.items():
        path = workdir / f"{name}-00000-of-00001.parquet"
        split.with_format("arrow").map(embed_table_storage, batched=True).to_parquet(str(path))
        files[f"data/{path.name}"] = path
        rows[name] = len(split)
    card = dataset_card(
        catalog,
        repo_id=repo_id,
        splits=rows,
        split_columns={name: split.column_names for name, split in data.items()},
    )
    files["README.md"] = str(card).encode()
    return HubUpload(repo_id, "dataset", files)


def space_requirements() -> str:
    """The installed ``afmrl``'s runtime requirements (no extras), one per line."""
    from importlib.metadata import PackageNotFoundError, requires

    try:
        wanted = requires("afmrl") or []
    except PackageNotFoundError as err:  # pragma: no cover - the package is always installed here
        raise UserError("afmrl is not installed, so its requirements are unknown") from err
    return "\n".join(r for r in wanted if "extra ==" not in r) + "\n"


def space_upload(repo_id: str, *, model_id: str, dataset_id: str | None) -> HubUpload:
    """``app.py``, the packages ``afmrl demo`` needs, requirements, ``space.json`` and the README."""
    from hub_cards.cards import space_card

    app = SOURCE_ROOT / "app.py"
    if not app.is_file():
        raise UserError(
            f"--space-repo: no app.py in {SOURCE_ROOT}; pushing a Space needs a source checkout "
            "of afmrl"
        )
    files: dict[str, Path | bytes] = {"app.py": app}
    for package in SPACE_PACKAGES:
        files.update(folder_files(SOURCE_ROOT / package, prefix=f"{package}/"))
    files["requirements.txt"] = space_requirements().encode()
    config = {"MODEL_ID": model_id, **({"DATA_ID": dataset_id} if dataset_id else {})}
    files[SPACE_CONFIG] = (json.dumps(config, indent=2) + "\n").encode()
    files["README.md"] = str(space_card(model_id=model_id, dataset_id=dataset_id)).encode()
    return HubUpload(repo_id, "space", files)


def _hub_call(repo: HubUpload, call: Callable[[], T]) -> T:
    """Run one Hub call; its failures become one line naming the repository."""
    import httpx
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

    where = f"{repo.repo_type} repository {repo.repo_id}"
    try:
        return call()
    except OfflineModeIsEnabled as err:
        raise UserError(f"{where}: HF_HUB_OFFLINE is set, so the Hub cannot be reached") from err
    except HfHubHTTPError as err:
        status = err.response.status_code if err.response is not None else None
        if status == 409:
            raise UserError(
                f"{where}: the name is taken by a repository of another type or owner "
                f"({one_line(err, 200)})"
            ) from err
        if status in (401, 403):
            raise UserError(
                f"{where}: the token may not write there ({one_line(err, 200)})"
            ) from err
        raise UserError(f"{where}: the Hub refused the upload ({one_line(err, 200)})") from err
    except httpx.TransportError as err:
        raise UserError(f"{where}: cannot reach the Hub ({one_line(err, 200)})") from err


def push(
    uploads: list[HubUpload], *, private: bool = False, message: str = "Upload from afmrl push"
) -> Iterator[str]:
    """Create each repository (if needed) and commit its files; yields each repository's URL."""
    from huggingface_hub import CommitOperationAdd, HfApi

    api = HfApi()
    for repo in uploads:
        extra = {"space_sdk": "gradio"} if repo.repo_type == "space" else {}
        url = _hub_call(
            repo,
            lambda repo=repo, extra=extra: api.create_repo(
                repo.repo_id, repo_type=repo.repo_type, private=private, exist_ok=True, **extra
            ),
        )
        operations = [
            CommitOperationAdd(path_in_repo=name, path_or_fileobj=source)
            for name, source in sorted(repo.files.items())
        ]
        _hub_call(
            repo,
            lambda repo=repo, operations=operations: api.create_commit(
                repo.repo_id, operations, repo_type=repo.repo_type, commit_message=message
            ),
        )
        yield str(url)


def read_metrics(path: str | None) -> dict[str, Any] | None:
    """An ``afmrl evaluate`` ``metrics.json`` (``None`` when no path is given)."""
    if path is None:
        return None
    try:
        metrics = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError as err:
        raise UserError(f"--metrics {path}: no such file") from err
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise UserError(f"--metrics {path}: not a readable JSON file ({one_line(err)})") from err
    if not isinstance(metrics, dict) or "recall@1" not in metrics:
        raise UserError(f"--metrics {path}: not an `afmrl evaluate` metrics.json (no recall@1)")
    return metrics


__all__ = [
    "SPACE_CONFIG",
    "HubUpload",
    "check_repo_id",
    "dataset_upload",
    "folder_files",
    "model_upload",
    "push",
    "read_metrics",
    "require_token",
    "space_requirements",
    "space_upload",
]
