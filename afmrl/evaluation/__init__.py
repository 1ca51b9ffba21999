"""Evaluation: retrieval and attribute-extraction quality, the peers, reports and plots.

- :mod:`~afmrl.evaluation.metrics`: Recall@K (hit rate), mAP@K (M5Product), MRR, nDCG@K (numpy).
- :mod:`~afmrl.evaluation.attribute_metrics`: per-key accuracy, micro F1, valid-format rate.
- :mod:`~afmrl.evaluation.modules`: the same as local ``evaluate`` metric modules.
- :mod:`~afmrl.evaluation.runner`: :func:`evaluate_model` (encode, search, score) and chance levels.
- :mod:`~afmrl.evaluation.baselines`: the peers every table carries.
- :mod:`~afmrl.evaluation.attributes`: attribute extraction scored against gold attributes.
- :mod:`~afmrl.evaluation.report`: ``metrics.json``, ``report.md`` and the Recall@K plot.
"""
