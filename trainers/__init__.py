"""Training stages, one sub-package per stage, each a Config beside its Trainer.

- :mod:`trainers.agcl`: stage 1, attribute-guided contrastive learning of the encoder.
- :mod:`trainers.extractor_sft`: the extractor's SFT warm-up on teacher attributes.
- :mod:`trainers.freezing`, :mod:`trainers.feature_cache`, :mod:`trainers.distributed`: what is
  trained, the frozen-feature cache, and what is gathered across processes.

Training-only code: checkpoints never ship it.
"""
