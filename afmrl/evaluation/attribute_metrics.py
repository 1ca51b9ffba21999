"""Attribute-extraction scores: per-key accuracy and coverage, micro P/R/F1, valid-format rate.

A prediction is the extractor's raw text (parsed here with
:func:`modeling_afmrl.attributes.parse_attributes`) or what that parser returned, a
``(dict, valid)`` pair. A reference is a gold dict or a gold attribute string. Both sides are
normalised with the same :func:`~modeling_afmrl.attributes.normalize_attributes`, so ``Color: Navy
Blue`` matches ``colour: navy``.

- ``accuracy/<key>``: over the examples whose gold has ``key``, the fraction whose prediction has
  the same value (a key missing from the prediction counts as wrong).
- ``coverage/<key>``: over the same examples, the fraction whose prediction has the key at all.
- ``accuracy``: the same pooled over every gold (key, value) pair (equals micro recall).
- ``precision`` / ``recall`` / ``f1``: micro over (key, value) pairs; 0.0 when undefined.
- ``valid_rate``: fraction of predictions that are well-formed attribute strings.

Pure Python (standard library + the attribute format module).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from modeling_afmrl.attributes import normalize_attributes, normalize_key, parse_attributes

#: A prediction: raw generated text, or ``parse_attributes``' ``(dict, valid)``.
Prediction = str | tuple[Mapping[str, str], bool]
#: A reference: gold attributes as a dict or as a well-formed attribute string.
Reference = Mapping[str, str] | str


def _prediction(pred: object, i: int) -> tuple[dict[str, str], bool]:
    if isinstance(pred, str):
        parsed = parse_attributes(pred)
        return parsed.attributes, parsed.valid
    if (
        isinstance(pred, tuple)
        and len(pred) == 2
        and isinstance(pred[0], Mapping)
        and isinstance(pred[1], bool)
    ):
        return normalize_attributes(pred[0]), pred[1]
    raise TypeError(
        f"predictions[{i}] must be the generated text or parse_attributes()'s (dict, valid) pair, "
        f"got {type(pred).__name__}"
    )


def _reference(ref: object, i: int) -> dict[str, str]:
    if isinstance(ref, str):
        parsed = parse_attributes(ref)
        if not parsed.valid:
            raise ValueError(f"references[{i}] is not a well-formed attribute string: {ref!r}")
        return parsed.attributes
    if isinstance(ref, Mapping):
        return normalize_attributes(ref)
    raise TypeError(
        f"references[{i}] must be a dict or an attribute string, got {type(ref).__name__}"
    )


def _ratio(num: float, den: float) -> float:
    return num / den if den else 0.0


def attribute_metrics(
    predictions: Sequence[Prediction],
    references: Sequence[Reference],
    keys: Sequence[str] | None = None,
) -> dict[str, float]:
    """Score extracted attributes against gold ones (flat keys; see the module docstring).

    Args:
        predictions: one per example, raw text or ``(dict, valid)``.
        references: one gold dict or gold string per example.
        keys: the keys to report ``accuracy/<key>`` and ``coverage/<key>`` for (default: every
            key seen in the references, sorted). A listed key that no reference has reports 0.0
            with ``support/<key>`` 0.

    Returns:
        ``valid_rate, precision, recall, f1, accuracy, num_examples`` and, per key,
        ``accuracy/<key>, coverage/<key>, support/<key>``.
    """
    if isinstance(predictions, str) or isinstance(references, str):
        raise TypeError("predictions and references must be lists (one entry per example)")
    if len(predictions) != len(references):
        raise ValueError(
            f"predictions has {len(predictions)} entries but references has {len(references)}"
        )
    if not predictions:
        raise ValueError("no example to score (predictions is empty)")
    n_valid = tp = n_pred = n_gold = 0
    support: dict[str, int] = {}
    correct: dict[str, int] = {}
    covered: dict[str, int] = {}
    for i, (pred, ref) in enumerate(zip(predictions, references, strict=True)):
        p, valid = _prediction(pred, i)
        g = _reference(ref, i)
        n_valid += valid
        n_pred += len(p)
        n_gold += len(g)
        for key, value in g.items():
            support[key] = support.get(key, 0) + 1
            if key in p:
                covered[key] = covered.get(key, 0) + 1
                if p[key] == value:
                    correct[key] = correct.get(key, 0) + 1
                    tp += 1
    precision, recall = _ratio(tp, n_pred), _ratio(tp, n_gold)
    out: dict[str, float] = {
        "valid_rate": n_valid / len(predictions),
        "precision": precision,
        "recall": recall,
        "f1": _ratio(2 * precision * recall, precision + recall),
        "accuracy": recall,
        "num_examples": len(predictions),
    }
    for key in sorted(support) if keys is None else [normalize_key(k) for k in keys]:
        out[f"accuracy/{key}"] = _ratio(correct.get(key, 0), support.get(key, 0))
        out[f"coverage/{key}"] = _ratio(covered.get(key, 0), support.get(key, 0))
        out[f"support/{key}"] = support.get(key, 0)
    return out
