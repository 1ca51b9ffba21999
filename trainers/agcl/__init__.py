"""AGCL, AFMRL's stage 1: attribute-guided contrastive training of the listing encoder.

- :mod:`~trainers.agcl.arguments`: every AGCL setting and default (standard library only).
- :mod:`~trainers.agcl.config`: :class:`AGCLConfig` (``TrainingArguments`` + those settings).
- :mod:`~trainers.agcl.loss`: :class:`AGCLLoss` (BM25 weights, false-negative filters) and InfoNCE.
- :mod:`~trainers.agcl.bm25`: BM25 between attribute texts.
- :mod:`~trainers.agcl.sampler`: which listings share a batch.
- :mod:`~trainers.agcl.collator`: columns, second views, processor batches.
- :mod:`~trainers.agcl.trainer`: :class:`AGCLTrainer`.

The classes are imported on first access, so ``trainers.agcl.arguments`` stays light.
"""

from __future__ import annotations

from afmrl.lazy import lazy_exports

_LAZY = {
    "AGCLArguments": "arguments",
    "AGCLConfig": "config",
    "AGCLLoss": "loss",
    "AGCLCollator": "collator",
    "ListingBatchSampler": "sampler",
    "AGCLTrainer": "trainer",
}

__all__ = sorted(_LAZY)

__getattr__ = lazy_exports(__name__, _LAZY)
