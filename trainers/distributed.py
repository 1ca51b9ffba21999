"""Everything AGCL gathers across processes, in one place.

Under ``torchrun`` / ``accelerate launch`` each process holds a slice of the global batch. The
contrastive loss must see the *global* batch, so the embeddings (with their gradients) and the
attribute texts of every process are gathered here, in rank order, and every process computes the
same global loss (open_clip's ``gather_with_grad`` without ``local_loss``).

Gradient scaling, worked out once: ``torch.distributed.nn.functional.all_gather`` sums, in its
backward, the gradients every process computed for a slice and hands the sum to the slice's owner.
Since every process computes the same global loss ``L``, process ``r`` receives
``world_size * dL/d(emb_r)`` for its own embeddings; DDP then *averages* parameter gradients over
processes, which gives ``sum_r dL/d(emb_r) * d(emb_r)/d(theta) = dL/d(theta)`` -- exactly the
single-process gradient of the same global batch. Parameters used directly by the loss (the logit
scale) get ``dL/d(scale)`` on every process, also unchanged by averaging. ``tests/test_distributed.py``
checks both against one process.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
import torch.distributed as dist


def is_distributed() -> bool:
    """True inside an initialised process group with more than one process."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def gather_with_grad(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate ``[b, ...]`` slices of every process in rank order, keeping gradients.

    Every process must pass the same shape (the same per-device batch size: use ``drop_last``).
    A no-op (the same tensor) outside distributed runs.
    """
    if not is_distributed():
        return tensor
    from torch.distributed.nn.functional import all_gather

    sizes = gather_objects([tuple(tensor.shape)])
    if len(set(sizes)) != 1:
        raise ValueError(
            f"gather_with_grad needs the same shape on every process, got {sizes} (rank order); "
            "set dataloader_drop_last=True"
        )
    with warnings.catch_warnings():
        # torch 2.14 deprecates it for a private API (_functional_collectives); the public,
        # gradient-keeping all_gather stays the documented choice until that one is public.
        warnings.filterwarnings(
            "ignore", "torch.distributed.nn.functional.all_gather", FutureWarning
        )
        return torch.cat(all_gather(tensor.contiguous()), dim=0)


def gather_objects(items: list[Any]) -> list[Any]:
    """Concatenate every process's list of picklable objects (e.g. attribute strings) in rank order."""
    if not is_distributed():
        return list(items)
    gathered: list[list[Any] | None] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, list(items))
    return [item for part in gathered for item in (part or [])]


def gather_embeddings_and_attributes(
    query: torch.Tensor,
    candidate: torch.Tensor,
    attributes: list[Any] | None,
) -> tuple[torch.Tensor, torch.Tensor, list[Any] | None]:
    """The global batch for the loss: both views' embeddings (with gradients) and attribute texts."""
    if not is_distributed():
        return query, candidate, attributes
    return (
        gather_with_grad(query),
        gather_with_grad(candidate),
        gather_objects(attributes) if attributes is not None else None,
    )


__all__ = [
    "gather_embeddings_and_attributes",
    "gather_objects",
    "gather_with_grad",
    "is_distributed",
    "rank",
    "world_size",
]
