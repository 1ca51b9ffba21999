"""SFT warm-up of the attribute extractor: (image, title) -> teacher attribute string.

Built on the transformers :class:`~transformers.Trainer`, so checkpoints, ``resume_from_checkpoint``,
``accelerate launch`` and LoRA (PEFT) come with it; the data and the prompt are in
:mod:`trainers.extractor_sft.data`. The extractor's vision tower stays frozen (unless told
otherwise); for the embedded LLaVA-timm extractor its stage map is served from the frozen-feature
cache, so each image goes through the CNN once. Any other ``AutoModelForImageTextToText`` (e.g. a
Qwen2-VL) trains on pixels; ``lora_r > 0`` wraps its language model's linear layers with LoRA and
merges them back at the end.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from transformers import Trainer, TrainerCallback

from modeling_afmrl.attributes import canonical_attribute_text

from ..feature_cache import FrozenFeatureCache, last_stage_map, stage_map_output
from .config import ExtractorSFTConfig
from .data import PixelCollator, PixelDataset, training_pairs


def supports_feature_cache(extractor: Any) -> bool:
    """True for the LLaVA-timm extractor, whose frozen CNN's stage map is what it reads."""
    vision = getattr(getattr(extractor, "config", None), "vision_config", None)
    return getattr(vision, "model_type", None) == "timm_wrapper" and hasattr(
        getattr(extractor, "model", None), "vision_tower"
    )


class _LossLog(TrainerCallback):
    """Keeps (step, loss) pairs and prints one line per logging step."""

    def __init__(self, progress: Callable[[str], None] | None):
        self.history: list[tuple[int, float]] = []
        self.progress = progress
        self.t0 = time.perf_counter()

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "loss" in logs:
            self.history.append((state.global_step, float(logs["loss"])))
            if self.progress is not None:
                self.progress(
                    f"[sft] step {state.global_step}/{state.max_steps} loss {logs['loss']:.4f} "
                    f"lr {logs.get('learning_rate', 0):.2e} ({time.perf_counter() - self.t0:.0f}s)"
                )


@dataclass
class SFTResult:
    """What :func:`train_extractor` returns."""

    losses: list[tuple[int, float]]
    train_seconds: float
    num_examples: int
    global_step: int
    cache_hits: int = 0


def train_extractor(
    extractor,
    processor,
    train_split,
    config: ExtractorSFTConfig,
    progress: Callable[[str], None] | None = print,
    resume_from_checkpoint: str | bool | None = None,
) -> SFTResult:
    """Fine-tune ``extractor`` in place on ``train_split`` (a ``datasets.Dataset``).

    ``processor`` is the extractor's own processor (``LlavaProcessor``, ``Qwen2VLProcessor``...).
    With ``config.cache_features`` and a LLaVA-timm extractor the frozen tower runs once per image
    (:class:`~trainers.feature_cache.FrozenFeatureCache`).
    """
    images, titles, targets, skipped = training_pairs(train_split, config)
    if not titles:
        raise ValueError(f"no training row has a usable {config.target_column!r} value")
    if progress is not None:
        progress(f"[sft] {len(titles)} (image, title) -> attributes pairs ({skipped} rows skipped)")
    for p in extractor.parameters():
        p.requires_grad_(True)
    vision = _vision_tower(extractor)
    if vision is not None and not config.train_vision_tower:
        for p in vision.parameters():
            p.requires_grad_(False)
    cache = None
    if (
        config.cache_features
        and not config.train_vision_tower
        and supports_feature_cache(extractor)
    ):
        cache = FrozenFeatureCache(
            vision,
            keep=last_stage_map,
            rebuild=stage_map_output,
            directory=config.feature_cache_dir,
            tag=f"stage{extractor.config.vision_feature_layer}",
        )
    elif config.cache_features and progress is not None:
        progress(f"[sft] {type(extractor).__name__}: no cacheable frozen tower, no feature cache")
    dataset = PixelDataset(images, titles, targets)
    collator = PixelCollator(processor, config)

    model = extractor
    if config.lora_r > 0:
        from peft import LoraConfig, get_peft_model

        lora = LoraConfig(
            r=config.lora_r,
            lora_alpha=config.lora_alpha,
            lora_dropout=config.lora_dropout,
            target_modules=list(config.lora_target_modules),
            exclude_modules=r".*(vision_tower|visual).*",
            task_type="CAUSAL_LM",
        )
        model = get_peft_model(extractor, lora)

    log = _LossLog(progress)
    trainer = Trainer(
        model=model,
        args=config,
        train_dataset=dataset,
        data_collator=collator,
        callbacks=[log],
    )
    t1 = time.perf_counter()
    with cache.attach() if cache is not None else contextlib.nullcontext():
        out = trainer.train(resume_from_checkpoint=resume_from_checkpoint)
    train_seconds = time.perf_counter() - t1
    if config.lora_r > 0:
        model.merge_and_unload()
    extractor.eval()
    for p in extractor.parameters():
        p.requires_grad_(False)
    hits = cache.hits if cache is not None else 0
    return SFTResult(log.history, train_seconds, len(dataset), out.global_step, hits)


def _vision_tower(extractor) -> torch.nn.Module | None:
    inner = getattr(extractor, "model", extractor)
    for name in ("vision_tower", "visual"):
        if hasattr(inner, name):
            return getattr(inner, name)
    return None


def sft_loss(extractor, processor, images: Sequence[Any], titles, targets, config) -> float:
    """Mean answer-token cross-entropy of ``extractor`` on some pairs (pixel path; for checks)."""
    batch = PixelCollator(processor, config)(
        [
            {"image": im, "title": t, "target": canonical_attribute_text(y) or y}
            for im, t, y in zip(images, titles, targets, strict=True)
        ]
    )
    extractor.eval()
    with torch.no_grad():
        loss = extractor(**batch).loss
    return float(loss) if math.isfinite(float(loss)) else float("inf")


__all__ = ["SFTResult", "sft_loss", "supports_feature_cache", "train_extractor"]
