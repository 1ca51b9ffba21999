"""The retrieval evaluation runner: encode a query and a gallery split, search, score.

One run (:func:`evaluate_model`) is:

1. encode the query split and the gallery split batch by batch (images are decoded per batch and
   dropped; only the ``[N, D]`` embeddings are kept), each side in its *modality*:
   ``listing`` (photo + title [+ attributes]), ``image`` (photo only) or ``text`` (title
   [+ attributes] only). A task fixes the pair: ``listing`` = listing -> listing (identical-product
   retrieval), ``image`` = image -> image, ``text`` = title -> image;
2. search the gallery with an exact faiss index (:class:`afmrl.retrieval.index.RetrievalIndex`,
   inner product on L2-normalised embeddings) to depth ``depth``;
3. score with :mod:`afmrl.evaluation.metrics` (positives = gallery rows with the query's
   ``product_id``). Queries without any positive are excluded and counted
   (``excluded_queries``);
4. the "hard" score: the same, each query searching only the gallery rows of its own
   ``family_id`` (near-identical products differing in one attribute), exactly, per family.

Attributes (``attributes=``): ``none`` reads no attribute column; ``teacher`` reads
``teacher_attributes``; ``generated`` runs :func:`afmrl.retrieval.attributes.generate_attributes`
on both splits (the one generation function and policy; cached on disk when given a folder).
``gold_attributes`` is never read here. Attributes only ever enter a ``listing`` or ``text`` side.

The maths after the search is in :func:`evaluate_embeddings`, which takes plain arrays, so it is
tested without a model. :func:`chance_recall_at_k` gives the random-ranking reference.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from afmrl.errors import UserError
from afmrl.retrieval.attributes import (
    ATTRIBUTE_SOURCES,
    DEFAULT_GENERATION_BATCH_SIZE,
    DEFAULT_MAX_NEW_TOKENS,
    TEACHER_COLUMN,
    generate_attributes,
)
from afmrl.retrieval.encoding import (
    DEFAULT_ENCODE_BATCH_SIZE,
    MODALITIES,
    check_choice,
    encode_split,
)
from afmrl.retrieval.ranking import rank_by_scores
from modeling_afmrl.attributes import canonical_attribute_text

from .metrics import (
    hits_at_k,
    positives_from_labels,
    relevance_matrix,
    score_rankings,
)
from .settings import CURVE_MAX_K, DEFAULT_DEPTH, SPLIT_PAIRS, TASKS

if TYPE_CHECKING:
    from datasets import Dataset

# ------------------------------------------------------------------------------------ attributes


def attribute_values(
    ds: Dataset,
    source: str,
    split: str,
    model=None,
    batch_size: int = DEFAULT_GENERATION_BATCH_SIZE,
    work_dir: str | os.PathLike | None = None,
    show_progress: bool = True,
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
) -> list[str] | None:
    """The attribute text of every row for ``source`` (``None`` for ``none``).

    ``teacher`` reads the ``teacher_attributes`` column (canonical form; a missing or malformed value
    becomes ``""``); ``generated`` runs :func:`afmrl.retrieval.attributes.generate_attributes`, cached
    in ``work_dir`` when given.
    """
    check_choice(source, ATTRIBUTE_SOURCES, "attributes")
    if source == "none":
        return None
    if source == "teacher":
        if TEACHER_COLUMN not in ds.column_names:
            raise UserError(
                f"--attributes teacher: split {split!r} has no {TEACHER_COLUMN!r} column; "
                f"columns found: {ds.column_names}"
            )
        return [canonical_attribute_text(v or "") for v in ds[TEACHER_COLUMN]]
    if model is None or getattr(model, "extractor", None) is None:
        raise UserError("--attributes generated needs a model with an attribute extractor")
    return generate_attributes(
        model,
        ds,
        work_dir=work_dir,
        batch_size=batch_size,
        max_new_tokens=max_new_tokens,
        desc=f"extract {split}",
        show_progress=show_progress,
    ).texts


# ------------------------------------------------------------------------------------- scoring


@dataclass
class RetrievalRun:
    """One scored run: flat metrics, the Recall@K curve, and what they were computed from.

    ``rankings[i]`` is query ``i``'s ranked gallery ids, ``positives[i]`` its positive ids and
    ``num_candidates[i]`` how many gallery rows it was ranked against (for the queries kept, i.e.
    with a positive), so the numbers (and the chance level) can be recomputed independently.
    """

    name: str
    metrics: dict[str, float | int]
    recall_curve: list[float]
    rankings: list[list[Hashable]] = field(repr=False)
    positives: list[set[Hashable]] = field(repr=False)
    query_ids: list[Hashable] = field(repr=False)
    num_candidates: list[int] = field(default_factory=list, repr=False)
    hard_rankings: list[list[Hashable]] | None = field(default=None, repr=False)
    hard_positives: list[set[Hashable]] | None = field(default=None, repr=False)
    settings: dict[str, Any] = field(default_factory=dict)


def evaluate_embeddings(
    query_emb: np.ndarray,
    gallery_emb: np.ndarray,
    query_ids: Sequence[Hashable],
    query_products: Sequence[Hashable],
    gallery_ids: Sequence[Hashable],
    gallery_products: Sequence[Hashable],
    query_families: Sequence[Hashable] | None = None,
    gallery_families: Sequence[Hashable] | None = None,
    *,
    depth: int = DEFAULT_DEPTH,
    curve_max_k: int = CURVE_MAX_K,
    name: str = "model",
) -> RetrievalRun:
    """Search ``gallery_emb`` for every row of ``query_emb`` (exact faiss) and score the rankings.

    A gallery row with the query's own ``listing_id`` (a catalogue whose query and gallery
    overlap) is neither retrieved nor a positive for that query. With families, ``hard_*`` metrics
    rank each query against its own family's gallery rows only.

    Returns:
        A :class:`RetrievalRun` whose ``metrics`` hold ``recall@K``, ``map@K``, ``mrr``,
        ``ndcg@K``, ``true_recall@K``, ``num_queries`` (scored), ``num_gallery``,
        ``excluded_queries`` (no positive), and with families the same with a ``hard_`` prefix.
    """
    from afmrl.retrieval.index import RetrievalIndex

    q = _as_matrix(query_emb, "query embeddings")
    g = _as_matrix(gallery_emb, "gallery embeddings")
    if q.shape[1] != g.shape[1]:
        raise ValueError(f"query dim {q.shape[1]} != gallery dim {g.shape[1]}")
    labels = _Labels.check(len(q), len(g), query_ids, query_products, gallery_ids,
                           gallery_products, query_families, gallery_families, depth)  # fmt: skip
    keep = min(len(g), depth)
    index = RetrievalIndex(g.shape[1])
    index.add(g, labels.gallery_ids)
    _, ids = index.search(q, k=min(len(g), keep + 1) if labels.overlap else keep)
    rankings = [
        [i for i in row if i != qid][:keep]
        for row, qid in zip(ids.tolist(), labels.query_ids, strict=True)
    ]

    def family_scores(qs: list[int], rows: list[int]) -> np.ndarray:
        return q[qs].astype(np.float64) @ g[rows].astype(np.float64).T

    return _scored_run(name, rankings, family_scores, labels, depth, curve_max_k)


def evaluate_scores(
    scores: np.ndarray,
    query_ids: Sequence[Hashable],
    query_products: Sequence[Hashable],
    gallery_ids: Sequence[Hashable],
    gallery_products: Sequence[Hashable],
    query_families: Sequence[Hashable] | None = None,
    gallery_families: Sequence[Hashable] | None = None,
    *,
    depth: int = DEFAULT_DEPTH,
    curve_max_k: int = CURVE_MAX_K,
    name: str = "model",
) -> RetrievalRun:
    """:func:`evaluate_embeddings` for a system that gives a ``[Q, N]`` score matrix (higher is
    better) instead of embeddings, e.g. BM25 over titles; ties are broken by gallery order."""
    s = np.asarray(scores, dtype=np.float64)
    if s.ndim != 2 or s.shape[0] == 0 or s.shape[1] == 0:
        raise ValueError(f"scores must be a non-empty [Q, N] matrix, got shape {s.shape}")
    labels = _Labels.check(s.shape[0], s.shape[1], query_ids, query_products, gallery_ids,
                           gallery_products, query_families, gallery_families, depth)  # fmt: skip
    position = {gid: j for j, gid in enumerate(labels.gallery_ids)}
    masked = s.copy()
    for i, qid in enumerate(labels.query_ids):
        if qid in position:
            masked[i, position[qid]] = -np.inf
    gallery = np.asarray(labels.gallery_ids, dtype=object)
    _, top = rank_by_scores(masked, gallery, k=min(s.shape[1], depth + labels.overlap))
    rankings = [
        [gid for gid in row if gid != qid][:depth]
        for row, qid in zip(top.tolist(), labels.query_ids, strict=True)
    ]

    def family_scores(qs: list[int], rows: list[int]) -> np.ndarray:
        return s[np.ix_(qs, rows)]

    return _scored_run(name, rankings, family_scores, labels, depth, curve_max_k)


@dataclass
class _Labels:
    """The ids, products and families of a query and a gallery side, checked once."""

    query_ids: list[Hashable]
    query_products: Sequence[Hashable]
    gallery_ids: list[Hashable]
    gallery_products: Sequence[Hashable]
    query_families: Sequence[Hashable] | None
    gallery_families: Sequence[Hashable] | None
    overlap: bool

    @classmethod
    def check(cls, n_query, n_gallery, query_ids, query_products, gallery_ids, gallery_products,
              query_families, gallery_families, depth) -> _Labels:  # fmt: skip
        _check_len(query_ids, n_query, "query_ids")
        _check_len(query_products, n_query, "query_products")
        _check_len(gallery_ids, n_gallery, "gallery_ids")
        _check_len(gallery_products, n_gallery, "gallery_products")
        if isinstance(depth, bool) or not isinstance(depth, int) or depth < 1:
            raise ValueError(f"depth must be a positive integer, got {depth!r}")
        gallery_ids = list(gallery_ids)
        if len(set(gallery_ids)) != len(gallery_ids):
            raise ValueError("gallery listing ids are not unique")
        families = query_families is not None and gallery_families is not None
        if families:
            _check_len(query_families, n_query, "query_families")
            _check_len(gallery_families, n_gallery, "gallery_families")
        query_ids = list(query_ids)
        return cls(
            query_ids,
            query_products,
            gallery_ids,
            gallery_products,
            query_families if families else None,
            gallery_families if families else None,
            overlap=not set(gallery_ids).isdisjoint(query_ids),
        )


def _scored_run(
    name: str,
    rankings: list[list[Hashable]],
    family_scores: Callable[[list[int], list[int]], np.ndarray],
    labels: _Labels,
    depth: int,
    curve_max_k: int,
) -> RetrievalRun:
    """Score rankings cut at ``depth`` (a list shorter than K counts as padded with misses, so
    ``depth`` applies to every metric and the curve), and the per-family ``hard_`` rankings."""
    query_ids, gallery_ids = labels.query_ids, labels.gallery_ids
    gallery_set = set(gallery_ids)
    positives = positives_from_labels(labels.query_products, labels.gallery_products, gallery_ids)
    positives = [p - {qid} for p, qid in zip(positives, query_ids, strict=True)]
    metrics, kept = _score(rankings, positives, query_ids)
    metrics["num_gallery"] = len(gallery_ids)
    curve = recall_curve([rankings[i] for i in kept], [positives[i] for i in kept], curve_max_k)
    run = RetrievalRun(
        name=name,
        metrics=metrics,
        recall_curve=curve,
        rankings=[rankings[i] for i in kept],
        positives=[positives[i] for i in kept],
        query_ids=[query_ids[i] for i in kept],
        num_candidates=[len(gallery_ids) - (query_ids[i] in gallery_set) for i in kept],
    )
    if labels.query_families is not None:
        hard = family_rankings(
            family_scores, query_ids, labels.query_families, gallery_ids, labels.gallery_families
        )
        hard = [ranked[:depth] for ranked in hard]
        members = _family_members(labels.query_families, labels.gallery_families, gallery_ids)
        hard_pos = [p & set(m) for p, m in zip(positives, members, strict=True)]
        hard_metrics, hard_kept = _score(hard, hard_pos, query_ids)
        run.metrics.update({f"hard_{k}": v for k, v in hard_metrics.items()})
        run.hard_rankings = [hard[i] for i in hard_kept]
        run.hard_positives = [hard_pos[i] for i in hard_kept]
    return run


def _score(
    rankings: list[list[Hashable]], positives: list[set[Hashable]], query_ids: list[Hashable]
) -> tuple[dict[str, float | int], list[int]]:
    """Metrics over the queries with a positive, their positions, and the excluded count."""
    kept = [i for i, p in enumerate(positives) if p]
    if not kept:
        raise ValueError(f"none of the {len(positives)} queries has a positive in the gallery")
    out = score_rankings(rankings, positives, query_ids=query_ids)
    out["excluded_queries"] = int(out.pop("num_queries_without_positive"))
    out["num_queries"] = int(out["num_queries"])
    return out, kept


def _family_members(
    query_families: Sequence[Hashable],
    gallery_families: Sequence[Hashable],
    gallery_ids: Sequence[Hashable],
) -> list[list[Hashable]]:
    by_family: dict[Hashable, list[Hashable]] = {}
    for fam, gid in zip(gallery_families, gallery_ids, strict=True):
        by_family.setdefault(fam, []).append(gid)
    return [by_family.get(f, []) for f in query_families]


def family_rankings(
    family_scores: Callable[[list[int], list[int]], np.ndarray],
    query_ids: Sequence[Hashable],
    query_families: Sequence[Hashable],
    gallery_ids: Sequence[Hashable],
    gallery_families: Sequence[Hashable],
) -> list[list[Hashable]]:
    """For each query, its family's gallery rows ranked by score (exact, ties by gallery order).

    ``family_scores(query_positions, gallery_positions)`` gives the ``[q, n]`` score block. The
    query's own listing id is left out. A query whose family has no gallery row gets ``[]``.
    """
    gallery_ids = np.asarray(list(gallery_ids), dtype=object)
    rows_of: dict[Hashable, list[int]] = {}
    for j, fam in enumerate(gallery_families):
        rows_of.setdefault(fam, []).append(j)
    out: list[list[Hashable]] = [[] for _ in range(len(query_ids))]
    queries_of: dict[Hashable, list[int]] = {}
    for i, fam in enumerate(query_families):
        queries_of.setdefault(fam, []).append(i)
    for fam, qs in queries_of.items():
        rows = rows_of.get(fam)
        if not rows:
            continue
        _, top = rank_by_scores(family_scores(qs, rows), gallery_ids[rows], k=len(rows))
        for i, ranked in zip(qs, top.tolist(), strict=True):
            out[i] = [gid for gid in ranked if gid != query_ids[i]]
    return out


def recall_curve(
    rankings: Sequence[Sequence[Hashable]], positives: Sequence[set[Hashable]], max_k: int
) -> list[float]:
    """Recall@K for K = 1..max_k (lists shorter than K count as padded with misses)."""
    rel, _ = relevance_matrix(rankings, positives)
    return [float(hits_at_k(rel, k).mean()) for k in range(1, max_k + 1)]


# -------------------------------------------------------------------------------------- chance


def chance_hit_probability(num_positives: int, gallery_size: int, k: int) -> float:
    """P(at least one of ``num_positives`` items lands in a uniformly random top-``k`` of
    ``gallery_size``) = 1 - C(N - p, k) / C(N, k) (hypergeometric)."""
    n, p = int(gallery_size), int(num_positives)
    if not 0 <= p <= n or n < 1:
        raise ValueError(
            f"need 0 <= num_positives <= gallery_size and gallery_size >= 1, got {p}, {n}"
        )
    k = min(int(k), n)
    miss = 1.0
    for i in range(k):  # prod_{i<k} (N - p - i) / (N - i)
        miss *= max(n - p - i, 0) / (n - i)
        if miss == 0.0:
            break
    return 1.0 - miss


def chance_recall_at_k(
    num_positives: Sequence[int], gallery_sizes: Sequence[int] | int, k: int
) -> float:
    """Expected Recall@``k`` of a random ranking: the mean hit probability over queries.

    ``gallery_sizes`` is each query's candidate count (one int for a shared gallery).
    """
    if isinstance(gallery_sizes, int | np.integer):
        gallery_sizes = [int(gallery_sizes)] * len(num_positives)
    _check_len(gallery_sizes, len(num_positives), "gallery_sizes")
    if not num_positives:
        raise ValueError("no query to compute a chance level for")
    return float(
        np.mean(
            [
                chance_hit_probability(p, n, k)
                for p, n in zip(num_positives, gallery_sizes, strict=True)
            ]
        )
    )


def chance_levels(run: RetrievalRun, max_k: int = CURVE_MAX_K) -> dict[str, Any]:
    """Random-ranking Recall@K for the queries ``run`` scored: flat ``recall@K`` keys (and
    ``hard_recall@K``), plus ``recall_curve`` for K = 1..max_k."""
    sizes = run.num_candidates
    num_pos = [len(p) for p in run.positives]
    ks = sorted({int(k.split("@")[1]) for k in run.metrics if k.startswith("recall@")})
    out: dict[str, Any] = {f"recall@{k}": chance_recall_at_k(num_pos, sizes, k) for k in ks}
    out["recall_curve"] = [chance_recall_at_k(num_pos, sizes, k) for k in range(1, max_k + 1)]
    if run.hard_rankings is not None and run.hard_positives is not None:
        hard_sizes = [len(r) for r in run.hard_rankings]
        hard_pos = [len(p) for p in run.hard_positives]
        for k in ks:
            out[f"hard_recall@{k}"] = chance_recall_at_k(hard_pos, hard_sizes, k)
    return out


# ------------------------------------------------------------------------------- model level


def load_eval_splits(
    data: str | os.PathLike,
    split: str = "test",
    columns: dict[str, str] | None = None,
) -> tuple[Dataset, Dataset]:
    """``(query, gallery)`` datasets of ``split`` (``test`` or ``validation``) via ``load_catalog``."""
    from afmrl.data import load_catalog

    check_choice(split, tuple(SPLIT_PAIRS), "split")
    q_name, g_name = SPLIT_PAIRS[split]
    data_dict = load_catalog(data, columns=columns, splits=[q_name, g_name])
    return data_dict[q_name], data_dict[g_name]


def evaluate_model(
    model,
    query_ds: Dataset,
    gallery_ds: Dataset,
    *,
    task: str = "listing",
    modalities: tuple[str, str] | None = None,
    attributes: str = "none",
    query_attributes: Sequence[str] | None = None,
    gallery_attributes: Sequence[str] | None = None,
    batch_size: int = DEFAULT_ENCODE_BATCH_SIZE,
    depth: int = DEFAULT_DEPTH,
    name: str = "model",
    show_progress: bool = True,
    cache_dir: str | os.PathLike | None = None,
    split_names: tuple[str, str] = ("query", "gallery"),
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
) -> RetrievalRun:
    """Encode ``query_ds`` and ``gallery_ds`` with ``model``, search exactly and score.

    Args:
        task: ``listing`` | ``image`` | ``text`` (see the module docstring); ``modalities``
            overrides the (query, gallery) modality pair (the baselines use it).
        attributes: ``none`` | ``teacher`` | ``generated``; or pass the strings directly with
            ``query_attributes`` / ``gallery_attributes``.
        cache_dir: where generated attributes are cached (one shard folder per split).
        max_new_tokens: generation budget per listing for ``attributes="generated"``.
    """
    check_choice(task, tuple(TASKS), "task")
    q_mod, g_mod = modalities or TASKS[task]
    for mod in (q_mod, g_mod):
        check_choice(mod, MODALITIES, "modality")
    for split_ds, what in ((query_ds, split_names[0]), (gallery_ds, split_names[1])):
        missing = [c for c in ("listing_id", "product_id") if c not in split_ds.column_names]
        if missing:
            raise UserError(
                f"split {what!r} lacks column(s) {missing}; found {split_ds.column_names}"
            )
    options = {
        "attributes": attributes,
        "name": name,
        "batch_size": batch_size,
        "cache_dir": cache_dir,
        "show_progress": show_progress,
        "max_new_tokens": max_new_tokens,
    }
    sides = [
        side_embeddings(model, query_ds, q_mod, query_attributes, split_names[0], **options),
        side_embeddings(model, gallery_ds, g_mod, gallery_attributes, split_names[1], **options),
    ]
    families = "family_id" in query_ds.column_names and "family_id" in gallery_ds.column_names
    q_ids, g_ids = list(query_ds["listing_id"]), list(gallery_ds["listing_id"])
    run = evaluate_embeddings(
        sides[0],
        sides[1],
        q_ids,
        query_ds["product_id"],
        g_ids,
        gallery_ds["product_id"],
        query_ds["family_id"] if families else None,
        gallery_ds["family_id"] if families else None,
        depth=depth,
        name=name,
    )
    run.settings.update(
        task=task,
        query_modality=q_mod,
        gallery_modality=g_mod,
        attributes=attributes
        if (query_attributes is None and gallery_attributes is None)
        else "given",
        depth=depth,
    )
    return run


def side_embeddings(
    model,
    split_ds: Dataset,
    modality: str,
    given: Sequence[str] | None,
    split_name: str,
    *,
    attributes: str,
    name: str,
    batch_size: int,
    cache_dir: str | os.PathLike | None,
    show_progress: bool,
    max_new_tokens: int,
) -> np.ndarray:
    """One side of a run: its attribute texts (given, read or generated), then ``[N, D]``."""
    attrs = given
    if attrs is None and modality != "image":
        attrs = attribute_values(
            split_ds,
            attributes,
            split_name,
            model,
            batch_size=batch_size,
            work_dir=Path(cache_dir) / split_name if cache_dir is not None else None,
            show_progress=show_progress,
            max_new_tokens=max_new_tokens,
        )
    return encode_split(
        model,
        split_ds,
        modality,
        attrs,
        batch_size=batch_size,
        desc=f"{name}: {split_name} ({modality})",
        show_progress=show_progress,
    )


def model_display_name(path: str | os.PathLike, taken: Sequence[str] = ()) -> str:
    """A short unique name for a model path (its folder name; ``-2``, ``-3`` when taken)."""
    base = Path(os.fspath(path).rstrip("/\\")).name or os.fspath(path)
    name, i = base, 2
    while name in taken:
        name, i = f"{base}-{i}", i + 1
    return name


# ------------------------------------------------------------------------------------- helpers


def _check_len(values: Sequence, n: int, name: str) -> None:
    if len(values) != n:
        raise ValueError(f"{name} has {len(values)} entries, expected {n}")


def _as_matrix(x: np.ndarray, what: str) -> np.ndarray:
    arr = np.asarray(x, dtype=np.float32)
    if arr.ndim != 2 or len(arr) == 0:
        raise ValueError(f"{what} must be a non-empty [N, D] array, got shape {arr.shape}")
    return arr
