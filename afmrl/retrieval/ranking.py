"""Ranking a score matrix: the top K per query, best first, ties broken by gallery order.

:func:`rank_by_scores` is the exact reference every search path agrees with: the faiss index
(:mod:`afmrl.retrieval.index`) uses the same tie rule, and the evaluation's per-family rankings
call it directly. Pure numpy.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence

import numpy as np


def rank_by_scores(
    scores: np.ndarray, ids: Sequence[Hashable] | np.ndarray | None = None, k: int = 10
) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` of every row of a score matrix, best first; ties broken by gallery order.

    Args:
        scores: ``[Q, N]`` (or ``[N]`` for one query) similarity scores, higher is better.
        ids: ``N`` gallery ids (default: the positions ``0..N-1``).
        k: how many to keep; clipped to ``N``.

    Returns:
        ``(top_scores [Q, k], top_ids [Q, k])`` (``[k]`` each for a 1-D input). Among equal scores
        the item that comes first in the gallery ranks first, also at the K-th place (which of
        several tied items makes the cut).
    """
    s = np.asarray(scores)
    single = s.ndim == 1
    if single:
        s = s[None, :]
    if s.ndim != 2:
        raise ValueError(f"scores must be [Q, N] or [N], got shape {tuple(np.shape(scores))}")
    n = s.shape[1]
    if n == 0:
        raise ValueError("scores has no gallery column (N = 0)")
    if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    k = int(k)
    if not np.issubdtype(s.dtype, np.number) or np.issubdtype(s.dtype, np.complexfloating):
        raise TypeError(f"scores must be real numbers, got dtype {s.dtype}")
    bad = np.isnan(s).any(axis=1) if np.issubdtype(s.dtype, np.floating) else None
    if bad is not None and bad.any():
        raise ValueError(f"scores of query {int(np.argmax(bad))} contain NaN")
    gallery = np.arange(n) if ids is None else np.asarray(ids)
    if gallery.ndim != 1 or len(gallery) != n:
        raise ValueError(
            f"ids must hold one id per gallery column ({n}), got shape {gallery.shape}"
        )
    positions = _stable_top_positions(s, min(k, n))
    top_scores = np.take_along_axis(s, positions, axis=1)
    top_ids = gallery[positions]
    return (top_scores[0], top_ids[0]) if single else (top_scores, top_ids)


def _stable_top_positions(s: np.ndarray, k: int) -> np.ndarray:
    """``[Q, k]`` positions of the k best scores per row, sorted by (-score, position)."""
    n = s.shape[1]
    if k == n:
        return np.argsort(-s, axis=1, kind="stable")
    part = np.argpartition(-s, k - 1, axis=1)[:, :k]
    kth = np.take_along_axis(s, part, axis=1).min(axis=1)
    # Rows where more than k items reach the k-th score: argpartition picked an arbitrary subset
    # of the tied items; redo those rows so the earliest gallery positions make the cut.
    ambiguous = np.flatnonzero((s >= kth[:, None]).sum(axis=1) > k)
    for row in ambiguous:
        candidates = np.flatnonzero(s[row] >= kth[row])
        part[row] = candidates[np.argsort(-s[row, candidates], kind="stable")[:k]]
    order = np.lexsort((part, -np.take_along_axis(s, part, axis=1)), axis=-1)
    return np.take_along_axis(part, order, axis=1)


__all__ = ["rank_by_scores"]
