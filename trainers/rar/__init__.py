"""Stage 2, RAR: GRPO on the attribute extractor with a retrieval reward (TRL), and CIT.

- :mod:`~trainers.rar.arguments`: the settings and defaults (standard library only).
- :mod:`~trainers.rar.config`: :class:`RARConfig` (TRL's ``GRPOConfig`` + RAR's settings).
- :mod:`~trainers.rar.reward`: :class:`RetrievalReward`, the reward function, and the reward
  gallery built from the train split's pairs.
- :mod:`~trainers.rar.trainer`: :class:`RARTrainer` (``GRPOTrainer``) and :func:`train_rar`.
- :mod:`~trainers.rar.cit`: cyclic iterative training (re-extract, continue AGCL).

``docs/rar.md`` explains the reward and gives the GPU preset.
"""
