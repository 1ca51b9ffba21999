"""``rank_by_scores``: the exact top-K with ties broken by gallery order."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from afmrl.retrieval.ranking import rank_by_scores


def test_rank_by_scores_breaks_ties_by_gallery_order():
    scores = np.array([0.5, 0.9, 0.9, 0.1, 0.9])
    top_scores, top_ids = rank_by_scores(scores, ["a", "b", "c", "d", "e"], k=2)
    # three items tie at 0.9: the two earliest in the gallery (b, c) make the cut, in order
    assert top_ids.tolist() == ["b", "c"]
    assert top_scores.tolist() == [0.9, 0.9]
    _, top_ids = rank_by_scores(scores, ["a", "b", "c", "d", "e"], k=10)  # k > N: clipped
    assert top_ids.tolist() == ["b", "c", "e", "a", "d"]


@settings(max_examples=60, deadline=None)
@given(
    st.integers(1, 6),
    st.integers(1, 40),
    st.integers(1, 45),
    st.integers(0, 2**31 - 1),
)
def test_rank_by_scores_equals_a_stable_full_sort(q, n, k, seed):
    # Integer scores from a small range: lots of ties, at the cut and inside the list.
    scores = np.random.default_rng(seed).integers(0, 4, size=(q, n)).astype(np.float32)
    top_scores, top_pos = rank_by_scores(scores, None, k)
    reference = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    np.testing.assert_array_equal(top_pos, reference)
    np.testing.assert_array_equal(top_scores, np.take_along_axis(scores, reference, axis=1))


def test_rank_by_scores_rejects_nan_and_bad_ids():
    with pytest.raises(ValueError, match="scores of query 1 contain NaN"):
        rank_by_scores(np.array([[1.0, 2.0], [np.nan, 0.0]]), None, 1)
    with pytest.raises(ValueError, match="one id per gallery column"):
        rank_by_scores(np.zeros((1, 3)), ["a", "b"], 1)
