"""Retrieval metrics as a local ``evaluate`` module: Recall@K, mAP@K (M5Product), MRR, nDCG@K.

Load it offline by path::

    metric = evaluate.load(afmrl.evaluation.modules.metric_path("retrieval"))
    metric.compute(predictions=[["g3", "g1"], ...], references=[["g1"], ...])
    # {"recall@1": ..., "recall@5": ..., "recall@10": ..., "map@10": ..., "mrr": ..., "ndcg@10": ...,
    #  "num_queries": ...}

The maths lives in :mod:`afmrl.evaluation.metrics`; this file only adapts it to ``evaluate``.
"""

import datasets
import evaluate

from afmrl.evaluation.metrics import (
    DEFAULT_MAP_KS,
    DEFAULT_NDCG_KS,
    DEFAULT_RECALL_KS,
    retrieval_metrics,
    score_rankings,
)

_DESCRIPTION = """
Ranking metrics for identical-product retrieval with binary relevance. `predictions` holds, for
every query, its retrieved ids best first; `references` holds the ids of its positives.
recall@K = fraction of queries with a positive in the top K; map@K = mean of AP@K divided by
min(K, number of positives) (M5Product); mrr = mean reciprocal rank of the first positive (0 if
none is retrieved); ndcg@K = binary nDCG with the ideal DCG of min(K, number of positives) hits.
An id repeated in a list counts once; a list shorter than K is padded with non-positives.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions: list of ranked id lists (str or int ids), one per query.
    references: list of positive id lists, one per query (same id type as predictions).
    recall_ks: the K values for recall@K (default 1, 5, 10).
    map_ks: the K values for map@K (default 10).
    ndcg_ks: the K values for ndcg@K (default 10).
    drop_queries_without_positive: if True, queries with an empty reference list are left out and
        counted in `num_queries_without_positive`; if False (default) they raise ValueError.
Returns:
    flat dict: recall@K..., map@K..., mrr, ndcg@K..., num_queries
    (and num_queries_without_positive when dropping).
Examples:
    >>> metric = evaluate.load(afmrl.evaluation.modules.metric_path("retrieval"))
    >>> metric.compute(predictions=[["a", "b"], ["c", "d"]], references=[["b"], ["x"]])["mrr"]
    0.25
"""

_CITATION = """
@inproceedings{afmrl2026,
  title = {AFMRL: Attribute-Enhanced Fine-Grained Multi-Modal Representation Learning},
  booktitle = {Findings of ACL},
  year = {2026}
}
"""


def _features(value_type: str) -> datasets.Features:
    return datasets.Features(
        {
            "predictions": datasets.Sequence(datasets.Value(value_type)),
            "references": datasets.Sequence(datasets.Value(value_type)),
        }
    )


class Retrieval(evaluate.Metric):
    """Recall@K, mAP@K, MRR and nDCG@K over ranked id lists."""

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=[_features("string"), _features("int64")],
        )

    def _compute(
        self,
        predictions,
        references,
        recall_ks=DEFAULT_RECALL_KS,
        map_ks=DEFAULT_MAP_KS,
        ndcg_ks=DEFAULT_NDCG_KS,
        drop_queries_without_positive=False,
    ):
        scorer = score_rankings if drop_queries_without_positive else retrieval_metrics
        return scorer(predictions, references, recall_ks, map_ks, ndcg_ks)
