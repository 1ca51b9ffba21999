"""The RAR settings: every default and its help, defined once.

:class:`RARArguments` holds what RAR adds to TRL's ``GRPOConfig`` (the reward, the reward gallery,
LoRA) and the GRPO defaults it changes for a small extractor on a CPU;
:class:`~trainers.rar.config.RARConfig` combines the two. Standard library only, so ``afmrl
train-rar --help`` reads these without importing torch or TRL. ``docs/rar.md`` explains the reward
and gives the GPU preset.
"""

from __future__ import annotations

from dataclasses import dataclass, field

#: What a completion is scored by (see :mod:`trainers.rar.reward`).
REWARD_MODES: tuple[str, ...] = ("recall", "reciprocal_rank", "gain")
#: The metric ``gain`` takes the difference of.
GAIN_METRICS: tuple[str, ...] = ("recall", "reciprocal_rank")
#: TRL 1.16's GRPO loss aggregations.
LOSS_TYPES: tuple[str, ...] = (
    "dapo", "grpo", "dr_grpo", "bnpo", "cispo", "sapo", "luspo", "vespo",
)  # fmt: skip
#: TRL's reward scaling inside a group of completions of one prompt.
SCALE_REWARDS: tuple[str, ...] = ("group", "batch", "none")
#: ``auto``: LoRA when the policy has more than :data:`LORA_AUTO_PARAMETERS` parameters.
LORA_CHOICES: tuple[str, ...] = ("auto", "on", "off")
#: Policies above this size get LoRA under ``lora="auto"`` (a 3B VLM does, the embedded default's
#: ~10M-parameter decoder does not).
LORA_AUTO_PARAMETERS = 300_000_000
#: The language-model layers LoRA adapts (Qwen2 / Llama names), as in the extractor SFT.
LORA_TARGET_MODULES: tuple[str, ...] = (
    "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
)  # fmt: skip


@dataclass
class RARArguments:
    """RAR's own settings (see :class:`~trainers.rar.config.RARConfig`)."""

    # ---- the reward
    reward_mode: str = field(
        default="reciprocal_rank",
        metadata={
            "help": "recall (Recall@k of the positive, the paper's), reciprocal_rank, or gain (the "
            "gain_metric over the SFT extractor's attributes for the same listing)",
            "choices": REWARD_MODES,
        },
    )
    recall_k: int | None = field(
        default=None,
        metadata={
            "help": "k of the recall reward (default: recall_k_fraction of the reward gallery, at "
            "least 1)",
            "check": "positive",
        },
    )
    recall_k_fraction: float = field(
        default=0.0005,
        metadata={
            "help": "default k as a share of the reward gallery (the paper's k=50 of a 100k "
            "gallery; k=1 on the default catalogue's 1,709 listings, where the SFT attributes hit "
            "about half the time)",
            "check": "share",
        },
    )
    gain_metric: str = field(
        default="reciprocal_rank",
        metadata={"help": "the metric the gain mode compares", "choices": GAIN_METRICS},
    )
    format_penalty: float = field(
        default=-0.1, metadata={"help": "reward of a malformed (or empty) completion"}
    )
    reward_depth: int = field(
        default=100,
        metadata={
            "help": "ranked list length per completion (a positive below it scores 0)",
            "check": "positive",
        },
    )
    reward_positives: str = field(
        default="partner",
        metadata={
            "help": "partner (the row's pair partner), or linked (every train listing the pairs "
            "chain to the query's: A-B and B-C make C a positive of A)",
            "choices": ("partner", "linked"),
        },
    )
    gallery_size: int = field(
        default=0,
        metadata={
            "help": "listings in the reward gallery, drawn by whole categories (0: every train "
            "partner)",
            "check": "non_negative",
        },
    )
    gallery_attributes_column: str | None = field(
        default=None,
        metadata={
            "help": "read the reward gallery's attributes from this train column (the partners' "
            "attributes the SFT extractor already wrote, e.g. afmrl extract's pos_attributes) "
            "instead of generating them with --model's extractor",
        },
    )
    reward_batch_size: int = field(
        default=64, metadata={"help": "listings per encoder forward pass", "check": "positive"}
    )
    train_fraction: float = field(
        default=1.0,
        metadata={
            "help": "share of the queries (train rows) RAR draws prompts from",
            "check": "share",
        },
    )

    # ---- the policy
    lora: str = field(
        default="auto",
        metadata={
            "help": "LoRA on the extractor's language model: auto (on above 300M parameters), on, "
            "off (full fine-tuning of projector and decoder)",
            "choices": LORA_CHOICES,
        },
    )
    lora_r: int = field(default=16, metadata={"help": "LoRA rank", "check": "positive"})
    lora_alpha: int = field(default=32, metadata={"help": "LoRA alpha", "check": "positive"})
    lora_target_modules: list[str] = field(default_factory=lambda: list(LORA_TARGET_MODULES))
    train_vision_tower: bool = field(
        default=False, metadata={"help": "unfreeze the extractor's vision tower (slow on CPU)"}
    )

    # ---- GRPOConfig defaults for a small extractor on a CPU
    num_generations: int | None = field(
        default=8,
        metadata={"help": "completions per prompt (the GRPO group)", "check": "positive"},
    )
    per_device_train_batch_size: int = field(
        default=32,
        metadata={
            "help": "completions per step (a multiple of num_generations)",
            "check": "positive",
        },
    )
    max_completion_length: int | None = field(
        default=64,
        metadata={
            "help": "completion budget in tokens (extraction's default budget)",
            "check": "positive",
        },
    )
    temperature: float = field(
        default=1.0, metadata={"help": "sampling temperature", "check": "positive"}
    )
    beta: float = field(
        default=0.04,
        metadata={"help": "KL coefficient to the SFT policy (> 0 keeps a reference model)"},
    )
    learning_rate: float = field(
        default=5e-5, metadata={"help": "peak learning rate", "check": "positive"}
    )
    loss_type: str = field(
        default="dapo", metadata={"help": "GRPO loss aggregation", "choices": LOSS_TYPES}
    )
    scale_rewards: str = field(
        default="group",
        metadata={"help": "reward scaling of the advantages", "choices": SCALE_REWARDS},
    )
    max_steps: int = field(default=100, metadata={"help": "GRPO steps", "check": "positive"})
    warmup_steps: float = field(
        default=0.0,
        metadata={"help": "warm-up steps, or a ratio when < 1", "check": "non_negative"},
    )
    lr_scheduler_type: str = field(
        default="constant", metadata={"help": "transformers learning-rate schedule"}
    )
    disable_dropout: bool = field(
        default=True,
        metadata={"help": "no dropout in the policy (log-probabilities match the reference)"},
    )
    gradient_checkpointing: bool = field(
        default=False, metadata={"help": "recompute activations (saves memory on a GPU)"}
    )
    logging_steps: float = 1
    save_steps: float = field(
        default=50, metadata={"help": "checkpoint every N steps", "check": "positive"}
    )
    remove_unused_columns: bool | None = False
    report_to: str | list[str] | None = "none"


__all__ = [
    "GAIN_METRICS",
    "LORA_AUTO_PARAMETERS",
    "LORA_CHOICES",
    "LORA_TARGET_MODULES",
    "LOSS_TYPES",
    "REWARD_MODES",
    "SCALE_REWARDS",
    "RARArguments",
]
