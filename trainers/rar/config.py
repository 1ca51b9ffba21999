"""``RARConfig``: TRL's ``GRPOConfig`` plus the RAR settings."""

from __future__ import annotations

from dataclasses import dataclass

from trl import GRPOConfig

from .arguments import GAIN_METRICS, LORA_CHOICES, REWARD_MODES, RARArguments


@dataclass
class RARConfig(RARArguments, GRPOConfig):
    r"""Configuration of :func:`~trainers.rar.trainer.train_rar`: ``GRPOConfig`` plus RAR's own.

    Reward:
        reward_mode (`str`): `"recall"` (Recall@k of the positive, the paper's),
            `"reciprocal_rank"` or `"gain"` (over the SFT extractor's attributes).
        recall_k (`int`, *optional*): k of the recall; default `recall_k_fraction` of the gallery.
        gain_metric (`str`): the metric `"gain"` compares.
        format_penalty (`float`): reward of a malformed or empty completion (-0.1).
        reward_depth (`int`): ranked list length per completion.
        gallery_size (`int`): reward-gallery listings, drawn by whole categories (0: all).
        gallery_attributes_column (`str`, *optional*): a train column holding the partners' SFT
            attributes (``afmrl extract``'s ``pos_attributes``) instead of generating them.
        train_fraction (`float`): share of the train rows RAR draws prompts from.

    Policy:
        lora (`str`): `"auto"` (LoRA above 300M parameters), `"on"` or `"off"`.
        train_vision_tower (`bool`): unfreeze the extractor's vision tower.

    The GRPO settings (`num_generations`, `max_completion_length`, `beta`, `loss_type`,
    `scale_rewards`, `use_vllm`...) are TRL's; RAR changes their defaults for a small extractor on
    a CPU (:class:`~trainers.rar.arguments.RARArguments`). `beta` must be > 0: the KL to the SFT
    policy keeps the extractor's attributes readable.
    """

    def __post_init__(self):
        super().__post_init__()
        if self.reward_mode not in REWARD_MODES:
            raise ValueError(f"reward_mode must be one of {REWARD_MODES}, got {self.reward_mode!r}")
        if self.gain_metric not in GAIN_METRICS:
            raise ValueError(f"gain_metric must be one of {GAIN_METRICS}, got {self.gain_metric!r}")
        if self.lora not in LORA_CHOICES:
            raise ValueError(f"lora must be one of {LORA_CHOICES}, got {self.lora!r}")
        if self.beta < 0:
            raise ValueError(f"beta must be >= 0, got {self.beta}")
        if self.recall_k is not None and self.recall_k < 1:
            raise ValueError(f"recall_k must be a positive integer, got {self.recall_k}")
        if not 0 < self.train_fraction <= 1:
            raise ValueError(f"train_fraction must be in (0, 1], got {self.train_fraction}")


__all__ = ["RARConfig"]
