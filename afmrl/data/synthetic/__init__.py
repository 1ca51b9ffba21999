"""The synthetic fine-grained product catalogue (``afmrl synth``).

Products come in families that differ in exactly one attribute (the hard negatives); each product is
sold by 2-4 sellers, each with their own photo studio and title habits. See :mod:`.build` for the
dataset layout, :mod:`.plan` for how products, families, sellers and splits are decided and
:mod:`.config` for :class:`CatalogConfig`.

Names are imported on first access (numpy and PIL are not needed to read the config).
"""

from __future__ import annotations

from afmrl.lazy import lazy_exports

_LAZY = {
    "CatalogConfig": "config",
    "SPLITS": "plan",
    "CatalogPlan": "plan",
    "get_plan": "plan",
    "build_catalog": "build",
    "content_fingerprint": "build",
    "generate_rows": "build",
    "make_row": "build",
    "split_features": "build",
    "write_preview": "preview",
}

__all__ = sorted(_LAZY)

__getattr__ = lazy_exports(__name__, _LAZY)
