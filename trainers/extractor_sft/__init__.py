"""The extractor's SFT warm-up on teacher attributes (before RAR).

- :mod:`~trainers.extractor_sft.arguments`: the settings and defaults (standard library only).
- :mod:`~trainers.extractor_sft.config`: :class:`ExtractorSFTConfig`.
- :mod:`~trainers.extractor_sft.data`: (photo, title) -> attribute-string chat batches.
- :mod:`~trainers.extractor_sft.trainer`: :func:`train_extractor`.
"""
