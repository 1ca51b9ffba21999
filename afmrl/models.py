"""Loading an AFMRL checkpoint: the one way the library and the command line do it.

:func:`load_model` uses the installed ``modeling_afmrl`` classes (``AFMRLModel.from_pretrained``), not
the remote-code copy saved inside the checkpoint: the library never executes code that came with a
folder or a Hub repository, and the classes it trains with are the ones it evaluates with. Users
who have only transformers load the same folder with ``AutoModel.from_pretrained(path,
trust_remote_code=True)``; both paths read the same config and safetensors weights.

Every way a checkpoint can be unusable -- a missing path, a file instead of a folder, a folder
without ``config.json``, another model type, truncated or corrupt weights, a Hub id while offline --
raises :class:`~afmrl.errors.UserError` with one line naming the path and the problem.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import MissingPathError, UserError, one_line
from .io import Fingerprint, looks_like_local_path, sha256_file, state_dict_fingerprint

if TYPE_CHECKING:
    from modeling_afmrl import AFMRLModel


def is_checkpoint_folder(folder: str | os.PathLike) -> bool:
    """True for a folder holding an AFMRL checkpoint (what a command's ``--overwrite`` replaces)."""
    try:
        config = json.loads((Path(folder) / "config.json").read_text(encoding="utf-8"))
        return config["model_type"] == "afmrl"
    except (OSError, ValueError, KeyError, TypeError):
        return False


def check_checkpoint_folder(folder: Path, what: str) -> None:
    """Raise a one-line :class:`UserError` unless ``folder`` holds an AFMRL checkpoint."""
    if not folder.is_dir():
        raise UserError(f"{what} {folder}: is a file, not a checkpoint folder")
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise UserError(f"{what} {folder}: no config.json, so not a checkpoint folder")
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise UserError(f"{what} {folder}: config.json is unreadable ({one_line(err)})") from err
    model_type = config.get("model_type") if isinstance(config, dict) else None
    if model_type != "afmrl":
        raise UserError(
            f"{what} {folder}: not an AFMRL checkpoint (config.json has model_type {model_type!r})"
        )
    if not any(folder.glob("*.safetensors")):
        raise UserError(f"{what} {folder}: no *.safetensors weights in the folder")


def load_model(
    path: str | os.PathLike, *, need_extractor: bool = False, what: str = "model"
) -> AFMRLModel:
    """An AFMRL checkpoint (a folder or a Hub id) in eval mode.

    Args:
        path: checkpoint folder or Hub model id.
        need_extractor: refuse a checkpoint without an attribute extractor.
        what: how errors name the path (e.g. ``"--model"``).

    Raises:
        UserError: the checkpoint cannot be loaded (the message says why).
    """
    source = os.fspath(path)
    local = Path(source).expanduser()
    if local.exists():
        check_checkpoint_folder(local, what)
        source = str(local)
    elif looks_like_local_path(source, (".safetensors", ".json")):
        raise MissingPathError(f"{what} {source}: no such folder")
    elif os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        raise MissingPathError(
            f"{what} {source}: no such folder (and as a Hub model id it cannot be downloaded: "
            "HF_HUB_OFFLINE is set)"
        )
    from safetensors import SafetensorError

    from modeling_afmrl import AFMRLModel

    try:
        model = AFMRLModel.from_pretrained(source)
    except (OSError, ValueError, KeyError, RuntimeError, SafetensorError) as err:
        raise UserError(f"{what} {source}: cannot load the checkpoint ({one_line(err)})") from err
    if need_extractor and model.extractor is None:
        raise UserError(f"{what} {source}: the checkpoint has no attribute extractor")
    return model.eval()


def model_fingerprint(model: Any) -> str:
    """Identifies a model's weights: the sha256 of its checkpoint's config and safetensors files
    when it was loaded from a folder, else a hash over its parameters."""
    folder = Path(str(getattr(model, "name_or_path", "") or ""))
    files = sorted(folder.glob("*.safetensors")) if folder.is_dir() else []
    if not files:
        return state_dict_fingerprint(model.state_dict())
    h = Fingerprint()
    for f in [folder / "config.json", *files]:
        if f.is_file():
            h.update(f.name, sha256_file(f))
    return h.hexdigest()


__all__ = ["check_checkpoint_folder", "is_checkpoint_folder", "load_model", "model_fingerprint"]
