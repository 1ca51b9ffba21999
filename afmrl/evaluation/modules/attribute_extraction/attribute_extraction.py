"""Attribute-extraction scores as a local ``evaluate`` module.

Load it offline by path::

    metric = evaluate.load(afmrl.evaluation.modules.metric_path("attribute_extraction"))
    metric.compute(predictions=["colour: navy; count: 2", ...], references=["colour: navy", ...])

Predictions are the extractor's raw outputs, references gold attribute strings (the format of
``modeling_afmrl.attributes``). The maths lives in :mod:`afmrl.evaluation.attribute_metrics`.
"""

import datasets
import evaluate

from afmrl.evaluation.attribute_metrics import attribute_metrics

_DESCRIPTION = """
Scores generated product attributes ('key: value; key: value') against gold ones after the same
normalisation (key and value synonyms, case, spaces). valid_rate = share of well-formed outputs;
precision / recall / f1 = micro over (key, value) pairs; accuracy = share of gold pairs predicted
exactly; accuracy/<key> and coverage/<key> = per gold key, the share predicted right and the share
predicted at all (a missing key counts as wrong); support/<key> = how many references have the key.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions: list of generated attribute strings.
    references: list of gold attribute strings (must be well formed).
    keys: optional list of keys to report per-key scores for (default: every gold key).
Returns:
    flat dict: valid_rate, precision, recall, f1, accuracy, num_examples, accuracy/<key>,
    coverage/<key>, support/<key>.
Examples:
    >>> metric = evaluate.load(afmrl.evaluation.modules.metric_path("attribute_extraction"))
    >>> metric.compute(predictions=["colour: navy"], references=["colour: dark blue"])["f1"]
    1.0
"""

_CITATION = """
@inproceedings{afmrl2026,
  title = {AFMRL: Attribute-Enhanced Fine-Grained Multi-Modal Representation Learning},
  booktitle = {Findings of ACL},
  year = {2026}
}
"""


class AttributeExtraction(evaluate.Metric):
    """Per-key accuracy, coverage, micro P/R/F1 and valid-format rate of generated attributes."""

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"predictions": datasets.Value("string"), "references": datasets.Value("string")}
            ),
        )

    def _compute(self, predictions, references, keys=None):
        return attribute_metrics(list(predictions), list(references), keys=keys)
