"""AGCL training (AFMRL stage 1): :class:`AGCLTrainer`, a ``transformers.Trainer``.

Per step: the collator (:mod:`trainers.agcl.collator`) gives ``2B`` listings (each row's own view
and another seller's listing of the same product); :func:`contrastive_step` embeds them in one
forward, gathers the global batch across processes (:mod:`trainers.distributed`) and computes the
loss (:mod:`trainers.agcl.loss`: BM25 hard-negative weights and the false-negative filter, or plain
InfoNCE); with ``gradient_cache_chunk_size`` set,
:func:`~trainers.agcl.cached.cached_contrastive_step` does the same in chunks with cached gradients
(GradCache, :mod:`trainers.agcl.cached`), so the batch is not bounded by memory. Batches come from
:class:`~trainers.agcl.sampler.ListingBatchSampler`. What is trained is set by
:func:`trainers.freezing.configure_trainable`; a fully frozen vision tower is served from the
frozen-feature cache (:mod:`trainers.feature_cache`). BatchNorm layers stay in eval mode (a frozen
tower's statistics never move, and small contrastive batches make poor statistics).

The final model is saved with ``save_pretrained`` (LoRA merged): a checkpoint that
``AutoModel.from_pretrained(..., trust_remote_code=True)`` and ``afmrl evaluate`` load directly.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from torch import nn
from transformers import Trainer
from transformers.utils import logging

from afmrl.io import write_json_atomic
from modeling_afmrl.attributes import canonical_attribute_text

from ..distributed import gather_embeddings_and_attributes, gather_objects, is_distributed
from ..feature_cache import (
    FrozenFeatureCache,
    cached_cnn_prefix,
    pooled_features,
    pooled_output,
)
from ..freezing import HEAD_PARAMETERS, base_afmrl_model, configure_trainable, tower_units
from .arguments import SUMMARY_FILE
from .bm25 import attribute_terms, bm25_statistics
from .cached import cached_contrastive_step
from .collator import AGCLCollator, resolve_columns
from .config import AGCLConfig
from .loss import AGCLLoss, AGCLLossOutput, attribute_dict, masked_pairs
from .sampler import ListingBatchSampler

logger = logging.get_logger(__name__)

#: File (in ``output_dir``) where ``log_masked_pairs`` writes each step's batch and masked pairs.
MASKED_PAIRS_FILE = "masked_pairs.jsonl"
#: The training settings and log, written next to the final model.


def contrastive_step(
    model: nn.Module,
    inputs: Mapping[str, Any],
    loss_fn: AGCLLoss,
    matryoshka: bool = True,
) -> tuple[AGCLLossOutput, list[str] | None]:
    """One forward of ``2B`` listings and the loss of the global batch.

    ``model`` may be wrapped (DDP, PEFT). Returns the loss output and, in distributed runs too, the
    global batch's listing ids (``None`` when the inputs carry none)."""
    inputs = dict(inputs)
    attributes = inputs.pop("attribute_texts", None)
    listing_ids = inputs.pop("listing_ids", None)
    out = model(**inputs, return_loss=False)
    emb = out.embeddings
    half = emb.shape[0] // 2
    if emb.shape[0] != 2 * half:
        raise ValueError(f"expected 2B listings (two views), got {emb.shape[0]}")
    payload = list(zip(attributes or [None] * half, listing_ids or [None] * half, strict=True))
    query, candidate, payload = gather_embeddings_and_attributes(emb[:half], emb[half:], payload)
    base = base_afmrl_model(model)
    scale = base.logit_scale.exp().clamp(max=100.0)
    dims = base.config.matryoshka_dims if matryoshka else None
    global_attributes = [a for a, _ in payload] if attributes is not None else None
    result = loss_fn(query, candidate, global_attributes, logit_scale=scale, matryoshka_dims=dims)
    ids = [i for _, i in payload] if listing_ids is not None else None
    return result, ids


