"""Loading what the demo serves: the checkpoint (as a Space does) and its stored calibration.

:func:`load_space_model` is deliberately *not* :func:`afmrl.models.load_model`. The library loads
checkpoints with its installed ``modeling_afmrl`` classes (it never executes code that came with a
folder); a Hugging Face Space, however, is handed a checkpoint id and nothing else, and must run
the model the way its users will: ``AutoModel.from_pretrained(..., trust_remote_code=True)`` with
the ``AutoProcessor`` saved beside it -- the remote code shipped inside the checkpoint. The demo
therefore exercises exactly what a Hub user gets. Failures still become one-line
:class:`~afmrl.errors.UserError` messages naming the checkpoint.
"""

from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from afmrl.errors import MissingPathError, UserError, one_line
from afmrl.io import looks_like_local_path

#: The quickstart's final model and catalogue (``make quickstart``), relative to the working folder.
DEFAULT_MODEL = "outputs/quickstart/afmrl-model"
DEFAULT_DATA = "outputs/quickstart/catalog"


def load_space_model(source: str | os.PathLike, what: str = "--model") -> Any:
    """An AFMRL checkpoint (local folder or Hub id) through the Auto classes, in eval mode.

    The processor comes from ``AutoProcessor`` (it carries the extractor's processor too) and is
    attached to the model, so ``model.encode`` / ``model.extract_attributes`` work directly.
    """
    from afmrl.models import is_checkpoint_folder

    name = os.fspath(source)
    local = Path(name).expanduser()
    if local.exists():
        if not is_checkpoint_folder(local):
            raise UserError(f"{what} {name}: not an AFMRL checkpoint folder (no AFMRL config.json)")
        name = str(local)
    elif looks_like_local_path(name) or _offline():
        hint = " (run `make quickstart` first, or pass --model)" if name == DEFAULT_MODEL else ""
        raise MissingPathError(f"{what} {name}: no such checkpoint folder{hint}")
    from safetensors import SafetensorError
    from transformers import AutoModel, AutoProcessor

    try:
        model = AutoModel.from_pretrained(name, trust_remote_code=True)
        processor = AutoProcessor.from_pretrained(name, trust_remote_code=True)
    except (OSError, ValueError, KeyError, RuntimeError, ImportError, SafetensorError) as err:
        raise UserError(f"{what} {name}: cannot load the checkpoint ({one_line(err)})") from err
    if getattr(model.config, "model_type", None) != "afmrl":
        raise UserError(f"{what} {name}: not an AFMRL checkpoint")
    model.processor = processor
    return model.eval()


def checkpoint_folder(model: Any) -> Path | None:
    """The local folder the model's files are in (a Hub id resolves to its download cache)."""
    source = str(getattr(model, "name_or_path", "") or "")
    if Path(source).is_dir():
        return Path(source)
    try:
        from transformers.utils import cached_file

        config = cached_file(source, "config.json", _raise_exceptions_for_missing_entries=False)
    except (OSError, ValueError):
        return None
    return Path(config).parent if config else None


def weights_fingerprint(model: Any) -> str:
    """:func:`afmrl.models.model_fingerprint` of the checkpoint's files, for a Hub id too (its
    download folder holds the same files), so a calibration made on a local folder matches."""
    from afmrl.models import model_fingerprint

    folder = checkpoint_folder(model)
    if folder is None:
        return model_fingerprint(model)
    return model_fingerprint(SimpleNamespace(name_or_path=str(folder), state_dict=model.state_dict))


def load_calibration(model: Any) -> tuple[Any, str]:
    """The checkpoint's ``calibration.json`` as a ``Calibrator`` (or ``None``) and a note for the
    user: why there is none, or that it was made for other weights (then it is not used)."""
    from afmrl.evaluation.calibration import CALIBRATION_FILE, Calibrator

    folder = checkpoint_folder(model)
    path = folder / CALIBRATION_FILE if folder is not None else None
    if path is None or not path.is_file():
        path = _hub_file(model, CALIBRATION_FILE)
    if path is None:
        return None, (
            "no calibration stored with this checkpoint (run `afmrl calibrate`): scores are shown "
            "without an 'identical' probability"
        )
    try:
        calibrator = Calibrator.load(path)
    except UserError as err:
        return None, f"calibration not used: {err}"
    stored = calibrator.meta.get("model_fingerprint")
    if stored and stored != weights_fingerprint(model):
        return None, (
            "calibration not used: calibration.json was fitted for other weights (rerun "
            "`afmrl calibrate`)"
        )
    return calibrator, ""


def _hub_file(model: Any, filename: str) -> Path | None:
    source = str(getattr(model, "name_or_path", "") or "")
    if not source or Path(source).exists():
        return None
    try:
        from transformers.utils import cached_file

        found = cached_file(source, filename, _raise_exceptions_for_missing_entries=False)
    except (OSError, ValueError):
        return None
    return Path(found) if found else None


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")


__all__ = [
    "DEFAULT_DATA",
    "DEFAULT_MODEL",
    "checkpoint_folder",
    "load_calibration",
    "load_space_model",
    "weights_fingerprint",
]
