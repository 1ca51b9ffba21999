"""``ExtractorSFTConfig``: ``transformers.TrainingArguments`` plus the extractor-SFT settings."""

from __future__ import annotations

from dataclasses import dataclass

from transformers import TrainingArguments

from .arguments import ExtractorSFTArguments


@dataclass
class ExtractorSFTConfig(ExtractorSFTArguments, TrainingArguments):
    """Configuration of :func:`~trainers.extractor_sft.trainer.train_extractor`.

    Args:
        target_column: the training split's attribute column (the teacher's output).
        use_pos_view: also train on the second listing of each row (``pos_image``,
            ``pos_title``) with the same target: twice the (image, title) pairs.
        cache_features: compute the frozen vision tower once per image (LLaVA-timm extractor).
        feature_cache_dir: where those features are kept between runs (default: memory only).
        max_title_tokens: titles are cut to this many tokens.
        max_target_tokens: targets are cut to this many tokens (then the end token).
        train_vision_tower: unfreeze the vision tower (slow on CPU).
        lora_r: LoRA rank for the language model (0: full fine-tuning of projector + decoder).
    """

    def __post_init__(self):
        super().__post_init__()
        if self.lora_r < 0:
            raise ValueError(f"lora_r must be >= 0, got {self.lora_r}")
        if self.max_steps <= 0 and self.num_train_epochs <= 0:
            raise ValueError(
                "the SFT would train zero steps: set max_steps or num_train_epochs > 0"
            )


__all__ = ["ExtractorSFTConfig"]
