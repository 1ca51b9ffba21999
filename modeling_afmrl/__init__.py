"""The AFMRL model package: everything a checkpoint needs at load time (shipped as remote code).

Light to import: the classes are loaded on first access, so ``import modeling_afmrl.attributes``
does not pull in torch or transformers.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_LAZY = {
    "AFMRLConfig": "configuration_afmrl",
    "AFMRLModel": "modeling_afmrl",
    "AFMRLOutput": "modeling_afmrl",
    "AFMRLPreTrainedModel": "modeling_afmrl",
    "ExtractionResult": "modeling_afmrl",
    "AFMRLProcessor": "processing_afmrl",
}

__all__ = [
    "AFMRLConfig",
    "AFMRLModel",
    "AFMRLOutput",
    "AFMRLPreTrainedModel",
    "AFMRLProcessor",
    "ExtractionResult",
]

if TYPE_CHECKING:  # pragma: no cover
    from .configuration_afmrl import AFMRLConfig
    from .modeling_afmrl import AFMRLModel, AFMRLOutput, AFMRLPreTrainedModel, ExtractionResult
    from .processing_afmrl import AFMRLProcessor


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        module = importlib.import_module(f".{_LAZY[name]}", __name__)
        value = getattr(module, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
