"""Calibrated "identical" probabilities for cosine scores, fitted on the validation split.

A cosine of 0.83 between two listings means nothing to a user; "the same product with probability
0.9" does. The demo's Compare tab reports that probability and its Search tab marks the candidates
that pass the "identical" threshold; both read ``calibration.json`` in the checkpoint folder, which
:func:`calibrate_model` writes (``afmrl calibrate``).

**Pairs.** Each validation query with its top-K gallery candidates (``candidates``, default 10;
exact search over the validation gallery), scored by the cosine of their listing embeddings:
positive when the ``product_id`` matches, negative otherwise -- mostly the same family's
near-identical twins (the hard negatives the task is about), plus whatever else ranks that high.
That is the population the demo asks about: the candidates a search shows, and pairs a user
suspects to be identical. A probability therefore answers "how often is a candidate with this
score the same product". ``candidates=None`` scores every (query, gallery) pair instead, whose
base rate is far lower (a few positives among hundreds of listings) and whose low scores are
trivially right; the numbers are then near zero by construction and say little.

**Methods.** scikit-learn fits them (nothing hand-written): ``isotonic`` (default;
``IsotonicRegression``, monotone and non-parametric) or ``platt`` (``LogisticRegression`` on the
score). No pickles: ``calibration.json`` stores the fitted isotonic breakpoints
(``X_thresholds_`` / ``y_thresholds_``; applying them is the clipped linear interpolation that
``IsotonicRegression.predict`` does) or Platt's coefficient and intercept (``sigmoid(a * s + b)``).
Applying a stored calibration needs numpy only, so a Space does not need scikit-learn.

**Threshold.** The probability that maximises F1 over the validation pairs (ties: the higher
threshold, i.e. the more precise decision). The test split never chooses anything: with
``test=True`` it is only scored -- expected calibration error (ECE, 15 equal-width bins), Brier
score, precision and recall at the threshold -- and the numbers are stored for the record.

The file also records how the scores were made (modality, attribute source, generation budget)
and the model's fingerprint, so a reader can tell whether it fits the weights it sits beside.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from afmrl.errors import UserError, one_line
from afmrl.io import write_json_atomic

if TYPE_CHECKING:
    from datasets import Dataset

CALIBRATION_FILE = "calibration.json"
FORMAT_NAME = "afmrl-calibration"
FORMAT_VERSION = 1
METHODS: tuple[str, ...] = ("isotonic", "platt")
#: Bins of the expected calibration error (equal width over [0, 1]).
ECE_BINS = 15
#: Pairs scored per validation query: its top-K gallery candidates (what the demo shows).
DEFAULT_CANDIDATES = 10
#: With every pair scored (``candidates=None``), above this many a subset of the queries is used.
DEFAULT_MAX_PAIRS = 4_000_000


@dataclass
class Calibrator:
    """Maps cosine scores to P(identical) and decides "identical" at ``threshold``.

    Attributes:
        method: ``isotonic`` or ``platt``.
        params: isotonic ``{"x": [...], "y": [...]}`` breakpoints (x increasing) or Platt
            ``{"coef": a, "intercept": b}``.
        threshold: the probability at or above which a pair is called identical.
        meta: how the scores were made and what the fit saw (stored alongside, not used here).
    """

    method: str
    params: dict[str, Any]
    threshold: float
    meta: dict[str, Any] = field(default_factory=dict)

    def probability(self, scores: np.ndarray | Sequence[float] | float) -> np.ndarray:
        """P(identical) for cosine ``scores`` (any shape; the same shape back, float64)."""
        s = np.asarray(scores, dtype=np.float64)
        if self.method == "isotonic":
            x, y = np.asarray(self.params["x"], float), np.asarray(self.params["y"], float)
            return np.interp(s, x, y)  # clipped at both ends, like out_of_bounds="clip"
        z = self.params["coef"] * s + self.params["intercept"]
        return 1.0 / (1.0 + np.exp(-z))

    def is_identical(self, scores: np.ndarray | Sequence[float] | float) -> np.ndarray:
        """``probability(scores) >= threshold`` (bool, same shape as ``scores``)."""
        return self.probability(scores) >= self.threshold

    @property
    def score_threshold(self) -> float:
        """The lowest cosine called identical (``inf`` when none is), for display."""
        if self.method == "platt":
            a, b = self.params["coef"], self.params["intercept"]
            t = min(max(self.threshold, 1e-12), 1 - 1e-12)
            return (math.log(t / (1 - t)) - b) / a if a > 0 else math.inf
        x, y = np.asarray(self.params["x"], float), np.asarray(self.params["y"], float)
        above = np.flatnonzero(y >= self.threshold)
        if not len(above):
            return math.inf
        i = int(above[0])
        if i == 0 or y[i] == y[i - 1]:
            return float(x[i])
        # the interpolation crosses the threshold between breakpoints i-1 and i
        return float(x[i - 1] + (self.threshold - y[i - 1]) * (x[i] - x[i - 1]) / (y[i] - y[i - 1]))

    # ---------------------------------------------------------------------------- JSON file

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT_NAME,
            "version": FORMAT_VERSION,
            "method": self.method,
            "params": self.params,
            "threshold": self.threshold,
            "score_threshold": _finite_or_none(self.score_threshold),
            **self.meta,
        }

    @classmethod
    def from_json(cls, obj: Any, name: str = CALIBRATION_FILE) -> Calibrator:
        """Read :meth:`to_json` output; anything else is a one-line :class:`UserError`."""
        try:
            if obj.get("format") != FORMAT_NAME or obj.get("version") != FORMAT_VERSION:
                raise ValueError(f"not an {FORMAT_NAME} v{FORMAT_VERSION} file")
            method, params = obj["method"], obj["params"]
            threshold = float(obj["threshold"])
            if method == "isotonic":
                x, y = np.asarray(params["x"], float), np.asarray(params["y"], float)
                if x.ndim != 1 or x.shape != y.shape or len(x) < 1 or np.any(np.diff(x) < 0):
                    raise ValueError(
                        "isotonic breakpoints must be two equal-length lists, x sorted"
                    )
                if not (np.isfinite(x).all() and np.isfinite(y).all()):
                    raise ValueError("isotonic breakpoints must be finite")
                params = {"x": x.tolist(), "y": y.tolist()}
            elif method == "platt":
                params = {"coef": float(params["coef"]), "intercept": float(params["intercept"])}
                if not all(math.isfinite(v) for v in params.values()):
                    raise ValueError("Platt coefficients must be finite")
            else:
                raise ValueError(f"unknown method {method!r} (expected one of {METHODS})")
            if not 0 <= threshold <= 1:
                raise ValueError(f"threshold {threshold} is not a probability")
        except (AttributeError, KeyError, TypeError, ValueError) as err:
            raise UserError(f"{name}: not a usable calibration ({one_line(err)})") from err
        skip = {"format", "version", "method", "params", "threshold", "score_threshold"}
        return cls(method, params, threshold, {k: v for k, v in obj.items() if k not in skip})

    def save(self, folder: str | os.PathLike) -> Path:
        """Write ``folder/calibration.json`` atomically; returns its path."""
        path = Path(folder) / CALIBRATION_FILE
        write_json_atomic(path, self.to_json())
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> Calibrator:
        """Read a ``calibration.json`` file (a one-line :class:`UserError` when unusable)."""
        try:
            obj = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise UserError(f"{path}: cannot read the calibration ({one_line(err)})") from err
        return cls.from_json(obj, name=str(path))


# ---------------------------------------------------------------------------------- fitting


def fit_calibrator(
    scores: np.ndarray, labels: np.ndarray, method: str = "isotonic", **meta: Any
) -> Calibrator:
    """Fit ``method`` on ``scores`` ``[P]`` (cosines) with ``labels`` ``[P]`` (1 = identical), then
    choose the threshold that maximises F1 on the same pairs (:func:`best_f1_threshold`)."""
    s, y = _check_pairs(scores, labels)
    if method == "isotonic":
        from sklearn.isotonic import IsotonicRegression

        iso = IsotonicRegression(y_min=0.0, y_max=1.0, increasing=True, out_of_bounds="clip")
        iso.fit(s, y)
        params = {"x": iso.X_thresholds_.tolist(), "y": iso.y_thresholds_.tolist()}
    elif method == "platt":
        from sklearn.linear_model import LogisticRegression

        # Unregularised (C=inf): one feature, thousands of pairs; shrinking the slope would only
        # flatten the probabilities.
        lr = LogisticRegression(C=np.inf, max_iter=1000).fit(s[:, None], y)
        params = {"coef": float(lr.coef_[0, 0]), "intercept": float(lr.intercept_[0])}
    else:
        raise ValueError(f"method must be one of {list(METHODS)}, got {method!r}")
    calibrator = Calibrator(method, params, 0.5, dict(meta))
    calibrator.threshold = best_f1_threshold(calibrator.probability(s), y)
    return calibrator


def best_f1_threshold(probabilities: np.ndarray, labels: np.ndarray) -> float:
    """The probability threshold (one of the predicted values) with the best F1 on these pairs;
    ties go to the higher threshold. 0.5 when there is no positive."""
    p, y = _check_pairs(probabilities, labels)
    if not y.any():
        return 0.5
    values, inverse = np.unique(p, return_inverse=True)  # ascending
    pos = np.bincount(inverse, weights=y, minlength=len(values))
    cnt = np.bincount(inverse, minlength=len(values)).astype(float)
    tp = np.cumsum(pos[::-1])[::-1]  # predicted identical at threshold values[i]: p >= values[i]
    predicted = np.cumsum(cnt[::-1])[::-1]
    f1 = 2 * tp / (predicted + y.sum())
    best = np.flatnonzero(f1 >= f1.max() - 1e-12)[-1]
    return float(values[best])


# -------------------------------------------------------------------------------- reliability


def expected_calibration_error(
    probabilities: np.ndarray, labels: np.ndarray, n_bins: int = ECE_BINS
) -> float:
    """ECE: the pair-weighted mean of |observed frequency - mean probability| over ``n_bins``
    equal-width probability bins (empty bins skipped; 1.0 falls in the last bin)."""
    p, y = _check_pairs(probabilities, labels)
    bins = np.minimum((p * n_bins).astype(int), n_bins - 1)
    count = np.bincount(bins, minlength=n_bins)
    conf = np.bincount(bins, weights=p, minlength=n_bins)
    freq = np.bincount(bins, weights=y, minlength=n_bins)
    used = count > 0
    return float(np.abs(freq[used] - conf[used]).sum() / len(p))


def reliability(calibrator: Calibrator, scores: np.ndarray, labels: np.ndarray) -> dict[str, Any]:
    """ECE, Brier score, precision / recall / F1 at the calibrator's threshold, and counts."""
    s, y = _check_pairs(scores, labels)
    p = calibrator.probability(s)
    called = p >= calibrator.threshold
    tp = int((called & (y == 1)).sum())
    precision = tp / called.sum() if called.any() else float("nan")
    recall = tp / y.sum() if y.any() else float("nan")
    f1 = 2 * tp / (called.sum() + y.sum()) if (called.any() or y.any()) else float("nan")
    return {
        "pairs": len(y),
        "positives": int(y.sum()),
        "ece": expected_calibration_error(p, y),
        "brier": float(np.mean((p - y) ** 2)),
        "precision": float(precision),
        "recall": float(recall),
        "f1": float(f1),
        "called_identical": int(called.sum()),
    }


