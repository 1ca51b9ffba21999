"""Local ``evaluate`` metric modules (one folder ``<name>/<name>.py`` each), loaded offline by path.

``import evaluate`` costs seconds, so it happens inside :func:`load_metric`, never at import time.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

METRICS_DIR = Path(__file__).resolve().parent
METRIC_NAMES: tuple[str, ...] = ("retrieval", "attribute_extraction")


def metric_path(name: str) -> str:
    """The folder of the metric module ``name`` (what ``evaluate.load`` takes)."""
    if name not in METRIC_NAMES:
        raise ValueError(f"unknown metric {name!r}; choose one of {METRIC_NAMES}")
    return str(METRICS_DIR / name)


def load_metric(name: str, **kwargs: Any):
    """``evaluate.load`` of a local metric module, in memory unless told otherwise."""
    import evaluate

    kwargs.setdefault("keep_in_memory", True)
    return evaluate.load(metric_path(name), **kwargs)
