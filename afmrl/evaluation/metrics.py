"""Ranking metrics for identical-product retrieval: Recall@K, mAP@K, MRR, nDCG@K (pure numpy).

Inputs are, for every query, its ranked list of retrieved ids (a list of lists, or a ``[Q, K]``
array) and the set of its positive ids. Definitions (relevance is binary):

- ``recall@K``: fraction of queries with at least one positive in the top K -- the *hit rate*, which
  is what the AFMRL paper's and M5Product's tables call Recall@K.
- ``true_recall@K``: mean over queries of the share of their positives found in the top K.
- ``map@K``: mean over queries of ``AP@K = sum_{i<=K} P@i * rel_i / min(K, n_pos)``
  (the M5Product definition: a query with 3 positives is scored at K=1 out of 1, not out of 3).
- ``mrr``: mean reciprocal rank of the first positive in the whole list; 0 when none is retrieved.
- ``ndcg@K``: ``sum_{i<=K} rel_i / log2(i + 1)`` divided by the ideal DCG of ``min(K, n_pos)``
  positives at the top.

A list shorter than K counts as padded with non-positives (a small gallery, an approximate index
that found fewer than K). An id repeated in one list counts only at its first rank, so no metric can
exceed 1. A query without any positive is an error (its metrics are undefined):
:func:`split_queries_without_positives` / :func:`score_rankings` set such queries aside and count
them, which is what the evaluation runner does.

Rankings come from :func:`afmrl.retrieval.ranking.rank_by_scores` (ties broken by gallery order) or
a faiss index with the same tie rule, so every metric is a deterministic function of the scores.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Sequence
from typing import NamedTuple

import numpy as np

#: For each query its ranked ids (list of lists, ragged allowed) or a ``[Q, K]`` id array.
Rankings = Sequence[Sequence[Hashable]] | np.ndarray
#: For each query the collection of its positive ids.
PositiveSets = Sequence[Iterable[Hashable]]
QueryIds = Sequence[Hashable] | None

DEFAULT_RECALL_KS: tuple[int, ...] = (1, 5, 10)
DEFAULT_MAP_KS: tuple[int, ...] = (10,)
DEFAULT_NDCG_KS: tuple[int, ...] = (10,)
DEFAULT_TRUE_RECALL_KS: tuple[int, ...] = (10,)


# ----------------------------------------------------------------------------- relevance matrix


def _query_label(i: int, query_ids: Sequence[Hashable] | None) -> str:
    return f"query {i}" if query_ids is None else f"query {i} (id {query_ids[i]!r})"


def _check_k(k: int, name: str) -> int:
    if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 1:
        raise ValueError(f"{name} must be a positive integer, got {k!r}")
    return int(k)


def _id_set(pos: Iterable[Hashable], i: int, query_ids: Sequence[Hashable] | None) -> set:
    if isinstance(pos, str | bytes) or not isinstance(pos, Iterable):
        raise TypeError(
            f"positives of {_query_label(i, query_ids)} must be a collection of ids, "
            f"got {type(pos).__name__}"
        )
    return set(pos.tolist() if isinstance(pos, np.ndarray) else pos)


def _as_rows(retrieved: Sequence[Sequence[Hashable]] | np.ndarray) -> list[list[Hashable]]:
    if isinstance(retrieved, np.ndarray):
        if retrieved.ndim != 2:
            raise ValueError(f"retrieved must be a [Q, K] array, got shape {retrieved.shape}")
        return retrieved.tolist()
    if isinstance(retrieved, str | bytes):
        raise TypeError("retrieved must be a list of ranked id lists, got a string")
    rows = []
    for i, row in enumerate(retrieved):
        if isinstance(row, str | bytes) or not isinstance(row, Iterable):
            raise TypeError(f"retrieved[{i}] must be a list of ids, got {type(row).__name__}")
        rows.append(row.tolist() if isinstance(row, np.ndarray) else list(row))
    return rows


def relevance_matrix(
    retrieved: Rankings,
    positives: PositiveSets,
    query_ids: Sequence[Hashable] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Binary relevance of every ranked position, and the number of positives per query.

    Returns:
        ``(rel [Q, D] bool, num_positives [Q] int)`` with ``D`` the longest list (shorter lists are
        padded with False). A repeated id is relevant at its first rank only.

    Raises:
        ValueError: lengths differ, or a query has no positive (the message names it).
    """
    rows = _as_rows(retrieved)
    if isinstance(positives, str | bytes):
        raise TypeError("positives must be a list of id collections, got a string")
    positives = list(positives)
    if len(rows) != len(positives):
        raise ValueError(
            f"retrieved has {len(rows)} queries but positives has {len(positives)}; "
            "give one positive set per ranked list"
        )
    if query_ids is not None and len(query_ids) != len(rows):
        raise ValueError(f"query_ids has {len(query_ids)} entries for {len(rows)} queries")
    if not rows:
        raise ValueError("no query to score (retrieved is empty)")
    depth = max((len(r) for r in rows), default=0)
    rel = np.zeros((len(rows), depth), dtype=bool)
    num_pos = np.zeros(len(rows), dtype=np.int64)
    for i, (row, pos) in enumerate(zip(rows, positives, strict=True)):
        pos_set = _id_set(pos, i, query_ids)
        if not pos_set:
            raise ValueError(
                f"{_query_label(i, query_ids)} has no positive; its metrics are undefined. "
                "Use split_queries_without_positives() / score_rankings() to set such queries aside."
            )
        num_pos[i] = len(pos_set)
        seen: set[Hashable] = set()
        for j, item in enumerate(row):
            if item in pos_set and item not in seen:
                rel[i, j] = True
            seen.add(item)
    return rel, num_pos


