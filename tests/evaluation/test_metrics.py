"""Retrieval and attribute-extraction metrics: hand-computed cases, scikit-learn, a slow reference."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import (
    average_precision_score,
    ndcg_score,
    precision_recall_fscore_support,
    top_k_accuracy_score,
)
from sklearn.preprocessing import MultiLabelBinarizer

from afmrl.evaluation.attribute_metrics import attribute_metrics
from afmrl.evaluation.metrics import (
    map_at_k,
    mrr,
    ndcg_at_k,
    positives_from_labels,
    recall_at_k,
    relevance_matrix,
    retrieval_metrics,
    score_rankings,
    split_queries_without_positives,
)
from afmrl.retrieval.ranking import rank_by_scores

# ------------------------------------------------------------------------ hand-computed cases


def test_single_query_by_hand():
    # Ranking a b c d e, positives {b, d}: hits at ranks 2 and 4.
    retrieved, positives = [["a", "b", "c", "d", "e"]], [{"b", "d"}]
    assert recall_at_k(retrieved, positives, 1) == 0.0
    assert recall_at_k(retrieved, positives, 2) == 1.0
    # AP@5 = (P@2 + P@4) / min(5, 2) = (1/2 + 2/4) / 2
    assert map_at_k(retrieved, positives, 5) == pytest.approx(0.5)
    # AP@2 = P@2 / min(2, 2) = (1/2) / 2 ; AP@1 = 0
    assert map_at_k(retrieved, positives, 2) == pytest.approx(0.25)
    assert map_at_k(retrieved, positives, 1) == 0.0
    assert mrr(retrieved, positives) == pytest.approx(0.5)
    # DCG@5 = 1/log2(3) + 1/log2(5); ideal puts 2 hits at ranks 1, 2: 1/log2(2) + 1/log2(3)
    expected = (1 / math.log2(3) + 1 / math.log2(5)) / (1 + 1 / math.log2(3))
    assert ndcg_at_k(retrieved, positives, 5) == pytest.approx(expected)
    # At K=1 nothing relevant is in the top 1: nDCG@1 = 0
    assert ndcg_at_k(retrieved, positives, 1) == 0.0


def test_map_divides_by_min_k_and_positives():
    # 3 positives, the top-1 is one of them: AP@1 = P@1 / min(1, 3) = 1 (not 1/3).
    retrieved, positives = [[7, 1, 2, 3]], [{7, 8, 9}]
    assert map_at_k(retrieved, positives, 1) == 1.0
    # AP@4 = P@1 / min(4, 3) = 1/3 (the other two positives are never retrieved)
    assert map_at_k(retrieved, positives, 4) == pytest.approx(1 / 3)
    # nDCG@4 = 1 / (1 + 1/log2(3) + 1/log2(4))
    assert ndcg_at_k(retrieved, positives, 4) == pytest.approx(1 / (1 + 1 / math.log2(3) + 0.5))


def test_several_queries_are_averaged():
    # q0: hit at rank 1 (RR 1); q1: hit at rank 3 (RR 1/3); q2: no hit (RR 0).
    retrieved = [["x", "y", "z"], ["x", "y", "z"], ["x", "y", "z"]]
    positives = [{"x"}, {"z", "w"}, {"w"}]
    out = retrieval_metrics(retrieved, positives, recall_ks=(1, 3), map_ks=(3,), ndcg_ks=(3,))
    assert out["recall@1"] == pytest.approx(1 / 3)
    assert out["recall@3"] == pytest.approx(2 / 3)
    assert out["mrr"] == pytest.approx((1 + 1 / 3 + 0) / 3)
    # AP@3: q0 = 1/1; q1 = (1/3) / min(3, 2); q2 = 0
    assert out["map@3"] == pytest.approx((1 + 1 / 6 + 0) / 3)
    # nDCG@3: q0 = 1; q1 = (1/log2(4)) / (1 + 1/log2(3)); q2 = 0
    assert out["ndcg@3"] == pytest.approx((1 + 0.5 / (1 + 1 / math.log2(3))) / 3)
    assert out["num_queries"] == 3


def test_repeated_id_counts_once_and_short_lists_are_padded():
    # "b" twice: relevant at rank 1 only, so AP@3 = 1/min(3, 1) = 1, never above 1.
    assert map_at_k([["b", "b", "c"]], [{"b"}], 3) == 1.0
    assert ndcg_at_k([["b", "b", "c"]], [{"b", "c"}], 3) == pytest.approx(
        (1 + 1 / math.log2(4)) / (1 + 1 / math.log2(3))
    )
    # A 2-long list scored at K=10: the hit at rank 2 counts, the missing 8 are non-relevant.
    assert recall_at_k([["a", "b"]], [{"b"}], 10) == 1.0
    assert map_at_k([["a", "b"]], [{"b"}], 10) == pytest.approx(0.5)


def test_array_input_equals_list_input():
    ids = np.array([[3, 1, 2], [0, 5, 4]])
    positives = [{1}, {4, 9}]
    assert retrieval_metrics(ids, positives) == retrieval_metrics(ids.tolist(), positives)


def test_query_without_positive_raises_and_names_it():
    with pytest.raises(ValueError, match=r"query 1 \(id 'q-b'\) has no positive"):
        recall_at_k([[1], [2]], [{1}, set()], 1, query_ids=["q-a", "q-b"])
    with pytest.raises(ValueError, match="query 0 has no positive"):
        map_at_k([[1]], [[]], 1)


def test_runner_helper_sets_queries_without_positive_aside():
    retrieved = [["a", "b"], ["c", "d"], ["e", "f"]]
    positives = [{"b"}, set(), {"e"}]
    split = split_queries_without_positives(positives, ["q0", "q1", "q2"])
    assert split.keep.tolist() == [0, 2]
    assert split.dropped == ["q1"]
    assert split.num_dropped == 1
    out = score_rankings(retrieved, positives, query_ids=["q0", "q1", "q2"])
    assert out["num_queries"] == 2
    assert out["num_queries_without_positive"] == 1
    assert out["mrr"] == pytest.approx((1 / 2 + 1) / 2)
    with pytest.raises(ValueError, match="none of the 1 queries has a positive"):
        score_rankings([["a"]], [set()])


def test_bad_inputs_give_clear_errors():
    with pytest.raises(ValueError, match="retrieved has 2 queries but positives has 1"):
        recall_at_k([[1], [2]], [{1}], 1)
    with pytest.raises(ValueError, match="k must be a positive integer"):
        recall_at_k([[1]], [{1}], 0)
    with pytest.raises(TypeError, match="positives of query 0"):
        recall_at_k([[1]], ["abc"], 1)
    with pytest.raises(TypeError, match=r"retrieved\[0\] must be a list of ids"):
        recall_at_k([5], [{5}], 1)


def test_positives_from_labels():
    positives = positives_from_labels(["p1", "p2", "p9"], ["p1", "p2", "p1"], ["g0", "g1", "g2"])
    assert positives == [{"g0", "g2"}, {"g1"}, set()]
    with pytest.raises(ValueError, match="gallery_ids has 1 entries"):
        positives_from_labels(["p1"], ["p1", "p2"], ["g0"])


# ------------------------------------------------------------------------------ ties in ranking


# ----------------------------------------------------------- against independent implementations


def _random_problem(seed: int, q: int = 30, n: int = 40, max_pos: int = 6):
    """Continuous scores (no ties) and random positive sets over a gallery of ``n`` ids."""
    rng = np.random.default_rng(seed)
    scores = rng.standard_normal((q, n))
    y_true = np.zeros((q, n), dtype=int)
    for i in range(q):
        y_true[i, rng.choice(n, size=rng.integers(1, max_pos + 1), replace=False)] = 1
    ids = np.array([f"g{j}" for j in range(n)])
    positives = [set(ids[row == 1].tolist()) for row in y_true]
    return scores, y_true, ids, positives


@pytest.mark.parametrize("k", [1, 3, 5, 10, 40])
def test_ndcg_matches_sklearn(k):
    scores, y_true, ids, positives = _random_problem(seed=k)
    _, retrieved = rank_by_scores(scores, ids, k)
    # sklearn's ideal DCG@k also takes the min(k, #positives) best gains: same definition.
    assert ndcg_at_k(retrieved, positives, k) == pytest.approx(ndcg_score(y_true, scores, k=k))


def test_full_depth_map_matches_sklearn_average_precision():
    scores, y_true, ids, positives = _random_problem(seed=1)
    n = scores.shape[1]
    _, retrieved = rank_by_scores(scores, ids, n)
    # K = N: every positive is retrieved and min(K, #pos) = #pos, sklearn's normaliser.
    sk = np.mean([average_precision_score(t, s) for t, s in zip(y_true, scores, strict=True)])
    assert map_at_k(retrieved, positives, n) == pytest.approx(sk)


@pytest.mark.parametrize("k", [1, 5, 10])
def test_truncated_map_matches_sklearn_with_explicit_renormalisation(k):
    scores, y_true, ids, positives = _random_problem(seed=100 + k)
    _, retrieved = rank_by_scores(scores, ids, k)
    expected = []
    for t, s in zip(y_true, scores, strict=True):
        top = np.argsort(-s)[:k]
        hits = t[top].sum()
        # sklearn on the top-k alone divides by the hits found there; M5Product by min(k, #pos).
        ap = average_precision_score(t[top], s[top]) if hits else 0.0
        expected.append(ap * hits / min(k, t.sum()))
    assert map_at_k(retrieved, positives, k) == pytest.approx(np.mean(expected))


def test_single_positive_recall_and_mrr_match_sklearn():
    scores, _, ids, _ = _random_problem(seed=7, max_pos=1)
    rng = np.random.default_rng(7)
    target = rng.integers(0, scores.shape[1], size=scores.shape[0])
    positives = [{ids[t]} for t in target]
    _, retrieved = rank_by_scores(scores, ids, scores.shape[1])
    for k in (1, 5, 10):
        sk = top_k_accuracy_score(target, scores, k=k, labels=np.arange(scores.shape[1]))
        assert recall_at_k(retrieved, positives, k) == pytest.approx(sk)
    # With one positive and the full ranking, AP = 1 / rank = the reciprocal rank.
    one_hot = np.eye(scores.shape[1], dtype=int)[target]
    sk_ap = np.mean([average_precision_score(t, s) for t, s in zip(one_hot, scores, strict=True)])
    assert mrr(retrieved, positives) == pytest.approx(sk_ap)


def _slow_reference(retrieved, positives, k):
    """The definitions written as plain loops (repeated ids count once)."""
    recall = ap_sum = rr_sum = ndcg_sum = 0.0
    for ranking, pos in zip(retrieved, positives, strict=True):
        seen, rels = set(), []
        for item in ranking:
            rels.append(item in pos and item not in seen)
            seen.add(item)
        recall += any(rels[:k])
        hits, ap = 0, 0.0
        for i, rel in enumerate(rels[:k]):
            if rel:
                hits += 1
                ap += hits / (i + 1)
        ap_sum += ap / min(k, len(pos))
        rr_sum += next((1 / (i + 1) for i, rel in enumerate(rels) if rel), 0.0)
        dcg = sum(1 / math.log2(i + 2) for i, rel in enumerate(rels[:k]) if rel)
        ideal = sum(1 / math.log2(i + 2) for i in range(min(k, len(pos))))
        ndcg_sum += dcg / ideal
    q = len(retrieved)
    return recall / q, ap_sum / q, rr_sum / q, ndcg_sum / q


@settings(max_examples=80, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.lists(st.integers(0, 12), min_size=0, max_size=15),  # ranking, repeats allowed
            st.sets(st.integers(0, 12), min_size=1, max_size=6),  # positives
        ),
        min_size=1,
        max_size=8,
    ),
    st.integers(1, 16),
)
def test_metrics_match_slow_reference(queries, k):
    retrieved = [r for r, _ in queries]
    positives = [p for _, p in queries]
    recall, ap, rr, ndcg = _slow_reference(retrieved, positives, k)
    assert recall_at_k(retrieved, positives, k) == pytest.approx(recall)
    assert map_at_k(retrieved, positives, k) == pytest.approx(ap)
    assert mrr(retrieved, positives) == pytest.approx(rr)
    assert ndcg_at_k(retrieved, positives, k) == pytest.approx(ndcg)
    rel, num_pos = relevance_matrix(retrieved, positives)
    assert (rel.sum(axis=1) <= num_pos).all()


# ---------------------------------------------------------------------------- attribute metrics


def test_attribute_metrics_by_hand():
    predictions = [
        "category: shoe; colour: navy",  # both right
        "colour: red; count: 3",  # colour wrong, count extra (gold has none), pattern missing
        "not an attribute string",  # invalid, nothing parsed
    ]
    gold = [
        {"category": "shoe", "colour": "navy"},
        {"colour": "green", "pattern": "striped"},
        {"colour": "black"},
    ]
    out = attribute_metrics(predictions, gold)
    assert out["valid_rate"] == pytest.approx(2 / 3)
    # predicted pairs 4, gold pairs 5, correct 2
    assert out["precision"] == pytest.approx(2 / 4)
    assert out["recall"] == pytest.approx(2 / 5)
    assert out["f1"] == pytest.approx(2 * 0.5 * 0.4 / 0.9)
    # colour: right once in 3 gold; predicted (right or wrong) in 2 of 3
    assert out["accuracy/colour"] == pytest.approx(1 / 3)
    assert out["coverage/colour"] == pytest.approx(2 / 3)
    # pattern: missing from the prediction counts as wrong
    assert out["accuracy/pattern"] == 0.0
    assert out["coverage/pattern"] == 0.0
    assert out["support/pattern"] == 1
    assert "accuracy/count" not in out  # no gold has it


def test_attribute_metrics_normalise_both_sides():
    # synonyms, case and key spelling: 'Color: Dark Blue' is 'colour: navy'
    out = attribute_metrics(
        [({"Color": "Dark Blue"}, True), "Pattern: Stripes"],
        ["colour: navy", {"pattern": "striped"}],
        keys=["colour", "color", "count"],
    )
    assert out["f1"] == 1.0
    assert out["accuracy/colour"] == 1.0
    assert out["support/count"] == 0
    assert out["accuracy/count"] == 0.0


def test_attribute_micro_scores_match_sklearn():
    rng = np.random.default_rng(3)
    keys, values = ["colour", "pattern", "count", "brand"], ["a", "b", "c"]
    preds, golds = [], []
    for _ in range(50):
        golds.append({k: str(rng.choice(values)) for k in keys if rng.random() < 0.7})
        preds.append({k: str(rng.choice(values)) for k in keys if rng.random() < 0.6})
    out = attribute_metrics([(p, True) for p in preds], golds)
    binarizer = MultiLabelBinarizer().fit([set(d.items()) for d in preds + golds])
    y_true = binarizer.transform([set(d.items()) for d in golds])
    y_pred = binarizer.transform([set(d.items()) for d in preds])
    p, r, f, _ = precision_recall_fscore_support(y_true, y_pred, average="micro")
    assert (out["precision"], out["recall"], out["f1"]) == pytest.approx((p, r, f))


def test_attribute_metrics_bad_input():
    with pytest.raises(ValueError, match=r"references\[1\] is not a well-formed attribute string"):
        attribute_metrics(["colour: red", "colour: red"], ["colour: red", "garbage"])
    with pytest.raises(TypeError, match=r"predictions\[0\] must be the generated text"):
        attribute_metrics([{"colour": "red"}], ["colour: red"])
    with pytest.raises(ValueError, match="predictions has 1 entries but references has 2"):
        attribute_metrics(["colour: red"], ["colour: red", "colour: blue"])


# ------------------------------------------------------------------------ evaluate modules


@pytest.fixture(scope="module")
def metrics():
    from afmrl.evaluation.modules import load_metric

    return load_metric("retrieval"), load_metric("attribute_extraction")


def test_evaluate_modules_load_offline_and_agree_with_numpy(metrics):
    retrieval, attributes = metrics
    scores, _, ids, positives = _random_problem(seed=11)
    _, retrieved = rank_by_scores(scores, ids, 10)
    out = retrieval.compute(
        predictions=retrieved.tolist(), references=[sorted(p) for p in positives]
    )
    assert set(out) == {
        "recall@1",
        "recall@5",
        "recall@10",
        "map@10",
        "mrr",
        "ndcg@10",
        "true_recall@10",
        "num_queries",
    }
    assert out == pytest.approx(retrieval_metrics(retrieved, positives))
    # int ids work too, and extra K values come through as flat keys
    out = retrieval.compute(predictions=[[3, 1], [2, 4]], references=[[1], [9, 2]], recall_ks=[2])
    assert out["recall@2"] == 1.0
    assert out["mrr"] == pytest.approx((1 / 2 + 1) / 2)
    # true recall: query 2 finds one of its two positives -> (1 + 1/2) / 2, while its hit rate is 1
    assert out["true_recall@10"] == pytest.approx(0.75)
    with pytest.raises(ValueError, match="query 1 has no positive"):
        retrieval.compute(predictions=[[1], [2]], references=[[1], []])
    out = retrieval.compute(
        predictions=[[1], [2]], references=[[1], []], drop_queries_without_positive=True
    )
    assert (out["num_queries"], out["num_queries_without_positive"]) == (1, 1)

    out = attributes.compute(
        predictions=["colour: navy; count: 2", "junk"], references=["colour: dark blue", "count: 1"]
    )
    assert out["valid_rate"] == 0.5
    assert out["precision"] == pytest.approx(1 / 2)
    assert out["accuracy/colour"] == 1.0
    assert out["accuracy/count"] == 0.0
