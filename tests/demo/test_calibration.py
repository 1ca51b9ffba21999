"""Calibration: scikit-learn fits, the JSON file reproduces them exactly, the threshold and the
reliability numbers are what their definitions say, and broken files are refused in one line."""

from __future__ import annotations

import json

import numpy as np
import pytest

from afmrl.errors import UserError
from afmrl.evaluation.calibration import (
    CALIBRATION_FILE,
    Calibrator,
    best_f1_threshold,
    expected_calibration_error,
    fit_calibrator,
    reliability,
)


def _pairs(n: int = 4000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Cosine-like scores: positives around 0.8, negatives around 0.5 (10% positives)."""
    rng = np.random.default_rng(seed)
    labels = (rng.random(n) < 0.1).astype(int)
    scores = np.where(labels, rng.normal(0.8, 0.08, n), rng.normal(0.5, 0.12, n))
    return np.clip(scores, -1, 1), labels


def test_isotonic_file_reproduces_sklearn(tmp_path):
    from sklearn.isotonic import IsotonicRegression

    s, y = _pairs()
    calibrator = fit_calibrator(s, y, "isotonic")
    reference = IsotonicRegression(y_min=0, y_max=1, out_of_bounds="clip").fit(s, y)
    grid = np.linspace(-1.2, 1.2, 1001)  # beyond the fitted range too (clipped)
    calibrator.save(tmp_path)
    loaded = Calibrator.load(tmp_path / CALIBRATION_FILE)
    np.testing.assert_allclose(loaded.probability(grid), reference.predict(grid), atol=1e-12)
    assert np.all(np.diff(loaded.probability(grid)) >= 0)  # monotone
    assert loaded.threshold == calibrator.threshold


def test_platt_file_reproduces_sklearn(tmp_path):
    from sklearn.linear_model import LogisticRegression

    s, y = _pairs(seed=1)
    calibrator = fit_calibrator(s, y, "platt")
    reference = LogisticRegression(C=np.inf, max_iter=1000).fit(s[:, None], y)
    grid = np.linspace(-1, 1, 101)
    loaded = Calibrator.from_json(json.loads(json.dumps(calibrator.to_json())))
    np.testing.assert_allclose(
        loaded.probability(grid), reference.predict_proba(grid[:, None])[:, 1], atol=1e-9
    )


def test_file_is_plain_json_with_the_threshold(tmp_path):
    s, y = _pairs()
    fit_calibrator(s, y, "isotonic", encoding={"attributes": "generated"}).save(tmp_path)
    text = (tmp_path / CALIBRATION_FILE).read_text()
    obj = json.loads(text)  # standard JSON, nothing pickled
    assert obj["format"] == "afmrl-calibration" and obj["method"] == "isotonic"
    assert set(obj["params"]) == {"x", "y"} and 0 <= obj["threshold"] <= 1
    assert obj["encoding"] == {"attributes": "generated"}
    assert not list(tmp_path.glob(".tmp-*"))  # written atomically, nothing left behind


@pytest.mark.parametrize("method", ["isotonic", "platt"])
def test_score_threshold_matches_the_decision(method):
    s, y = _pairs(seed=2)
    calibrator = fit_calibrator(s, y, method)
    cut = calibrator.score_threshold
    assert calibrator.is_identical(cut + 1e-6)
    assert not calibrator.is_identical(cut - 1e-3)


def test_best_f1_threshold_by_hand():
    # probabilities 0.9, 0.8, 0.3, 0.2 for labels 1, 0, 1, 0:
    # t=0.9: P=1, R=.5, F1=.667; t=0.8: P=.5, R=.5, F1=.5; t=0.3: P=.667, R=1, F1=.8; t=0.2: .667
    assert best_f1_threshold(np.array([0.9, 0.8, 0.3, 0.2]), np.array([1, 0, 1, 0])) == 0.3
    # a tie between thresholds goes to the higher (more precise) one
    assert best_f1_threshold(np.array([0.9, 0.1]), np.array([1, 0])) == 0.9
    assert best_f1_threshold(np.array([0.4, 0.6]), np.array([0, 0])) == 0.5  # no positive


def test_expected_calibration_error_by_hand():
    # one bin at 0.2 holding 10 pairs with 2 positives: perfectly calibrated
    assert expected_calibration_error(
        np.full(10, 0.2), np.array([1, 1] + [0] * 8)
    ) == pytest.approx(0, abs=1e-12)
    # bin [0.93, 1]: p=0.95 for 4 pairs, 2 positive -> |0.5 - 0.95| weighted 4/8; bin at 0.05 for
    # 4 pairs, 0 positive -> |0 - 0.05| weighted 4/8
    p = np.array([0.95] * 4 + [0.05] * 4)
    y = np.array([1, 1, 0, 0, 0, 0, 0, 0])
    assert expected_calibration_error(p, y) == pytest.approx(0.5 * 0.45 + 0.5 * 0.05)
    assert expected_calibration_error(np.array([1.0]), np.array([1])) == 0  # 1.0 in the last bin


def test_reliability_counts():
    calibrator = Calibrator("platt", {"coef": 10.0, "intercept": -5.0}, threshold=0.5)
    scores = np.array([0.9, 0.7, 0.4, 0.1])  # p > .5 for the first two
    r = reliability(calibrator, scores, np.array([1, 0, 1, 0]))
    assert (r["pairs"], r["positives"], r["called_identical"]) == (4, 2, 2)
    assert r["precision"] == 0.5 and r["recall"] == 0.5 and r["f1"] == 0.5


@pytest.mark.parametrize(
    "content",
    [
        "not json",
        json.dumps({"format": "something-else", "version": 1}),
        json.dumps({"format": "afmrl-calibration", "version": 1, "method": "magic",
                    "params": {}, "threshold": 0.5}),
        json.dumps({"format": "afmrl-calibration", "version": 1, "method": "isotonic",
                    "params": {"x": [0.5, 0.1], "y": [0, 1]}, "threshold": 0.5}),
        json.dumps({"format": "afmrl-calibration", "version": 1, "method": "platt",
                    "params": {"coef": 1.0, "intercept": 0.0}, "threshold": 2}),
    ],
)  # fmt: skip
def test_unusable_file_is_one_line_user_error(tmp_path, content):
    path = tmp_path / CALIBRATION_FILE
    path.write_text(content)
    with pytest.raises(UserError) as err:
        Calibrator.load(path)
    assert str(path) in str(err.value) and "\n" not in str(err.value)