# ------------------------------------------------------------------- per-query maths on rel [Q, D]


def _top(rel: np.ndarray, k: int) -> np.ndarray:
    """The first k columns of rel, padded with False when the lists are shorter than k."""
    if rel.shape[1] >= k:
        return rel[:, :k]
    return np.pad(rel, ((0, 0), (0, k - rel.shape[1])))


def hits_at_k(rel: np.ndarray, k: int) -> np.ndarray:
    """``[Q]`` 1.0 where a positive is in the top k, else 0.0."""
    return _top(rel, _check_k(k, "k")).any(axis=1).astype(np.float64)


def true_recall_at_k(rel: np.ndarray, num_positives: np.ndarray, k: int) -> np.ndarray:
    """``[Q]`` share of the query's positives found in its top k (true recall, not the hit rate)."""
    return _top(rel, _check_k(k, "k")).sum(axis=1) / num_positives


def average_precision_at_k(rel: np.ndarray, num_positives: np.ndarray, k: int) -> np.ndarray:
    """``[Q]`` AP@k normalised by ``min(k, num_positives)`` (M5Product)."""
    top = _top(rel, _check_k(k, "k")).astype(np.float64)
    precision = np.cumsum(top, axis=1) / np.arange(1, k + 1)
    return (precision * top).sum(axis=1) / np.minimum(k, num_positives)


def reciprocal_ranks(rel: np.ndarray) -> np.ndarray:
    """``[Q]`` 1 / rank of the first positive in the whole list; 0.0 when there is none."""
    if rel.shape[1] == 0:  # every list is empty
        return np.zeros(rel.shape[0])
    found = rel.any(axis=1)
    first = np.argmax(rel, axis=1)
    return np.where(found, 1.0 / (first + 1), 0.0)


def ndcg_scores_at_k(rel: np.ndarray, num_positives: np.ndarray, k: int) -> np.ndarray:
    """``[Q]`` nDCG@k with binary gains; ideal DCG puts ``min(k, num_positives)`` hits on top."""
    top = _top(rel, _check_k(k, "k")).astype(np.float64)
    discounts = 1.0 / np.log2(np.arange(2, k + 2))
    dcg = top @ discounts
    ideal = np.cumsum(discounts)[np.minimum(k, num_positives) - 1]
    return dcg / ideal


# ---------------------------------------------------------------------------- list-level metrics


def recall_at_k(
    retrieved: Rankings, positives: PositiveSets, k: int, query_ids: QueryIds = None
) -> float:
    """Fraction of queries with at least one positive in their top ``k``."""
    rel, _ = relevance_matrix(retrieved, positives, query_ids)
    return float(hits_at_k(rel, k).mean())


def map_at_k(
    retrieved: Rankings, positives: PositiveSets, k: int, query_ids: QueryIds = None
) -> float:
    """Mean AP@k over queries (normalised by ``min(k, #positives)``)."""
    rel, num_pos = relevance_matrix(retrieved, positives, query_ids)
    return float(average_precision_at_k(rel, num_pos, k).mean())


def mrr(retrieved: Rankings, positives: PositiveSets, query_ids: QueryIds = None) -> float:
    """Mean reciprocal rank of the first positive (0 for a query whose list has none)."""
    rel, _ = relevance_matrix(retrieved, positives, query_ids)
    return float(reciprocal_ranks(rel).mean())


def ndcg_at_k(
    retrieved: Rankings, positives: PositiveSets, k: int, query_ids: QueryIds = None
) -> float:
    """Mean nDCG@k over queries (binary relevance)."""
    rel, num_pos = relevance_matrix(retrieved, positives, query_ids)
    return float(ndcg_scores_at_k(rel, num_pos, k).mean())


