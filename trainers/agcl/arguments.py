"""The AGCL settings: every default and its help, defined once.

:class:`AGCLArguments` holds what AGCL adds to ``transformers.TrainingArguments`` and the training
defaults it changes; :class:`~trainers.agcl.config.AGCLConfig` combines the two. This module imports
only the standard library, so ``afmrl train-encoder --help`` reads these defaults without torch.
Field metadata follows TRL's style: ``help``, and ``choices`` / ``check`` for the command line.
"""

from __future__ import annotations

from dataclasses import dataclass, field

#: The training summary (settings, loss curve) written beside an AGCL checkpoint.
SUMMARY_FILE = "agcl_training.json"
LOSSES: tuple[str, ...] = ("agcl", "infonce")
WEIGHTINGS: tuple[str, ...] = ("bm25", "none")
FALSE_NEGATIVE_FILTERS: tuple[str, ...] = (
    "margin",
    "attributes",
    "both",
    "margin_compatible",
    "none",
)
#: What happens to a flagged false negative: left out of the denominator, or pulled in as a positive.
FALSE_NEGATIVE_HANDLING: tuple[str, ...] = ("remove", "attract")
BM25_NORMALIZATIONS: tuple[str, ...] = ("none", "self")
BM25_STATISTICS: tuple[str, ...] = ("batch", "corpus")
BATCH_SAMPLERS: tuple[str, ...] = ("random", "attributes", "mixed")
#: What ``loss="agcl"`` means when weighting and filter are not given: the variant chosen on the
#: default catalogue's validation split (``docs/agcl.md``): no BM25 weighting, the attribute filter,
#: flagged false negatives pulled in as extra positives.
AGCL_DEFAULTS: dict[str, str] = {
    "weighting": "none",
    "false_negatives": "attributes",
    "false_negative_handling": "attract",
}
#: The paper's form of AGCL, for comparison: BM25 weights, both filters, flagged pairs removed.
PAPER_FORM: dict[str, str] = {
    "weighting": "bm25",
    "false_negatives": "both",
    "false_negative_handling": "remove",
}


