"""Cache the frozen vision tower's image tokens so an extractor SFT epoch on CPU is cheap.

The embedded default's extractor (:class:`~modeling_afmrl.modeling_timm_llava.
AFMRLLlavaForConditionalGeneration`) keeps its EfficientNet-Lite0 frozen during SFT, so the
flattened stage map it feeds the projector (``[T, C]`` per image, e.g. ``16 x 320`` at 128 px for
stage ``-1``) is the same every epoch. Computing it once and training the projector + decoder on
the cached tokens removes the CNN from every step.

The cache is one safetensors file keyed by a fingerprint of the tower's weights, the stage, the
image processor and the images' pixels, so a stale cache is never reused silently.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

CACHE_FILE = "image_tokens.safetensors"


def supports_feature_cache(extractor: Any) -> bool:
    """True for the LLaVA-timm extractor (a frozen CNN whose stage map is the image tokens)."""
    model = getattr(extractor, "model", None)
    vision = getattr(getattr(extractor, "config", None), "vision_config", None)
    return (
        model is not None
        and hasattr(model, "get_image_features")
        and hasattr(model, "multi_modal_projector")
        and getattr(vision, "model_type", None) == "timm_wrapper"
    )


@torch.no_grad()
def image_tokens(extractor: Any, pixel_values: torch.Tensor) -> torch.Tensor:
    """The flattened stage map the projector reads: ``[B, 3, H, W]`` -> ``[B, T, C]`` (float32)."""
    out = extractor.model.get_image_features(pixel_values=pixel_values, return_dict=True)
    return out.last_hidden_state.float()


def tower_fingerprint(extractor: Any) -> str:
    """sha256 over the vision tower's weights and the config fields that shape its tokens."""
    h = hashlib.sha256()
    cfg = extractor.config
    h.update(
        json.dumps(
            {
                "layer": cfg.vision_feature_layer,
                "strategy": cfg.vision_feature_select_strategy,
                "arch": getattr(cfg.vision_config, "architecture", None),
            },
            sort_keys=True,
        ).encode()
    )
    for name, tensor in extractor.model.vision_tower.state_dict().items():
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def cache_image_tokens(
    extractor: Any,
    image_processor: Any,
    images: Sequence[Any],
    cache_dir: str | Path | None = None,
    batch_size: int = 64,
    key: str = "",
    progress: Callable[[str], None] | None = None,
) -> torch.Tensor:
    """Image tokens ``[N, T, C]`` for ``images`` (PIL images), from ``cache_dir`` when it matches.

    Args:
        extractor: a model for which :func:`supports_feature_cache` is true.
        image_processor: the extractor processor's image processor (resizing + normalisation).
        images: the images, in row order.
        cache_dir: folder for :data:`CACHE_FILE` (``None``: compute and do not store).
        batch_size: images per tower forward.
        key: a caller's identity of the image list (e.g. the dataset fingerprint and columns);
            it is part of the cache fingerprint together with the tower's weights.
    """
    from safetensors.torch import load_file, save_file

    if not supports_feature_cache(extractor):
        raise ValueError(
            f"{type(extractor).__name__} has no cacheable frozen CNN tower: feature caching needs "
            "the LLaVA-timm extractor (train Hub VLMs without --cache-features)"
        )
    digest = hashlib.sha256(
        f"{tower_fingerprint(extractor)}|{key}|{len(images)}|{image_processor.to_json_string()}".encode()
    )
    for image in images:  # the pixels themselves: a rebuilt catalogue never reuses stale tokens
        digest.update(f"{image.mode}{image.size}".encode())
        digest.update(image.tobytes())
    fingerprint = digest.hexdigest()
    path = Path(cache_dir) / CACHE_FILE if cache_dir is not None else None
    if path is not None and path.is_file():
        from safetensors import safe_open

        with safe_open(str(path), "pt") as f:
            stored = (f.metadata() or {}).get("fingerprint")
        if stored == fingerprint:
            return load_file(str(path))["tokens"]
    was_training = extractor.training
    extractor.eval()
    chunks = []
    try:
        for start in range(0, len(images), batch_size):
            batch = [im.convert("RGB") for im in images[start : start + batch_size]]
            pixels = image_processor(images=batch, return_tensors="pt")["pixel_values"]
            chunks.append(image_tokens(extractor, pixels.to(extractor.dtype)))
            if progress is not None:
                progress(f"[cache] {min(start + batch_size, len(images))}/{len(images)} images")
    finally:
        extractor.train(was_training)
    tokens = torch.cat(chunks).contiguous()
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        save_file({"tokens": tokens}, str(tmp), metadata={"fingerprint": fingerprint})
        tmp.replace(path)
    return tokens
