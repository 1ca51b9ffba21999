"""BM25 between attribute texts: AGCL's measure of how alike two listings' attributes are.

Each listing's attributes are a bag of terms, one ``key=value`` term per attribute
(:func:`attribute_terms`), so ``colour: navy`` and ``secondary_colour: navy`` are different terms and
a multi-word value is one fact. :func:`bm25_score` is the Okapi BM25 loop reference,
:func:`bm25_matrix` the vectorised form the loss uses for a whole batch (equal to the reference).
Statistics come from the batch scored or from a corpus (:func:`bm25_statistics`).

Training-only: checkpoints do not ship this file.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import NamedTuple

import torch

from modeling_afmrl.attributes import (
    canonical_attribute_text,
    normalize_attributes,
    parse_attributes,
)

#: Okapi BM25 defaults (Robertson & Zaragoza; Lucene uses the same).
BM25_K1 = 1.2
BM25_B = 0.75
#: Joins a key and its value into one BM25 term.
TERM_SEPARATOR = "="


class BM25Statistics(NamedTuple):
    """Collection statistics BM25 needs: document count, document frequency per term, mean length."""

    num_documents: int
    document_frequency: dict[str, int]
    average_length: float


def attribute_terms(attributes: Mapping[str, str] | str | None) -> list[str]:
    """The BM25 terms of one listing's attributes: one ``key=value`` term per attribute.

    A term is the whole normalised pair, so ``colour: navy`` and ``secondary_colour: navy`` are
    different terms and ``colour: navy blue`` is one term (a multi-word value is one fact, not
    several words). Accepts a dict or an attribute string; a malformed string, ``""`` and ``None``
    give no term (the policy of :func:`~modeling_afmrl.attributes.canonical_attribute_text`).
    """
    if attributes is None:
        return []
    if isinstance(attributes, Mapping):
        attrs = normalize_attributes(attributes)
    else:
        attrs = parse_attributes(canonical_attribute_text(attributes)).attributes
    return [f"{k}{TERM_SEPARATOR}{v}" for k, v in attrs.items()]


def bm25_statistics(documents: Iterable[Iterable[str]]) -> BM25Statistics:
    """Statistics of a collection of term lists (a batch, or a whole training corpus)."""
    df: dict[str, int] = {}
    n = total = 0
    for terms in documents:
        terms = list(terms)
        n += 1
        total += len(terms)
        for term in set(terms):
            df[term] = df.get(term, 0) + 1
    return BM25Statistics(n, df, total / n if n else 0.0)


def bm25_idf(term: str, stats: BM25Statistics) -> float:
    """Non-negative BM25 idf ``log(1 + (N - df + 0.5) / (df + 0.5))`` (Lucene's form)."""
    df = stats.document_frequency.get(term, 0)
    return math.log(1.0 + (stats.num_documents - df + 0.5) / (df + 0.5))


def bm25_score(
    query: Iterable[str],
    document: Iterable[str],
    stats: BM25Statistics,
    k1: float = BM25_K1,
    b: float = BM25_B,
) -> float:
    """Okapi BM25 of ``document`` (a term list) for ``query`` (a term list); 0 for an empty side.

    ``sum_t idf(t) * tf(t, d) * (k1 + 1) / (tf(t, d) + k1 * (1 - b + b * |d| / avgdl))`` over the
    query's terms (a repeated query term counts each time).
    """
    document = list(document)
    if not document or stats.average_length <= 0:
        return 0.0
    tf: dict[str, int] = {}
    for term in document:
        tf[term] = tf.get(term, 0) + 1
    norm = k1 * (1.0 - b + b * len(document) / stats.average_length)
    score = 0.0
    for term in query:
        f = tf.get(term, 0)
        if f:
            score += bm25_idf(term, stats) * f * (k1 + 1.0) / (f + norm)
    return score


def bm25_scores(
    queries: Iterable[Iterable[str]],
    documents: Iterable[Iterable[str]],
    stats: BM25Statistics | None = None,
    k1: float = BM25_K1,
    b: float = BM25_B,
) -> list[list[float]]:
    """``scores[i][j] = bm25_score(queries[i], documents[j])``; statistics default to ``documents``'."""
    documents = [list(d) for d in documents]
    stats = bm25_statistics(documents) if stats is None else stats
    return [[bm25_score(q, d, stats, k1, b) for d in documents] for q in map(list, queries)]


def bm25_matrix(
    queries: Sequence[Sequence[str]],
    documents: Sequence[Sequence[str]],
    stats: BM25Statistics | None = None,
    k1: float = BM25_K1,
    b: float = BM25_B,
) -> torch.Tensor:
    """BM25 of every document for every query, vectorised: term lists -> ``[Q, D]`` float64.

    Equals ``attributes.bm25_scores`` (the loop reference). ``stats`` defaults to the documents'
    own statistics (batch statistics).
    """
    stats = bm25_statistics(documents) if stats is None else stats
    q_n, d_n = len(queries), len(documents)
    if q_n == 0 or d_n == 0 or stats.average_length <= 0:
        return torch.zeros(q_n, d_n, dtype=torch.float64)
    vocab: dict[str, int] = {}
    for terms in (*queries, *documents):
        for t in terms:
            vocab.setdefault(t, len(vocab))
    if not vocab:
        return torch.zeros(q_n, d_n, dtype=torch.float64)
    q_tf = _term_counts(queries, vocab)
    d_tf = _term_counts(documents, vocab)
    idf = torch.tensor([bm25_idf(t, stats) for t in vocab], dtype=torch.float64)
    norm = k1 * (1.0 - b + b * d_tf.sum(dim=1, keepdim=True) / stats.average_length)
    d_weight = idf * d_tf * (k1 + 1.0) / (d_tf + norm)
    return q_tf @ d_weight.T


def bm25_self_scores(
    documents: Sequence[Sequence[str]],
    stats: BM25Statistics | None = None,
    k1: float = BM25_K1,
    b: float = BM25_B,
) -> torch.Tensor:
    """``[N]`` float64: BM25 of each term list against itself as a document.

    ``stats`` defaults to the documents' own statistics. Equals the diagonal of
    ``bm25_matrix(documents, documents, stats)``; 0 for an empty term list.
    """
    stats = bm25_statistics(documents) if stats is None else stats
    n = len(documents)
    vocab: dict[str, int] = {}
    for terms in documents:
        for t in terms:
            vocab.setdefault(t, len(vocab))
    if n == 0 or not vocab or stats.average_length <= 0:
        return torch.zeros(n, dtype=torch.float64)
    tf = _term_counts(documents, vocab)
    idf = torch.tensor([bm25_idf(t, stats) for t in vocab], dtype=torch.float64)
    norm = k1 * (1.0 - b + b * tf.sum(dim=1, keepdim=True) / stats.average_length)
    return (tf * idf * tf * (k1 + 1.0) / (tf + norm)).sum(dim=1)


def normalize_bm25(bm25: torch.Tensor, self_scores: torch.Tensor) -> torch.Tensor:
    """Row-normalised BM25: ``bm25[i, j] / self_scores[i]`` (``[Q, D]``, ``[Q]`` -> ``[Q, D]``).

    ``self_scores[i]`` is anchor ``i``'s BM25 against itself, so a candidate stating the same
    attributes scores about 1 and one sharing fewer (or rarer) terms proportionally less. A row
    whose anchor has no attribute (self-score 0) gives 0.
    """
    denom = self_scores.to(bm25.dtype).unsqueeze(1)
    return torch.where(denom > 0, bm25 / denom.clamp(min=1e-12), torch.zeros_like(bm25))


def _term_counts(docs: Sequence[Sequence[str]], vocab: Mapping[str, int]) -> torch.Tensor:
    rows = [i for i, terms in enumerate(docs) for _ in terms]
    cols = [vocab[t] for terms in docs for t in terms]
    counts = torch.zeros(len(docs), len(vocab), dtype=torch.float64)
    if rows:
        counts.index_put_(
            (torch.tensor(rows), torch.tensor(cols)),
            torch.ones(len(rows), dtype=torch.float64),
            accumulate=True,
        )
    return counts


__all__ = [
    "BM25_B",
    "BM25_K1",
    "BM25Statistics",
    "attribute_terms",
    "bm25_idf",
    "bm25_matrix",
    "bm25_score",
    "bm25_scores",
    "bm25_self_scores",
    "bm25_statistics",
    "normalize_bm25",
]
