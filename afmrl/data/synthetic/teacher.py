"""Simulated teacher attributes: what a large MLLM would say about a listing, mistakes included.

The teacher sees the listing's photo and title. It cannot know the size when the title leaves it
out (the size is not drawn), so that key is missing then. On top of that, every other key is
dropped with probability ``drop`` and every kept value is replaced by another value of the same key
(same category vocabulary) with probability ``wrong``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np

from .schema import vocabulary


def teacher_attributes(
    gold: Mapping[str, str],
    mentioned_in_title: Iterable[str],
    drop: float,
    wrong: float,
    rng: np.random.Generator,
) -> dict[str, str]:
    """Noisy copy of ``gold`` (keys in gold's order). ``category`` is kept when all else is dropped."""
    mentioned = set(mentioned_in_title)
    category = gold["category"]
    out: dict[str, str] = {}
    for key, value in gold.items():
        # Draw both numbers for every key so the stream does not depend on earlier outcomes.
        u_drop, u_wrong, u_pick = rng.random(3)
        if key == "size" and key not in mentioned:
            continue
        if u_drop < drop:
            continue
        if u_wrong < wrong:
            others = [v for v in vocabulary(key, category) if v != value]
            value = others[int(u_pick * len(others))]
        out[key] = value
    if not out:
        out["category"] = category
    return out
