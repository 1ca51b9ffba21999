"""The order in which AGCL sees listings: ``random``, ``attributes`` or ``mixed`` batches.

A :class:`ListingBatchSampler` is an index sampler whose consecutive chunks of ``batch_size`` indices
are the batches the loss sees. Give it the *global* batch size (per-device size x processes): the
dataloader cuts the order into per-device batches and ``accelerate`` deals them to the processes
round-robin, so the processes of one step together hold exactly one chunk.

* ``random``: a fresh permutation every epoch.
* ``attributes``: listings sorted by category, then by their other attribute values in a key order
  drawn at random every epoch (ties broken at random), cut into batches, batch order shuffled. A
  batch then holds listings of one category that share attribute values: the hard negatives and
  the unlinked listings of the same product that a marketplace-scale batch would contain, which is
  what AGCL's weighting and false-negative filter are for. Listings without attributes sort last
  within their category. With ``group_size`` ``g < batch_size`` the sorted order is cut into
  groups of ``g`` neighbours instead, and a batch is ``batch_size / g`` random groups: every
  anchor still meets its ``g - 1`` nearest attribute neighbours, the rest of the batch is spread
  over categories.
* ``mixed``: a share ``hard_fraction`` of every batch is one run of attribute neighbours (the first
  ``round(hard_fraction * batch_size)`` listings of an ``attributes`` batch), the rest is drawn at
  random from the listings left over, so a batch mixes hard and easy negatives
  (``hard_fraction=1`` is ``attributes``, ``0`` is ``random``).

The order is a pure function of ``(seed, epoch)``, so every process builds the same one and a run
resumed from a checkpoint replays the same batches (the trainer calls :meth:`set_epoch`).
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Mapping, Sequence

from torch.utils.data import Sampler

from .arguments import BATCH_SAMPLERS

#: Sorts after every real value (a missing attribute).
_MISSING = "\U0010ffff"


class ListingBatchSampler(Sampler[int]):
    """Index order for contrastive training; see the module docstring.

    Args:
        num_items: dataset length.
        batch_size: the global batch size (the chunk the loss sees).
        mode: ``"random"``, ``"attributes"`` or ``"mixed"``.
        attributes: one attribute dict per item (``attributes`` and ``mixed`` modes).
        seed: base seed; epoch ``e`` uses ``(seed, e)``.
        hard_fraction: ``mixed`` mode: share of each batch taken from one run of neighbours.
        group_size: ``attributes`` mode: neighbours per group (default: the batch size).
    """

    def __init__(
        self,
        num_items: int,
        batch_size: int,
        mode: str = "random",
        attributes: Sequence[Mapping[str, str]] | None = None,
        seed: int = 0,
        hard_fraction: float = 0.5,
        group_size: int | None = None,
    ):
        if mode not in BATCH_SAMPLERS:
            raise ValueError(f"batch sampler must be one of {BATCH_SAMPLERS}, got {mode!r}")
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        if num_items < 0:
            raise ValueError(f"num_items must be >= 0, got {num_items}")
        if not 0.0 <= hard_fraction <= 1.0:
            raise ValueError(f"hard_fraction must be in [0, 1], got {hard_fraction!r}")
        if group_size is not None and (not isinstance(group_size, int) or group_size < 1):
            raise ValueError(f"group_size must be a positive int or None, got {group_size!r}")
        if mode in ("attributes", "mixed"):
            if attributes is None:
                raise ValueError(f"the {mode!r} batch sampler needs one attribute dict per item")
            if len(attributes) != num_items:
                raise ValueError(
                    f"got {len(attributes)} attribute dicts for a dataset of {num_items} items"
                )
        self.num_items = num_items
        self.batch_size = batch_size
        self.mode = mode
        self.attributes = [dict(a) for a in attributes] if attributes is not None else None
        self.seed = seed
        self.hard_fraction = float(hard_fraction)
        self.group_size = group_size
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.num_items

    def __iter__(self) -> Iterator[int]:
        return iter(self.order(self.epoch))

    def batches(self, epoch: int | None = None) -> list[list[int]]:
        """The epoch's batches (the last one may be short: the dataloader drops it with ``drop_last``)."""
        order = self.order(self.epoch if epoch is None else epoch)
        return [order[i : i + self.batch_size] for i in range(0, len(order), self.batch_size)]

    def order(self, epoch: int) -> list[int]:
        """Every index once, in the order of ``epoch``."""
        rng = random.Random(f"afmrl-batches:{self.seed}:{epoch}")
        if self.mode == "random":
            order = list(range(self.num_items))
            rng.shuffle(order)
            return order
        if self.mode == "mixed":
            return self._mixed_order(rng)
        return self._attribute_order(rng, self.group_size or self.batch_size)

    def _sorted_order(self, rng: random.Random) -> list[int]:
        """Indices sorted by (category, other attribute values in a random key order, random)."""
        attrs = self.attributes or []
        keys = sorted({k for a in attrs for k in a} - {"category"})
        rng.shuffle(keys)
        categories = sorted({a.get("category", _MISSING) for a in attrs})
        rng.shuffle(categories)
        category_rank = {c: r for r, c in enumerate(categories)}
        tiebreak = list(range(self.num_items))
        rng.shuffle(tiebreak)

        def sort_key(i: int):
            a = attrs[i]
            values = tuple(a.get(k, _MISSING) for k in keys)
            return (category_rank[a.get("category", _MISSING)], values, tiebreak[i])

        return sorted(range(self.num_items), key=sort_key)

    def _attribute_order(self, rng: random.Random, size: int) -> list[int]:
        """Sorted order, rotated, cut into runs of ``size``; the full runs shuffled."""
        order = self._sorted_order(rng)
        if order:
            # Rotate so that batch boundaries move between epochs.
            shift = rng.randrange(min(size, len(order)))
            order = order[shift:] + order[:shift]
        full = [order[i : i + size] for i in range(0, len(order) - size + 1, size)]
        rest = order[len(full) * size :]
        rng.shuffle(full)
        return [i for batch in full for i in batch] + rest

    def _mixed_order(self, rng: random.Random) -> list[int]:
        """Each batch: one run of ``k`` neighbours + ``batch_size - k`` random leftovers."""
        size = self.batch_size
        hard = round(self.hard_fraction * size)
        runs = self._attribute_order(rng, size)
        n_full = len(runs) // size
        cores = [runs[b * size : b * size + hard] for b in range(n_full)]
        pool = [i for b in range(n_full) for i in runs[b * size + hard : (b + 1) * size]]
        pool += runs[n_full * size :]
        rng.shuffle(pool)
        easy = size - hard
        order: list[int] = []
        for b, core in enumerate(cores):
            order += core + pool[b * easy : (b + 1) * easy]
        return order + pool[n_full * easy :]


__all__ = ["ListingBatchSampler"]
