"""Product catalogues in the AFMRL data contract.

- :func:`load_catalog` (:mod:`afmrl.data.catalog`): any catalogue -- a saved ``DatasetDict``, images
  with a CSV/JSONL table, a Hub dataset -- validated and mapped to the contract's splits and columns.
- :mod:`afmrl.data.synthetic`: the synthetic fine-grained catalogue (``afmrl synth``).

The contract is described in ``docs/design.md``.
"""

from .catalog import (
    EVAL_SPLITS,
    SPLITS,
    TRAIN_SPLITS,
    CatalogReport,
    load_catalog,
    parse_column_mapping,
)

__all__ = [
    "EVAL_SPLITS",
    "SPLITS",
    "TRAIN_SPLITS",
    "CatalogReport",
    "load_catalog",
    "parse_column_mapping",
]
