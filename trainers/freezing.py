"""What a training stage trains: freezing, tower tails, LoRA, and reaching the model inside wrappers.

A *tower unit* is the granularity ``train_vision_blocks`` / ``train_text_layers`` count in: a timm
CNN's stem, each block of each stage, then its head; a transformers encoder's embeddings, each layer,
then its final norm. :func:`configure_trainable` freezes a dual encoder's towers but for their last
units (or wraps the text tower with LoRA), always trains the freshly initialised heads
(projections, fusion, temperature) and freezes the extractor; a VLM encoder gets LoRA on its
language model.
"""

from __future__ import annotations

import re
from typing import Any

from torch import nn
from transformers.utils import logging

logger = logging.get_logger(__name__)

#: Parameters trained at the head learning rate: freshly initialised layers on top of the towers.
HEAD_PARAMETERS = (
    "vision_projection",
    "text_projection",
    "vlm_projection",
    "fusion",
    "logit_scale",
)


def base_afmrl_model(model: nn.Module) -> nn.Module:
    """The ``AFMRLModel`` under DDP / ``torch.compile`` / ``PeftModel`` wrappers."""
    while True:
        if hasattr(model, "module") and isinstance(model.module, nn.Module):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        elif hasattr(model, "get_base_model"):
            model = model.get_base_model()
        else:
            return model


def tower_units(tower: nn.Module) -> list[nn.Module]:
    """A tower's blocks from input to output, the granularity ``train_*`` counts in.

    timm CNNs: stem, every block of every stage, then the head conv; transformers encoders:
    embeddings, every layer, then the final norm. Empty when the layout is unknown (the tower is
    then trained whole or not at all)."""
    timm_model = getattr(tower, "timm_model", None)
    if timm_model is not None and hasattr(timm_model, "blocks"):
        stem = [m for m in (getattr(timm_model, n, None) for n in ("conv_stem", "bn1")) if m]
        head = [m for m in (getattr(timm_model, n, None) for n in ("conv_head", "bn2")) if m]
        blocks = [
            block
            for stage in timm_model.blocks
            for block in (stage if isinstance(stage, nn.Sequential) else [stage])
        ]
        return [nn.ModuleList(stem), *blocks, nn.ModuleList(head)]
    for owner in (tower, getattr(tower, "vision_model", None), getattr(tower, "text_model", None)):
        if owner is None:
            continue
        encoder = getattr(owner, "encoder", None)
        layers = getattr(encoder, "layer", None) or getattr(encoder, "layers", None)
        if layers is not None:
            first = [owner.embeddings] if hasattr(owner, "embeddings") else []
            last = [
                m
                for m in (getattr(owner, n, None) for n in ("post_layernorm", "final_layer_norm"))
                if m is not None
            ]
            return [*first, *layers, *last]
    return []


def _set_trainable_tail(tower: nn.Module, count: int) -> list[nn.Module]:
    """Train the last ``count`` units of ``tower`` (-1: every unit); returns the frozen modules."""
    if count == 0:
        tower.requires_grad_(False)
        return [tower]
    units = tower_units(tower)
    if count < 0 and not units:
        tower.requires_grad_(True)
        return []
    if not units:
        logger.warning("unknown tower layout (%s): training it whole", type(tower).__name__)
        tower.requires_grad_(True)
        return []
    # Only the units: parameters outside them (a BERT pooler, a classifier) are unused by the
    # encoder and would get no gradient (DDP refuses that with find_unused_parameters=False).
    tower.requires_grad_(False)
    frozen = units[: max(0, len(units) - count)] if count > 0 else []
    for unit in units[len(frozen) :]:
        unit.requires_grad_(True)
    return frozen


def configure_trainable(model, config: Any):
    """Freeze / unfreeze / LoRA-wrap ``model`` as ``config`` says (an object with
    ``train_vision_blocks``, ``train_text_layers``, ``use_lora``, ``lora_r``, ``lora_alpha``,
    ``lora_dropout``, e.g. an ``AGCLConfig``).

    Returns ``(model, frozen_modules)``: the model to train (a ``PeftModel`` when LoRA is used) and
    the modules kept in eval mode during training (frozen towers and units, the extractor)."""
    model.requires_grad_(False)
    frozen: list[nn.Module] = []
    if getattr(model, "extractor", None) is not None:
        frozen.append(model.extractor)
    is_vlm = model.config.encoder_type == "vlm"
    use_lora = config.use_lora if config.use_lora is not None else is_vlm
    if is_vlm:
        if not use_lora:
            model.vlm.requires_grad_(True)
    else:
        frozen += _set_trainable_tail(model.vision_model, config.train_vision_blocks)
        if not use_lora:
            frozen += _set_trainable_tail(model.text_model, config.train_text_layers)
    for name in HEAD_PARAMETERS:
        part = getattr(model, name, None)
        if isinstance(part, (nn.Parameter, nn.Module)):
            part.requires_grad_(True)
    if use_lora:
        from peft import LoraConfig, get_peft_model

        heads = [n for n, p in model.named_parameters() if p.requires_grad]
        pattern = re.compile(model.encoder_lora_target_modules())
        # Not the text tower's pooler: unused by the encoder's pooling, it would get no gradient.
        targets = [
            n for n, _ in model.named_modules() if pattern.fullmatch(n) and ".pooler." not in n
        ]
        lora = LoraConfig(
            r=config.lora_r,
            lora_alpha=config.lora_alpha,
            lora_dropout=config.lora_dropout,
            target_modules=targets,
        )
        model = get_peft_model(model, lora)
        base = model.get_base_model()
        for name, param in base.named_parameters():
            if name in heads:
                param.requires_grad_(True)
    return model, frozen


__all__ = ["HEAD_PARAMETERS", "base_afmrl_model", "configure_trainable", "tower_units"]