def retrieval_metrics(
    retrieved: Rankings,
    positives: PositiveSets,
    recall_ks: Iterable[int] = DEFAULT_RECALL_KS,
    map_ks: Iterable[int] = DEFAULT_MAP_KS,
    ndcg_ks: Iterable[int] = DEFAULT_NDCG_KS,
    query_ids: Sequence[Hashable] | None = None,
    true_recall_ks: Iterable[int] = DEFAULT_TRUE_RECALL_KS,
) -> dict[str, float]:
    """All metrics as flat keys: ``recall@1 … map@10, mrr, ndcg@10, true_recall@10`` plus
    ``num_queries``. ``recall@K`` is the hit rate (see the module docstring).

    Raises ``ValueError`` for a query without positive (see :func:`score_rankings`).
    """
    rel, num_pos = relevance_matrix(retrieved, positives, query_ids)
    out: dict[str, float] = {}
    for k in recall_ks:
        out[f"recall@{k}"] = float(hits_at_k(rel, k).mean())
    for k in map_ks:
        out[f"map@{k}"] = float(average_precision_at_k(rel, num_pos, k).mean())
    out["mrr"] = float(reciprocal_ranks(rel).mean())
    for k in ndcg_ks:
        out[f"ndcg@{k}"] = float(ndcg_scores_at_k(rel, num_pos, k).mean())
    for k in true_recall_ks:
        out[f"true_recall@{k}"] = float(true_recall_at_k(rel, num_pos, k).mean())
    out["num_queries"] = len(num_pos)
    return out


# ------------------------------------------------------------------- queries without a positive


class QuerySplit(NamedTuple):
    """Which queries can be scored: positions kept, and the labels of those set aside."""

    keep: np.ndarray
    dropped: list[Hashable]

    @property
    def num_dropped(self) -> int:
        return len(self.dropped)


def split_queries_without_positives(
    positives: Sequence[Iterable[Hashable]], query_ids: Sequence[Hashable] | None = None
) -> QuerySplit:
    """Positions of the queries that have at least one positive, and the ids of those that don't.

    ``dropped`` holds the query ids (or positions when ``query_ids`` is None).
    """
    keep, dropped = [], []
    for i, pos in enumerate(positives):
        if not _id_set(pos, i, query_ids):
            dropped.append(i if query_ids is None else query_ids[i])
        else:
            keep.append(i)
    return QuerySplit(np.asarray(keep, dtype=np.int64), dropped)


def score_rankings(
    retrieved: Rankings,
    positives: PositiveSets,
    recall_ks: Iterable[int] = DEFAULT_RECALL_KS,
    map_ks: Iterable[int] = DEFAULT_MAP_KS,
    ndcg_ks: Iterable[int] = DEFAULT_NDCG_KS,
    query_ids: Sequence[Hashable] | None = None,
) -> dict[str, float]:
    """:func:`retrieval_metrics` over the queries that have a positive, plus the count of the rest.

    Adds ``num_queries_without_positive``; raises ``ValueError`` when no query has a positive.
    """
    if isinstance(positives, str | bytes):
        raise TypeError("positives must be a list of id collections, got a string")
    positives = [_id_set(p, i, query_ids) for i, p in enumerate(positives)]
    rows = _as_rows(retrieved)
    if len(rows) != len(positives):
        raise ValueError(f"retrieved has {len(rows)} queries but positives has {len(positives)}")
    split = split_queries_without_positives(positives, query_ids)
    if len(split.keep) == 0:
        raise ValueError(f"none of the {len(rows)} queries has a positive in the gallery")
    keep = split.keep.tolist()
    out = retrieval_metrics(
        [rows[i] for i in keep],
        [positives[i] for i in keep],
        recall_ks,
        map_ks,
        ndcg_ks,
        None if query_ids is None else [query_ids[i] for i in keep],
    )
    out["num_queries_without_positive"] = split.num_dropped
    return out


def positives_from_labels(
    query_labels: Sequence[Hashable],
    gallery_labels: Sequence[Hashable],
    gallery_ids: Sequence[Hashable] | None = None,
) -> list[set[Hashable]]:
    """Positive sets from labels: the gallery ids whose label (e.g. ``product_id``) equals the query's.

    ``gallery_ids`` defaults to gallery positions. A query whose label is absent gets an empty set.
    """
    gallery_labels = list(gallery_labels)
    ids = list(range(len(gallery_labels))) if gallery_ids is None else list(gallery_ids)
    if len(ids) != len(gallery_labels):
        raise ValueError(
            f"gallery_ids has {len(ids)} entries but gallery_labels has {len(gallery_labels)}"
        )
    by_label: dict[Hashable, set[Hashable]] = {}
    for label, gid in zip(gallery_labels, ids, strict=True):
        by_label.setdefault(label, set()).add(gid)
    return [set(by_label.get(label, ())) for label in query_labels]
