"""The extractor-SFT settings: every default and its help, defined once.

:class:`ExtractorSFTArguments` holds what the SFT adds to ``transformers.TrainingArguments`` and the
training defaults it changes (chosen on the default catalogue's validation split: 3 epochs at
lr 2e-3, cosine schedule, batch 32); :class:`~trainers.extractor_sft.config.ExtractorSFTConfig`
combines the two. Standard library only, so the command line reads these without torch.
"""

from __future__ import annotations

from dataclasses import dataclass, field

#: The language-model layers LoRA adapts when ``lora_r > 0`` (Qwen2 / Llama names).
LORA_TARGET_MODULES: tuple[str, ...] = (
    "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
)  # fmt: skip


@dataclass
class ExtractorSFTArguments:
    """The extractor SFT's own settings (see :class:`ExtractorSFTConfig`)."""

    target_column: str = field(
        default="teacher_attributes",
        metadata={"help": "the training split's attribute column (the teacher's output)"},
    )
    use_pos_view: bool = field(
        default=True,
        metadata={
            "help": "also train on each row's second listing (pos_image, pos_title) with the same "
            "target"
        },
    )
    cache_features: bool = field(
        default=True,
        metadata={
            "help": "compute the frozen vision tower once per image (LLaVA-timm extractor only)"
        },
    )
    feature_cache_dir: str | None = field(
        default=None, metadata={"help": "keep the frozen tower's features on disk here"}
    )
    max_title_tokens: int = field(
        default=64, metadata={"help": "titles are cut to this many tokens", "check": "positive"}
    )
    max_target_tokens: int = field(
        default=96,
        metadata={"help": "targets are cut to this many tokens (then the end token)",
                  "check": "positive"},
    )  # fmt: skip
    train_vision_tower: bool = field(
        default=False, metadata={"help": "unfreeze the vision tower (pixel path; slow on CPU)"}
    )
    lora_r: int = field(
        default=0,
        metadata={"help": "LoRA rank for the language model (0: full fine-tuning of projector and "
                  "decoder)", "check": "non_negative"},
    )  # fmt: skip
    lora_alpha: int = field(default=32, metadata={"help": "LoRA alpha", "check": "positive"})
    lora_dropout: float = field(
        default=0.05, metadata={"help": "LoRA dropout", "check": "fraction"}
    )
    lora_target_modules: list[str] = field(default_factory=lambda: list(LORA_TARGET_MODULES))

    # ---- TrainingArguments defaults for a small extractor on a CPU
    num_train_epochs: float = field(
        default=3.0, metadata={"help": "epochs over the training pairs", "check": "positive"}
    )
    learning_rate: float = field(
        default=2e-3, metadata={"help": "peak learning rate", "check": "positive"}
    )
    per_device_train_batch_size: int = field(
        default=32, metadata={"help": "pairs per step", "check": "positive"}
    )
    warmup_steps: float = field(
        default=0.05,
        metadata={"help": "warm-up steps, or a ratio when < 1", "check": "non_negative"},
    )
    weight_decay: float = field(default=0.01, metadata={"check": "non_negative"})
    lr_scheduler_type: str = field(
        default="cosine", metadata={"help": "transformers learning-rate schedule"}
    )
    logging_steps: float = 10
    remove_unused_columns: bool = False
    report_to: str | list[str] | None = "none"


__all__ = ["LORA_TARGET_MODULES", "ExtractorSFTArguments"]