# ------------------------------------------------------------------------------ split pairs


@dataclass
class PairScores:
    """Scored (query, gallery) pairs of a split, flattened: cosine ``scores`` ``[P]``, ``labels``
    (1 = same product) and ``same_family`` (1 = same family, i.e. identical or a near-identical
    twin; ``None`` without ``family_id`` columns)."""

    scores: np.ndarray
    labels: np.ndarray
    same_family: np.ndarray | None
    queries: int
    gallery: int
    population: str


def split_pair_scores(
    model: Any,
    query_ds: Dataset,
    gallery_ds: Dataset,
    *,
    candidates: int | None = DEFAULT_CANDIDATES,
    attributes: str = "none",
    batch_size: int = 32,
    max_new_tokens: int = 64,
    max_pairs: int = DEFAULT_MAX_PAIRS,
    seed: int = 0,
    cache_dir: str | os.PathLike | None = None,
    show_progress: bool = True,
    split_names: tuple[str, str] = ("query", "gallery"),
) -> PairScores:
    """Encode both sides as listings (photo + title [+ ``attributes``], as the demo and ``afmrl
    evaluate`` encode them) and score pairs by cosine: each query's top ``candidates`` gallery
    listings (exact search), or every pair when ``candidates`` is ``None`` / 0 (then at most
    ``max_pairs``, by a seeded subset of the queries)."""
    from afmrl.evaluation.runner import side_embeddings
    from afmrl.retrieval.index import RetrievalIndex

    for ds, name in ((query_ds, split_names[0]), (gallery_ds, split_names[1])):
        if "product_id" not in ds.column_names:
            raise UserError(f"split {name!r} has no 'product_id' column; found {ds.column_names}")
    if not candidates and len(query_ds) * len(gallery_ds) > max_pairs:
        keep = max(1, max_pairs // len(gallery_ds))
        rows = np.sort(np.random.default_rng(seed).choice(len(query_ds), keep, replace=False))
        query_ds = query_ds.select(rows.tolist())
    q, g = (
        side_embeddings(
            model,
            ds,
            "listing",
            None,
            name,
            attributes=attributes,
            name="calibrate",
            batch_size=batch_size,
            cache_dir=cache_dir,
            show_progress=show_progress,
            max_new_tokens=max_new_tokens,
        )
        for ds, name in ((query_ds, split_names[0]), (gallery_ds, split_names[1]))
    )  # [Q, D], [G, D], L2-normalised: inner product = cosine
    if candidates:
        index = RetrievalIndex.build(g, np.arange(len(g)), "flat")
        scores, cols = index.search(q, k=min(int(candidates), len(g)))  # [Q, k] each
        rows = np.repeat(np.arange(len(q)), scores.shape[1])
        scores, cols = scores.ravel(), cols.ravel()
        population = f"each query's top {scores.size // len(q)} gallery candidates"
    else:
        scores = (q @ g.T).ravel()  # [Q * G]
        rows, cols = np.divmod(np.arange(scores.size), len(g))
        population = "every (query, gallery) pair"

    def column(ds: Dataset, name: str) -> np.ndarray:
        return np.asarray([str(v) for v in ds[name]], dtype=object)

    labels = column(query_ds, "product_id")[rows] == column(gallery_ds, "product_id")[cols]
    family = None
    if "family_id" in query_ds.column_names and "family_id" in gallery_ds.column_names:
        family = column(query_ds, "family_id")[rows] == column(gallery_ds, "family_id")[cols]
    return PairScores(
        np.asarray(scores, dtype=np.float64),
        labels.astype(np.int64),
        None if family is None else family.astype(np.int64),
        len(query_ds),
        len(gallery_ds),
        population,
    )


def calibrate_model(
    model: Any,
    data: str | os.PathLike,
    *,
    method: str = "isotonic",
    attributes: str = "none",
    candidates: int | None = DEFAULT_CANDIDATES,
    test: bool = False,
    columns: dict[str, str] | None = None,
    batch_size: int = 32,
    max_new_tokens: int = 64,
    max_pairs: int = DEFAULT_MAX_PAIRS,
    cache_dir: str | os.PathLike | None = None,
    show_progress: bool = True,
    describe: dict[str, Any] | None = None,
) -> tuple[Calibrator, dict[str, Any]]:
    """Fit a calibrator on ``data``'s validation pairs (and score it on the test pairs when
    ``test``). Returns the calibrator (with its metadata) and ``{"validation": ..., "test": ...}``
    reliability numbers; saving is the caller's choice (:meth:`Calibrator.save`)."""
    from afmrl.evaluation.runner import load_eval_splits
    from afmrl.models import model_fingerprint

    if method not in METHODS:
        raise UserError(f"--method must be one of {list(METHODS)}, got {method!r}")
    options = {
        "candidates": candidates,
        "attributes": attributes,
        "batch_size": batch_size,
        "max_new_tokens": max_new_tokens,
        "max_pairs": max_pairs,
        "show_progress": show_progress,
    }
    q, g = load_eval_splits(data, "validation", columns)
    val = split_pair_scores(
        model,
        q,
        g,
        split_names=("validation_query", "validation_gallery"),
        cache_dir=cache_dir,
        **options,
    )
    if not val.labels.any():
        raise UserError(f"{data}: the validation split has no (query, gallery) pair of one product")
    meta = {
        "encoding": {
            "modality": "listing",
            "attributes": attributes,
            "max_new_tokens": max_new_tokens if attributes == "generated" else None,
        },
        "model_fingerprint": model_fingerprint(model),
        "fitted_on": {
            **dict(describe or {}),
            "split": "validation",
            "queries": val.queries,
            "gallery": val.gallery,
            "pairs": len(val.labels),
            "positives": int(val.labels.sum()),
            "population": val.population,
            "threshold_rule": "best F1 on the validation pairs",
        },
    }
    calibrator = fit_calibrator(val.scores, val.labels, method, **meta)
    results = {"validation": _scored(calibrator, val)}
    if test:
        q, g = load_eval_splits(data, "test", columns)
        results["test"] = _scored(
            calibrator, split_pair_scores(model, q, g, cache_dir=cache_dir, **options)
        )
    calibrator.meta.update(results)
    return calibrator, results


def _scored(calibrator: Calibrator, pairs: PairScores) -> dict[str, Any]:
    """Reliability on all pairs, and on the same-family pairs (identical vs near-identical)."""
    out = reliability(calibrator, pairs.scores, pairs.labels)
    if pairs.same_family is not None and pairs.same_family.any():
        hard = pairs.same_family.astype(bool)
        out["same_family"] = reliability(calibrator, pairs.scores[hard], pairs.labels[hard])
    return _json_safe(out)


def _json_safe(obj: Any) -> Any:
    """NaN / inf -> None, so the file stays standard JSON."""
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def _check_pairs(values: Any, labels: Any) -> tuple[np.ndarray, np.ndarray]:
    v = np.asarray(values, dtype=np.float64).ravel()
    y = np.asarray(labels).ravel().astype(np.int64)
    if v.shape != y.shape or not len(v):
        raise ValueError(f"need as many values as labels (got {v.shape} and {y.shape}), at least 1")
    if not np.isfinite(v).all():
        raise ValueError("scores must be finite")
    if not np.isin(y, (0, 1)).all():
        raise ValueError("labels must be 0 or 1")
    return v, y


def _finite_or_none(value: float) -> float | None:
    return value if math.isfinite(value) else None


__all__ = [
    "CALIBRATION_FILE",
    "METHODS",
    "Calibrator",
    "PairScores",
    "best_f1_threshold",
    "calibrate_model",
    "expected_calibration_error",
    "fit_calibrator",
    "reliability",
    "split_pair_scores",
]