@dataclass
class AGCLArguments:
    """AGCL's own settings (see :class:`~trainers.agcl.config.AGCLConfig` for their meaning)."""

    # ---- loss
    loss: str = field(
        default="agcl",
        metadata={"help": "agcl, or infonce (the plain CLIP loss)", "choices": LOSSES},
    )
    weighting: str | None = field(
        default=None,
        metadata={
            "help": "hard-negative weights (default for agcl: none; the paper: bm25)",
            "choices": WEIGHTINGS,
        },
    )
    false_negatives: str | None = field(
        default=None,
        metadata={
            "help": "false-negative filter (default for agcl: attributes; the paper: both)",
            "choices": FALSE_NEGATIVE_FILTERS,
        },
    )
    delta: float = field(
        default=0.1, metadata={"help": "margin filter: mask j when s_ij > s_ii + delta"}
    )
    attribute_overlap: float = field(
        default=0.8,
        metadata={
            "help": "attribute filter: share of keys both listings must state",
            "check": "fraction",
        },
    )
    bm25_statistics: str = field(
        default="batch",
        metadata={
            "help": "BM25 statistics: the batch's, or the training column's",
            "choices": BM25_STATISTICS,
        },
    )
    bm25_normalization: str = field(
        default="none",
        metadata={
            "help": "none (the paper), or self: BM25 divided by the anchor's self-score before the "
            "tanh (raw BM25 over key=value terms saturates)",
            "choices": BM25_NORMALIZATIONS,
        },
    )
    bm25_scale: float = field(
        default=1.0,
        metadata={"help": "multiplier of the BM25 score inside the tanh", "check": "positive"},
    )
    weight_strength: float = field(
        default=1.0,
        metadata={"help": "multiplier of the log-weight 1 + tanh(...)", "check": "non_negative"},
    )
    attribute_keys: list[str] | None = field(
        default=None,
        metadata={
            "help": "attribute keys the weighting and the attribute filters read (default: all)"
        },
    )
    false_negative_handling: str = field(
        default=AGCL_DEFAULTS["false_negative_handling"],
        metadata={
            "help": "remove (the paper: flagged false negatives leave the denominator) or attract "
            "(they stay and count as extra positives)",
            "choices": FALSE_NEGATIVE_HANDLING,
        },
    )
    # ---- data
    text_attributes_column: str | None = field(
        default=None,
        metadata={
            "help": "column whose attributes are appended to the listing text (none: titles)"
        },
    )
    pos_text_attributes_column: str | None = field(
        default=None,
        metadata={
            "help": "column whose attributes are appended to the second view's text (default: "
            "pos_<text column> when present: with pairs of two listings, the second listing's own "
            "attributes; one shared string would let the model match a pair without looking)"
        },
    )
    loss_attributes_column: str | None = field(
        default=None,
        metadata={
            "help": "column the loss reads attributes from (default: the text attributes column, "
            "else teacher_attributes)"
        },
    )
    image_column: str = "image"
    title_column: str = "title"
    pos_image_column: str = "pos_image"
    pos_title_column: str = "pos_title"
    augment_second_view: bool | None = field(
        default=None,
        metadata={
            "help": "make the second view by augmentation (default: only when the data has no "
            "pos_image column; weaker than another seller's listing)"
        },
    )
    batch_sampler: str | None = field(
        default=None,
        metadata={
            "help": "which listings share a batch (default: mixed when the data has attributes, "
            "else random)",
            "choices": BATCH_SAMPLERS,
        },
    )
    hard_fraction: float = field(
        default=0.25,
        metadata={
            "help": "mixed sampler: share of a batch that is one run of attribute neighbours",
            "check": "fraction",
        },
    )
    sampler_group_size: int | None = field(
        default=None,
        metadata={
            "help": "attributes sampler: neighbours per group (default: one run per batch)",
            "check": "positive",
        },
    )
    # ---- what is trained
    train_vision_blocks: int = field(
        default=0,
        metadata={"help": "last vision blocks trained (-1: all, 0: frozen)", "check": "tail"},
    )
    train_text_layers: int = field(
        default=0,
        metadata={"help": "last text layers trained (-1: all, 0: frozen)", "check": "tail"},
    )
    head_learning_rate: float | None = field(
        default=1e-3,
        metadata={"help": "learning rate of the projections, fusion and temperature",
                  "check": "positive"},
    )  # fmt: skip
    use_lora: bool | None = field(
        default=None,
        metadata={
            "help": "LoRA on the encoder's language model (default: on for vlm, off for dual)"
        },
    )
    lora_r: int = field(default=16, metadata={"help": "LoRA rank", "check": "positive"})
    lora_alpha: int = field(default=32, metadata={"help": "LoRA alpha", "check": "positive"})
    lora_dropout: float = field(
        default=0.05, metadata={"help": "LoRA dropout", "check": "fraction"}
    )
    cache_frozen_features: bool = field(
        default=True,
        metadata={"help": "compute a frozen vision tower once per image (its features are cached)"},
    )
    feature_cache_dir: str | None = field(
        default=None,
        metadata={"help": "keep the frozen tower's features on disk here, shared by runs"},
    )
    matryoshka: bool = field(
        default=True, metadata={"help": "average the loss over the model's Matryoshka dims"}
    )
    log_masked_pairs: bool = field(
        default=False,
        metadata={"help": "write each step's listing ids and masked pairs to masked_pairs.jsonl"},
    )
    gradient_cache_chunk_size: int | None = field(
        default=None,
        metadata={
            "help": "gradient caching (GradCache): embed the step's listings this many at a time "
            "without gradients, take the loss of the whole batch, then replay each chunk with its "
            "cached gradient; memory no longer grows with the batch, for about one extra forward "
            "(None: off)",
            "check": "positive",
        },
    )

    # ---- TrainingArguments defaults that suit contrastive training on a CPU
    learning_rate: float = field(
        default=5e-5, metadata={"help": "learning rate of the tower layers", "check": "positive"}
    )
    per_device_train_batch_size: int = field(
        default=64, metadata={"help": "listings per device and step", "check": "positive"}
    )
    max_steps: int = field(
        default=200,
        metadata={
            "help": "optimiser steps (about 8 epochs of the default catalogue at batch 64; chosen "
            "on its validation split)",
            "check": "positive",
        },
    )
    warmup_steps: float = field(
        default=0.1,
        metadata={"help": "warm-up steps, or a ratio when < 1", "check": "non_negative"},
    )
    weight_decay: float = field(default=0.01, metadata={"check": "non_negative"})
    logging_steps: float = field(
        default=10, metadata={"help": "log every N steps", "check": "positive"}
    )
    save_steps: float = field(
        default=50, metadata={"help": "checkpoint every N steps", "check": "positive"}
    )
    save_total_limit: int | None = 2
    remove_unused_columns: bool = False
    dataloader_drop_last: bool = True
    ddp_find_unused_parameters: bool | None = False
    report_to: str | list[str] | None = "none"


__all__ = [
    "AGCL_DEFAULTS",
    "BATCH_SAMPLERS",
    "BM25_NORMALIZATIONS",
    "BM25_STATISTICS",
    "FALSE_NEGATIVE_FILTERS",
    "FALSE_NEGATIVE_HANDLING",
    "LOSSES",
    "PAPER_FORM",
    "SUMMARY_FILE",
    "WEIGHTINGS",
    "AGCLArguments",
]
