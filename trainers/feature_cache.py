"""The frozen-feature cache: a frozen module's output is computed once per input and then reused.

Both training stages keep a pretrained vision tower frozen: AGCL (the encoder's EfficientNet when its
blocks are not trained) and the extractor SFT (the extractor's EfficientNet). Such a tower gives the
same output for the same pixels every epoch, so :class:`FrozenFeatureCache` memoises it by the
content of each input row:

* :meth:`FrozenFeatureCache.attach` is a context manager that puts the cache in front of the
  module's ``forward`` (an instance attribute, removed on exit: the module tree, its state dict and
  DDP's single forward are unchanged) and keeps only what the caller reads of the output
  (``keep``), rebuilt per batch with ``rebuild``;
* rows are keyed by a hash of their pixel values and of the call's keyword arguments; only the
  rows not seen before go through the module, in eval mode and without gradients;
* with a ``directory`` the features persist in ``<directory>/<fingerprint>.safetensors`` (written
  atomically when the context closes), where the fingerprint covers the module's weights and the
  caller's ``tag``, so runs that share a tower (seeds, losses, evaluation) compute each image once
  and a changed tower never reuses stale features.

Valid only while the module is frozen; the trainers attach it only then. :func:`cached_cnn_prefix`
does the same for the frozen *prefix* of a CNN whose last blocks train.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from afmrl.io import atomic_path, fingerprint, state_dict_fingerprint


class FrozenFeatureCache:
    """Memoise a frozen ``module``'s per-row output (see the module docstring).

    Args:
        module: the frozen module; its ``forward`` takes a batch tensor as first argument (or as
            ``pixel_values=``) and options as keywords.
        keep: output -> ``[B, ...]`` tensor to store per row (e.g. the pooled features).
        rebuild: ``[B, ...]`` stored tensor -> the output object the caller reads.
        directory: keep the features on disk here (``None``: memory only).
        tag: what else distinguishes these features (e.g. the stage read), part of the file name.
    """

    def __init__(
        self,
        module: nn.Module,
        keep: Callable[[Any], torch.Tensor],
        rebuild: Callable[[torch.Tensor], Any],
        directory: str | os.PathLike | None = None,
        tag: str = "",
    ):
        self.module = module
        self.keep = keep
        self.rebuild = rebuild
        self.store: dict[bytes, torch.Tensor] = {}
        self.hits = self.misses = 0
        self.path: Path | None = None
        self._saved = 0
        if directory is not None:
            name = fingerprint(state_dict_fingerprint(module.state_dict()), tag)[:32]
            self.path = Path(directory) / f"{name}.safetensors"
            if self.path.is_file():
                from safetensors.torch import load_file

                self.store = {bytes.fromhex(k): v for k, v in load_file(self.path).items()}
                self._saved = len(self.store)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if len(args) > 1 or (args and "pixel_values" in kwargs):
            raise TypeError("FrozenFeatureCache: pass the module's options as keyword arguments")
        inputs = args[0] if args else kwargs.pop("pixel_values")
        rows = inputs.detach().to("cpu", torch.float32).contiguous()
        salt = repr(sorted(kwargs.items())).encode()
        keys = [hashlib.blake2b(r.numpy().tobytes() + salt, digest_size=16).digest() for r in rows]
        missing = list(dict.fromkeys(k for k in keys if k not in self.store))
        self.misses += len(missing)
        self.hits += len(keys) - len(missing)
        if missing:
            first = {k: keys.index(k) for k in missing}
            index = torch.tensor([first[k] for k in missing], device=inputs.device)
            was_training = self.module.training
            self.module.eval()
            try:
                with torch.no_grad():
                    out = type(self.module).forward(
                        self.module, inputs.index_select(0, index), **kwargs
                    )
            finally:
                self.module.train(was_training)
            for k, value in zip(missing, self.keep(out).detach().to("cpu"), strict=True):
                self.store[k] = value.clone()
        stacked = torch.stack([self.store[k] for k in keys]).to(inputs.device)
        return self.rebuild(stacked)

    @contextlib.contextmanager
    def attach(self) -> Iterator[FrozenFeatureCache]:
        """Serve the module's ``forward`` from the cache inside the block; save on exit."""
        self.module.forward = self
        try:
            yield self
        finally:
            if self.module.__dict__.get("forward") is self:
                del self.module.forward
            self.save()

    def save(self) -> None:
        """Write the features to ``directory`` (no-op without one, or when nothing is new)."""
        if self.path is None or len(self.store) == self._saved:
            return
        from safetensors.torch import save_file

        with atomic_path(self.path) as tmp:
            save_file({k.hex(): v.contiguous() for k, v in self.store.items()}, str(tmp))
        self._saved = len(self.store)