class AGCLTrainer(Trainer):
    """``transformers.Trainer`` for AGCL / InfoNCE training of an ``AFMRLModel``.

    Args:
        model: an ``AFMRLModel`` (with ``model.processor``).
        args: an :class:`AGCLConfig`.
        train_dataset: a ``datasets.Dataset`` in the AFMRL data contract (``train`` split).
        processing_class: the ``AFMRLProcessor`` (default: ``model.processor``).
        data_collator: default :class:`AGCLCollator` built from ``args``.
        loss_fn: default ``args.build_loss(...)``.
    """

    def __init__(
        self,
        model,
        args: AGCLConfig,
        train_dataset=None,
        processing_class=None,
        data_collator=None,
        loss_fn: AGCLLoss | None = None,
        callbacks=None,
        **kwargs,
    ):
        if not isinstance(args, AGCLConfig):
            raise TypeError(f"args must be an AGCLConfig, got {type(args).__name__}")
        if train_dataset is None:
            raise ValueError("AGCLTrainer needs a train_dataset")
        processor = processing_class if processing_class is not None else model.processor
        columns = resolve_columns(args, train_dataset.column_names)
        train_dataset = train_dataset.select_columns(columns["keep"])
        self.loss_attributes_column = columns["loss_attributes_column"]
        self.batch_sampler = columns["batch_sampler"]
        self._attribute_dicts = None
        statistics = None
        if self.loss_attributes_column is not None:
            cells = [
                canonical_attribute_text(v) for v in train_dataset[self.loss_attributes_column]
            ]
            self._attribute_dicts = [attribute_dict(c) for c in cells]
            if args.bm25_statistics == "corpus":
                statistics = bm25_statistics(attribute_terms(c) for c in cells)
        self.loss_fn = loss_fn if loss_fn is not None else args.build_loss(statistics)
        if data_collator is None:
            data_collator = AGCLCollator(
                processor,
                text_attributes_column=args.text_attributes_column,
                pos_text_attributes_column=columns["pos_text_attributes_column"],
                loss_attributes_column=self.loss_attributes_column
                if self.loss_fn.needs_attributes or args.log_masked_pairs
                else None,
                image_column=args.image_column,
                title_column=args.title_column,
                pos_image_column=args.pos_image_column,
                pos_title_column=args.pos_title_column,
                augment=columns["augment"],
            )
        model, self._frozen_modules = configure_trainable(model, args)
        base = base_afmrl_model(model)
        base.processor = processor
        self._feature_cache = self._vision_cache(base, args, columns["augment"])
        self._active_cache = None
        self._norm_layers = [
            m for m in base.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
        ]
        self._metrics: dict[str, list[float]] = {}
        super().__init__(
            model=model,
            args=args,
            train_dataset=train_dataset,
            data_collator=data_collator,
            callbacks=callbacks,
            **kwargs,
        )
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        total = sum(p.numel() for p in base.parameters())
        logger.info("AGCL: %s; training %d of %d parameters", self.loss_fn, trainable, total)

    # ---- data ---------------------------------------------------------------------------

    def _get_train_sampler(self, train_dataset=None):
        dataset = train_dataset if train_dataset is not None else self.train_dataset
        self._sampler = ListingBatchSampler(
            len(dataset),
            self.args.per_device_train_batch_size * max(1, self.args.world_size),
            mode=self.batch_sampler,
            attributes=self._attribute_dicts if self.batch_sampler != "random" else None,
            seed=self.args.seed,
            hard_fraction=self.args.hard_fraction,
            group_size=self.args.sampler_group_size,
        )
        return self._sampler

    def _run_epoch(self, *args, **kwargs):
        # The batch order is a function of (seed, epoch): set it before the epoch's dataloader
        # (possibly skipping batches after a resume) is iterated.
        sampler = getattr(self, "_sampler", None)
        if sampler is not None and "epoch" in kwargs:
            sampler.set_epoch(kwargs["epoch"])
        return super()._run_epoch(*args, **kwargs)

    # ---- loss ---------------------------------------------------------------------------

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        for module in self._frozen_modules:
            module.eval()
        for module in self._norm_layers:
            module.eval()
        chunk = self.args.gradient_cache_chunk_size
        if chunk is None:
            result, ids = contrastive_step(model, inputs, self.loss_fn, self.args.matryoshka)
        else:
            result, ids = cached_contrastive_step(
                model, inputs, self.loss_fn, chunk, self.args.matryoshka
            )
        if model.training:
            self._record(result, ids)
        return (result.loss, {"logits": result.logits}) if return_outputs else result.loss

    def _record(self, result: AGCLLossOutput, ids: list[str] | None) -> None:
        n = result.logits.shape[0]
        scale = base_afmrl_model(self.model).logit_scale.exp().clamp(max=100.0)
        values = {
            "masked": float(result.num_masked) / 2,  # per direction
            "masked_frac": float(result.num_masked) / max(1, 2 * n * (n - 1)),
            "accuracy": float(result.accuracy),
            "logit_scale": float(scale.detach()),
        }
        for key, value in values.items():
            self._metrics.setdefault(key, []).append(value)
        if self.args.log_masked_pairs and ids is not None and self.is_world_process_zero():
            pairs = masked_pairs(result.mask, result.mask_t)
            pairs = (pairs | pairs.T).triu(diagonal=1).nonzero().tolist()
            record = {
                "step": self.state.global_step + 1,
                "listing_ids": ids,
                "masked": [[ids[i], ids[j]] for i, j in pairs],
            }
            self._write_masked(record)

    def _write_masked(self, record: dict) -> None:
        path = Path(self.args.output_dir) / MASKED_PAIRS_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs and self._metrics:
            for key, values in self._metrics.items():
                logs[key] = round(sum(values) / len(values), 4)
            self._metrics = {}
        if self._active_cache is not None and "loss" in logs:
            logs["vision_cache_hits"] = self._active_cache.hits
        super().log(logs, start_time)

    # ---- optimiser ----------------------------------------------------------------------

    def create_optimizer(self, model=None):
        if self.optimizer is not None or self.args.head_learning_rate is None:
            return super().create_optimizer(model)
        opt_model = self.model if model is None else model
        decay = set(self.get_decay_parameter_names(opt_model))
        groups: dict[tuple[bool, bool], list[nn.Parameter]] = {}
        for name, param in opt_model.named_parameters():
            if not param.requires_grad:
                continue
            head = any(part in HEAD_PARAMETERS for part in name.split("."))
            groups.setdefault((head, name in decay), []).append(param)
        param_groups = [
            {
                "params": params,
                "weight_decay": self.args.weight_decay if decays else 0.0,
                "lr": self.args.head_learning_rate if head else self.args.learning_rate,
            }
            for (head, decays), params in sorted(groups.items())
        ]
        optimizer_cls, optimizer_kwargs = self.get_optimizer_cls_and_kwargs(self.args, opt_model)
        optimizer_kwargs.pop("params", None)
        self.optimizer = optimizer_cls(param_groups, **optimizer_kwargs)
        return self.optimizer

    # ---- saving -------------------------------------------------------------------------

    @staticmethod
    def _vision_cache(base, args: AGCLConfig, augment: bool):
        """A context serving the frozen part of the dual encoder's vision tower from the frozen-
        feature cache: the whole tower when it is frozen, the prefix before its trainable blocks
        for a timm CNN; ``None`` when nothing can be cached (augmented views change every step)."""
        if not args.cache_frozen_features or base.config.encoder_type != "dual" or augment:
            return None
        tower = base.vision_model
        if not any(p.requires_grad for p in tower.parameters()):
            cache = FrozenFeatureCache(tower, keep=pooled_features, rebuild=pooled_output,
                                       directory=args.feature_cache_dir, tag="pooled")  # fmt: skip
            return cache.attach
        units = tower_units(tower)
        trainable = sum(any(p.requires_grad for p in u.parameters()) for u in units)
        if hasattr(tower, "timm_model") and units and 0 < trainable < len(units):
            return lambda: cached_cnn_prefix(tower, units, trainable, args.feature_cache_dir)
        return None

    def train(self, *args, **kwargs):
        """``Trainer.train`` with the frozen part of the vision tower served from its cache."""
        cache = self._feature_cache() if self._feature_cache else contextlib.nullcontext()
        with cache as self._active_cache:
            try:
                return super().train(*args, **kwargs)
            finally:
                self._active_cache = None

    def save_final_model(self, output_dir: str | os.PathLike | None = None) -> str:
        """Save the trained encoder (LoRA merged) with ``save_pretrained``; returns the folder."""
        output_dir = os.fspath(output_dir or self.args.output_dir)
        model = self.accelerator.unwrap_model(self.model)
        if hasattr(model, "merge_and_unload"):
            model = model.merge_and_unload()
            self.model = model
        if self.is_world_process_zero():
            model.save_pretrained(output_dir)
            write_json_atomic(Path(output_dir) / SUMMARY_FILE, self._training_summary())
        if is_distributed():
            gather_objects([None])  # a barrier: everyone waits for the files
        return output_dir

    def _training_summary(self) -> dict[str, Any]:
        keys = (
            "loss", "weighting", "false_negatives", "delta", "attribute_overlap",
            "bm25_statistics", "bm25_normalization", "bm25_scale", "weight_strength",
            "attribute_keys", "false_negative_handling", "text_attributes_column",
            "pos_text_attributes_column", "batch_sampler", "hard_fraction", "sampler_group_size",
            "train_vision_blocks",
            "train_text_layers", "learning_rate", "head_learning_rate", "use_lora",
            "per_device_train_batch_size", "gradient_cache_chunk_size", "max_steps",
            "num_train_epochs", "seed",
        )  # fmt: skip
        summary = {k: getattr(self.args, k) for k in keys}
        summary.update(
            loss_attributes_column=self.loss_attributes_column,
            resolved_batch_sampler=self.batch_sampler,
            resolved_weighting=self.loss_fn.weighting,
            resolved_false_negatives=self.loss_fn.false_negatives,
            world_size=self.args.world_size,
            global_step=self.state.global_step,
            log_history=self.state.log_history,
        )
        return summary


__all__ = ["MASKED_PAIRS_FILE", "SUMMARY_FILE", "AGCLTrainer", "contrastive_step"]
