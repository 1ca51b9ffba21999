"""Gradient caching (GradCache) for AGCL: a global batch no longer bounded by device memory.

A contrastive loss couples every listing of the batch, so the plain step keeps the activations of
all ``2B`` listings alive until the backward pass, and the batch is capped by memory. The loss
itself only reads the ``[2B, D]`` embeddings. GradCache (Gao et al., 2021, "Scaling Deep Contrastive
Learning Batch Size under Memory Limited Setup"; sentence-transformers'
``CachedMultipleNegativesRankingLoss``, VLM2Vec) splits the step into three passes:

1. embed the listings in chunks of ``chunk_size`` **without gradients** (only one chunk's
   activations alive at a time), snapshotting the RNG before each chunk;
2. compute the AGCL loss of the whole batch on those embeddings (detached leaves; the logit scale
   as a leaf too) and its gradients with respect to them: ``dL/d(emb)`` ``[2B, D]`` and
   ``dL/d(log scale)``; in distributed runs the embeddings are gathered here
   (:func:`~trainers.distributed.gather_embeddings_and_attributes`), so every process holds the
   global loss's gradient for its own listings, exactly as in the plain step;
3. when the returned loss is back-propagated, **replay** each chunk with gradients under its saved
   RNG state (the same dropout masks) and autocast state, and back-propagate
   ``<emb_chunk, cached grad>`` (plus ``log_scale * dL/d(log scale)`` on the last chunk), each
   scaled by the gradient reaching the loss (``1 / gradient_accumulation_steps``, a loss scaler).

The returned loss is a detached leaf with a backward hook doing step 3, so ``transformers.Trainer``
calls ``loss.backward()`` as usual. Peak memory: one chunk's activations plus ``O(B^2)`` for the
loss, at the cost of about one extra forward pass. Losses and parameter gradients equal the plain
step's up to float rounding (``tests/trainers/test_cached_agcl.py``) when the forward of a listing
does not depend on the other listings of its batch: BatchNorm in train mode would see per-chunk
statistics and is refused (:class:`~trainers.agcl.trainer.AGCLTrainer` keeps BatchNorm in eval
mode). With dropout on, the chunks draw their own masks (as a plain step over the same chunks
would); the replay reuses them exactly.

Under DDP the replay runs chunks ``0..n-2`` inside ``no_sync()`` and the last chunk outside it, so
gradients are all-reduced once per step, after every chunk and the logit scale have contributed
(an outer ``no_sync`` of gradient accumulation is respected).
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence
from functools import partial
from typing import Any

import torch
from torch import nn

from ..distributed import gather_embeddings_and_attributes
from ..freezing import base_afmrl_model
from .loss import AGCLLoss, AGCLLossOutput


class RandContext:
    """The CPU and accelerator RNG states at creation; entering restores them inside a forked RNG,
    so a replayed forward draws the same dropout masks and the RNG outside is left untouched."""

    def __init__(self, *tensors: Any):
        from torch.utils.checkpoint import get_device_states

        self.cpu_state = torch.get_rng_state()
        devices = [t for t in tensors if isinstance(t, torch.Tensor)]
        self.devices, self.device_states = get_device_states(*devices)
        self._fork: contextlib.AbstractContextManager | None = None

    def __enter__(self) -> None:
        from torch.utils.checkpoint import set_device_states

        self._fork = torch.random.fork_rng(devices=self.devices, enabled=True)
        self._fork.__enter__()
        torch.set_rng_state(self.cpu_state)
        set_device_states(self.devices, self.device_states)

    def __exit__(self, *exc: Any) -> None:
        fork, self._fork = self._fork, None
        fork.__exit__(*exc)


class AutocastState:
    """The autocast settings active when the chunks were embedded, re-entered for the replay (the
    backward pass runs outside the Trainer's autocast context)."""

    def __init__(self, device_types: Sequence[str] = ("cpu", "cuda")):
        self.settings = [
            (kind, torch.get_autocast_dtype(kind))
            for kind in device_types
            if torch.is_autocast_enabled(kind)
        ]

    def __call__(self) -> contextlib.ExitStack:
        stack = contextlib.ExitStack()
        for kind, dtype in self.settings:
            stack.enter_context(torch.autocast(kind, dtype=dtype))
        return stack


def listing_count(inputs: Mapping[str, Any]) -> int:
    """Listings in a batch of processor outputs: rows of ``input_ids``, else of ``pixel_values``."""
    for key in ("input_ids", "attention_mask", "pixel_values"):
        value = inputs.get(key)
        if isinstance(value, torch.Tensor):
            return int(value.shape[0])
    raise ValueError(f"cannot tell the number of listings from inputs {sorted(inputs)}")


def chunk_ranges(n: int, chunk_size: int) -> list[tuple[int, int]]:
    """``[(begin, end), ...]`` covering ``range(n)`` in chunks of ``chunk_size`` (the last shorter)."""
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    return [(b, min(b + chunk_size, n)) for b in range(0, n, chunk_size)]


def slice_listings(inputs: Mapping[str, Any], begin: int, end: int) -> dict[str, Any]:
    """Listings ``begin:end`` of a batch of processor outputs.

    Per-listing tensors (``[N, ...]``) are sliced by row; a VLM's flattened patch tensor
    ``pixel_values`` ``[sum_i t_i h_i w_i, C]`` by the patch counts of ``image_grid_thw`` ``[N, 3]``
    (one image per listing, as :class:`~modeling_afmrl.AFMRLProcessor` builds them). Padding
    columns are kept, so every listing sees exactly the inputs of the full batch.
    """
    n = listing_count(inputs)
    grid = inputs.get("image_grid_thw")
    out: dict[str, Any] = {}
    for key, value in inputs.items():
        if value is None:
            out[key] = value
        elif key == "pixel_values" and isinstance(grid, torch.Tensor):
            if grid.shape[0] != n:
                raise ValueError(
                    f"cannot split the batch into listings: image_grid_thw has {grid.shape[0]} "
                    f"rows for {n} listings (one image per listing expected)"
                )
            offsets = torch.cat([grid.new_zeros(1), grid.prod(dim=1).cumsum(0)]).tolist()
            out[key] = value[offsets[begin] : offsets[end]]
        elif isinstance(value, torch.Tensor) and value.ndim > 0 and value.shape[0] == n:
            out[key] = value[begin:end]
        else:
            shape = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
            raise ValueError(
                f"cannot split input {key!r} ({shape}) into listings: gradient caching needs "
                f"per-listing inputs with {n} rows"
            )
    return out


def _check_no_batch_statistics(model: nn.Module) -> None:
    for name, module in model.named_modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.training:
            raise ValueError(
                f"gradient caching needs BatchNorm in eval mode ({name!r} is training): its batch "
                "statistics would differ per chunk, and its running statistics would move twice"
            )


def _unwrap_ddp(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def cached_contrastive_step(
    model: nn.Module,
    inputs: Mapping[str, Any],
    loss_fn: AGCLLoss,
    chunk_size: int,
    matryoshka: bool = True,
) -> tuple[AGCLLossOutput, list[str] | None]:
    """:func:`~trainers.agcl.trainer.contrastive_step` with gradient caching (module docstring).

    ``inputs`` holds ``2B`` listings (queries then candidates, as :class:`AGCLCollator` builds
    them); they are embedded ``chunk_size`` at a time. Returns the loss output, whose ``loss`` is a
    scalar leaf: back-propagating it (``loss.backward()``, any scale) replays the chunks and fills
    the parameters' ``.grad`` as the plain step's loss would. Under ``torch.no_grad`` (evaluation)
    the loss is returned without a hook.
    """
    inputs = dict(inputs)
    attributes = inputs.pop("attribute_texts", None)
    listing_ids = inputs.pop("listing_ids", None)
    n = listing_count(inputs)
    half = n // 2
    if n != 2 * half:
        raise ValueError(f"expected 2B listings (two views), got {n}")
    _check_no_batch_statistics(model)
    chunks = [slice_listings(inputs, b, e) for b, e in chunk_ranges(n, chunk_size)]
    training = torch.is_grad_enabled()

    # Pass 1: embeddings without a graph, one chunk's activations at a time.
    embedder = _unwrap_ddp(model)
    states: list[RandContext] = []
    parts = []
    with torch.no_grad():
        for chunk in chunks:
            if training:
                states.append(RandContext(*chunk.values()))
            parts.append(embedder(**chunk, return_loss=False).embeddings)
    emb = torch.cat(parts).detach().requires_grad_(training)

    # Pass 2: the loss of the (global) batch and its gradient at the embeddings and the scale.
    payload = list(zip(attributes or [None] * half, listing_ids or [None] * half, strict=True))
    query, candidate, payload = gather_embeddings_and_attributes(emb[:half], emb[half:], payload)
    base = base_afmrl_model(model)
    log_scale = base.logit_scale.detach().requires_grad_(
        training and base.logit_scale.requires_grad
    )
    scale = log_scale.exp().clamp(max=100.0)
    dims = base.config.matryoshka_dims if matryoshka else None
    global_attributes = [a for a, _ in payload] if attributes is not None else None
    result = loss_fn(query, candidate, global_attributes, logit_scale=scale, matryoshka_dims=dims)
    ids = [i for _, i in payload] if listing_ids is not None else None
    if not training:
        return result, ids
    wrt = [emb, log_scale] if log_scale.requires_grad else [emb]
    grads = torch.autograd.grad(result.loss, wrt)
    emb_grad = grads[0]
    scale_grad = grads[1] if len(grads) > 1 else None

    # Pass 3 runs when the returned loss is back-propagated.
    loss = result.loss.detach().requires_grad_()
    loss.register_hook(
        partial(
            _replay,
            model=model,
            chunks=chunks,
            states=states,
            emb_grad=emb_grad,
            scale_grad=scale_grad,
            autocast=AutocastState(),
        )
    )
    result.loss = loss
    return result, ids


def _replay(
    grad_output: torch.Tensor,
    *,
    model: nn.Module,
    chunks: list[dict[str, Any]],
    states: list[RandContext],
    emb_grad: torch.Tensor,
    scale_grad: torch.Tensor | None,
    autocast: AutocastState,
) -> None:
    """Backward hook of the cached loss: re-embed each chunk with gradients (same RNG, same
    autocast) and back-propagate its cached gradient times ``grad_output``."""
    ddp = model if isinstance(model, nn.parallel.DistributedDataParallel) else None
    log_scale = base_afmrl_model(model).logit_scale
    begin = 0
    with torch.enable_grad():
        for index, (chunk, state) in enumerate(zip(chunks, states, strict=True)):
            last = index == len(chunks) - 1
            sync = ddp.no_sync() if ddp is not None and not last else contextlib.nullcontext()
            with sync:
                with state, autocast():
                    emb = model(**chunk, return_loss=False).embeddings
                end = begin + emb.shape[0]
                terms = []
                if emb.requires_grad:
                    dtype = torch.promote_types(torch.promote_types(emb.dtype, emb_grad.dtype),
                                                torch.float32)  # fmt: skip
                    cached = emb_grad[begin:end]
                    terms.append(torch.dot(emb.flatten().to(dtype), cached.flatten().to(dtype)))
                if last and scale_grad is not None:
                    terms.append((log_scale * scale_grad.to(log_scale.dtype)).sum())
                if terms:
                    (sum(terms[1:], terms[0]) * grad_output).backward()
            begin = end
    if begin != emb_grad.shape[0]:
        raise RuntimeError(f"replayed {begin} listings for {emb_grad.shape[0]} cached gradients")


__all__ = [
    "AutocastState",
    "RandContext",
    "cached_contrastive_step",
    "chunk_ranges",
    "listing_count",
    "slice_listings",
]
