"""The synthetic fine-grained product catalogue (``afmrl synth``).

Products come in families that differ in exactly one attribute (the hard negatives); each product is
sold by 2-4 sellers, each with their own photo studio and title habits. See :mod:`.build` for the
dataset layout and :mod:`.plan` for how products, families, sellers and splits are decided.
"""

from .build import build_catalog, content_fingerprint, generate_rows, make_row, split_features
from .plan import SPLITS, CatalogConfig, CatalogPlan, get_plan
from .preview import write_preview

__all__ = [
    "SPLITS",
    "CatalogConfig",
    "CatalogPlan",
    "build_catalog",
    "content_fingerprint",
    "generate_rows",
    "get_plan",
    "make_row",
    "split_features",
    "write_preview",
]