class _Units(nn.Module):
    """Apply tower units in order (a unit may be a ``ModuleList`` of consecutive layers)."""

    def __init__(self, units: list[nn.Module]):
        super().__init__()
        self.units = nn.ModuleList(units)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for unit in self.units:
            for layer in unit if isinstance(unit, nn.ModuleList) else [unit]:
                x = layer(x)
        return x


@contextlib.contextmanager
def cached_cnn_prefix(
    tower: nn.Module,
    units: list[nn.Module],
    trainable: int,
    directory: str | os.PathLike | None = None,
) -> Iterator[FrozenFeatureCache]:
    """Serve the frozen prefix of a timm CNN tower from a :class:`FrozenFeatureCache`.

    For a tower whose ``forward_features`` applies ``units`` in order (timm's EfficientNet: stem,
    blocks, head; see :func:`trainers.freezing.tower_units`) and whose last ``trainable`` units
    train, the map entering the first trainable unit is computed once per image; every step runs
    only the trainable units. ``forward_features`` is overridden on the instance inside the block.
    """
    timm_model = tower.timm_model
    frozen = len(units) - trainable
    if not 0 < frozen < len(units):
        raise ValueError(
            f"need some frozen and some trainable units, got {trainable} of {len(units)}"
        )
    prefix, suffix = _Units(units[:frozen]), _Units(units[frozen:])
    cache = FrozenFeatureCache(
        prefix, keep=lambda x: x, rebuild=lambda x: x, directory=directory, tag=f"prefix{frozen}"
    )

    def forward_features(x: torch.Tensor) -> torch.Tensor:
        return suffix(prefix(x))

    with cache.attach():
        timm_model.forward_features = forward_features
        try:
            yield cache
        finally:
            del timm_model.forward_features


def pooled_features(output: Any) -> torch.Tensor:
    """A vision tower output -> ``[B, C]`` pooled features (its pooler output, else the mean of
    its last hidden state over positions)."""
    pooled = getattr(output, "pooler_output", None)
    if pooled is not None:
        return pooled
    hidden = output.last_hidden_state
    return hidden.flatten(2).mean(-1) if hidden.ndim == 4 else hidden.mean(dim=1)


def pooled_output(pooled: torch.Tensor) -> Any:
    """``[B, C]`` cached pooled features -> the output object the encoder reads."""
    from transformers.modeling_outputs import BaseModelOutputWithPooling

    return BaseModelOutputWithPooling(last_hidden_state=None, pooler_output=pooled)


def last_stage_map(output: Any) -> torch.Tensor:
    """A timm tower output with ``hidden_states`` -> its last requested stage map ``[B, C, H, W]``."""
    return output.hidden_states[-1]


def stage_map_output(feature_map: torch.Tensor) -> Any:
    """``[B, C, H, W]`` cached stage maps -> the output object the LLaVA-timm extractor reads."""
    from transformers.modeling_outputs import BaseModelOutputWithPooling

    return BaseModelOutputWithPooling(last_hidden_state=None, hidden_states=(feature_map,))


__all__ = [
    "FrozenFeatureCache",
    "cached_cnn_prefix",
    "last_stage_map",
    "pooled_features",
    "pooled_output",
    "stage_map_output",
]
