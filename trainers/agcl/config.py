"""``AGCLConfig``: the configuration of :class:`~trainers.agcl.trainer.AGCLTrainer`.

``transformers.TrainingArguments`` plus :class:`~trainers.agcl.arguments.AGCLArguments` (AGCL's own
settings and the training defaults it changes, defined there once with their help).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from transformers import TrainingArguments

from .arguments import (
    BATCH_SAMPLERS,
    BM25_NORMALIZATIONS,
    BM25_STATISTICS,
    FALSE_NEGATIVE_FILTERS,
    FALSE_NEGATIVE_HANDLING,
    LOSSES,
    WEIGHTINGS,
    AGCLArguments,
)
from .bm25 import BM25Statistics
from .loss import AGCLLoss


@dataclass
class AGCLConfig(AGCLArguments, TrainingArguments):
    r"""Configuration of [`AGCLTrainer`]: `TrainingArguments` plus the AGCL settings.

    Loss:
        loss (`str`, defaults to `"agcl"`): `"agcl"` or `"infonce"` (plain CLIP loss).
        weighting (`str`, *optional*): `"bm25"` or `"none"`; defaults to `"bm25"` for agcl.
        false_negatives (`str`, *optional*): `"margin"`, `"attributes"`, `"both"`,
            `"margin_compatible"` (margin hits whose attributes do not conflict) or `"none"`;
            defaults to `"both"` for agcl.
        delta (`float`): margin of the margin filter (cosine similarity).
        attribute_overlap (`float`): share of keys two listings must both state for the
            attribute filter.
        bm25_statistics (`str`): `"batch"` or `"corpus"` (the training column's statistics).
        bm25_normalization (`str`): `"none"` (paper) or `"self"` (BM25 divided by the anchor's
            self-score before the tanh).
        bm25_scale (`float`): multiplier of the BM25 score inside the tanh.
        weight_strength (`float`): multiplier of the log-weight `1 + tanh(...)`.
        attribute_keys (`list[str]`, *optional*): attribute keys the weighting and the attribute
            filters read (default: all).
        false_negative_handling (`str`): `"remove"` (paper: flagged false negatives leave the
            denominator) or `"attract"` (they stay and count as extra positives).

    Data:
        text_attributes_column (`str`, *optional*): column whose attributes are appended to the
            listing text (`None`: titles only).
        pos_text_attributes_column (`str`, *optional*): column whose attributes are appended to
            the second view's text; defaults to `pos_<text_attributes_column>` when the data has it
            (pairs of two listings: the other listing's own attributes), else the first view's
            column (right only when both views show the same listing).
        loss_attributes_column (`str`, *optional*): column the loss reads attributes from;
            defaults to `text_attributes_column`, else `teacher_attributes` when the data has it.
        image_column, title_column, pos_image_column, pos_title_column (`str`): column names.
        augment_second_view (`bool`, *optional*): make the second view by augmentation; defaults
            to True exactly when the data has no `pos_image_column`.
        batch_sampler (`str`, *optional*): `"random"`, `"attributes"` or `"mixed"` (see
            `trainers.agcl.sampler`); defaults to `"mixed"` when the data has attributes, else
            `"random"`.
        hard_fraction (`float`): `mixed` sampler: share of a batch that is one run of attribute
            neighbours.
        sampler_group_size (`int`, *optional*): `attributes` sampler: neighbours per group
            (default: the global batch size, i.e. one run per batch).

    Model:
        train_vision_blocks / train_text_layers (`int`): how many of the last vision blocks / text
            layers of a dual encoder are trained (`-1`: the whole tower, `0`: frozen).
        head_learning_rate (`float`, *optional*): learning rate of the projections, fusion and logit
            scale (default: `learning_rate`).
        use_lora (`bool`, *optional*): LoRA on the encoder's language model; defaults to True for
            the vlm encoder, False for the dual one (whose text tower it then adapts).
        lora_r, lora_alpha, lora_dropout: LoRA settings.
        cache_frozen_features (`bool`): memoise a fully frozen vision tower by image content.
        feature_cache_dir (`str`, *optional*): keep those features on disk here, shared by runs.
        matryoshka (`bool`): average the loss over the model's Matryoshka dims (as `forward` does).
        log_masked_pairs (`bool`): write each step's listing ids and masked pairs to
            `output_dir/masked_pairs.jsonl` (for an offline audit of the filter).
        gradient_cache_chunk_size (`int`, *optional*): gradient caching (GradCache,
            `trainers.agcl.cached`): embed the step's `2B` listings this many at a time without
            gradients, compute the loss of the whole batch, then replay each chunk with its cached
            gradient. Same loss and gradients as the plain step; memory bounded by one chunk, for
            about one extra forward pass. `None` (default): off.
    """

    def __post_init__(self):
        super().__post_init__()
        _check_choice("loss", self.loss, LOSSES)
        if self.weighting is not None:
            _check_choice("weighting", self.weighting, WEIGHTINGS)
        if self.false_negatives is not None:
            _check_choice("false_negatives", self.false_negatives, FALSE_NEGATIVE_FILTERS)
        _check_choice("bm25_statistics", self.bm25_statistics, BM25_STATISTICS)
        if self.batch_sampler is not None:
            _check_choice("batch_sampler", self.batch_sampler, BATCH_SAMPLERS)
        _check_choice("bm25_normalization", self.bm25_normalization, BM25_NORMALIZATIONS)
        _check_choice(
            "false_negative_handling", self.false_negative_handling, FALSE_NEGATIVE_HANDLING
        )
        if not 0.0 <= self.hard_fraction <= 1.0:
            raise ValueError(f"hard_fraction must be in [0, 1], got {self.hard_fraction}")
        if self.gradient_cache_chunk_size is not None and self.gradient_cache_chunk_size < 1:
            raise ValueError(
                "gradient_cache_chunk_size must be >= 1 (listings per forward) or None (off), got "
                f"{self.gradient_cache_chunk_size}"
            )
        if self.sampler_group_size is not None and self.sampler_group_size < 1:
            raise ValueError(f"sampler_group_size must be >= 1, got {self.sampler_group_size}")
        if not 0.0 <= self.attribute_overlap <= 1.0:
            raise ValueError(f"attribute_overlap must be in [0, 1], got {self.attribute_overlap}")
        for name in ("train_vision_blocks", "train_text_layers"):
            if getattr(self, name) < -1:
                raise ValueError(f"{name} must be -1 (all), 0 (frozen) or a positive count")
        if self.max_steps <= 0 and self.num_train_epochs <= 0:
            raise ValueError(
                "AGCL would train zero steps: set max_steps > 0 or num_train_epochs > 0"
            )
        if not self.dataloader_drop_last:
            raise ValueError(
                "AGCL needs dataloader_drop_last=True: every process must hold a full batch"
            )
        launched = int(os.environ.get("WORLD_SIZE", "1"))
        if launched > 1 and self.world_size != launched:
            # transformers treats a GPU-less torchrun launch as N independent runs unless use_cpu.
            raise ValueError(
                f"launched with WORLD_SIZE={launched} but the Trainer sees {self.world_size} "
                "process(es): on CPU set use_cpu=True so that the processes train together"
            )

    def build_loss(self, statistics: BM25Statistics | None = None) -> AGCLLoss:
        """The :class:`AGCLLoss` these settings describe."""
        return AGCLLoss(
            self.loss,
            weighting=self.weighting,
            false_negatives=self.false_negatives,
            delta=self.delta,
            attribute_overlap=self.attribute_overlap,
            bm25_statistics=statistics,
            bm25_normalization=self.bm25_normalization,
            bm25_scale=self.bm25_scale,
            weight_strength=self.weight_strength,
            attribute_keys=self.attribute_keys,
            false_negative_handling=self.false_negative_handling,
        )


def _check_choice(name: str, value: Any, choices: Sequence[str]) -> None:
    if value not in choices:
        raise ValueError(f"AGCLConfig.{name} must be one of {tuple(choices)}, got {value!r}")


__all__ = ["AGCLConfig"]
