"""Evaluation reports: ``metrics.json``, ``report.md`` and ``recall_at_k.png`` (+ the curves as JSON).

``metrics.json`` layout::

    {
      "recall@1": ..., "recall@5": ..., "recall@10": ..., "map@10": ..., "mrr": ..., "ndcg@10": ...,
      "hard_recall@1": ..., ..., "num_queries": ..., "num_gallery": ..., "excluded_queries": ...,
      "models": {"<name>": {same flat keys}, ...},   # every model and baseline, in table order
      "chance": {"recall@1": ..., "hard_recall@1": ..., ...},
      "config": {"split": ..., "task": ..., "attributes": ..., ...}
    }

The top-level flat keys are the first (main) model's, so a script can read
``metrics["recall@1"]`` whatever else was compared. ``report.md`` holds one Markdown table, a row per
model / baseline and a chance row, a column per metric. matplotlib (Agg backend) is imported only
when the plot is drawn.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from afmrl.io import atomic_path, write_json_atomic, write_text_atomic

from .runner import RetrievalRun

METRICS_FILE = "metrics.json"
REPORT_FILE = "report.md"
PLOT_FILE = "recall_at_k.png"
CURVES_FILE = "recall_at_k.json"
#: Counts reported once under the table rather than as columns.
COUNT_KEYS = ("num_queries", "num_gallery", "excluded_queries")
_LINE_STYLES = ("-", "--", "-.", (0, (5, 1, 1, 1)))
_LABELS = {"recall": "R", "true_recall": "true R", "map": "mAP", "mrr": "MRR", "ndcg": "nDCG"}


def metric_columns(runs: Sequence[RetrievalRun]) -> list[str]:
    """Metric keys in table order: the first run's order, counts left out, then any extra keys."""
    keys: list[str] = []
    for run in runs:
        for key in run.metrics:
            if key not in keys and not _is_count(key):
                keys.append(key)
    return keys


def _is_count(key: str) -> bool:
    return key.removeprefix("hard_") in COUNT_KEYS


def column_label(key: str) -> str:
    """``recall@1`` -> ``R@1``, ``hard_map@10`` -> ``hard mAP@10``."""
    hard = key.startswith("hard_")
    base = key.removeprefix("hard_")
    name, _, k = base.partition("@")
    label = _LABELS.get(name, name) + (f"@{k}" if k else "")
    return f"hard {label}" if hard else label


def metrics_document(
    runs: Sequence[RetrievalRun],
    chance: Mapping[str, Any] | None = None,
    config: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The ``metrics.json`` content (see the module docstring)."""
    if not runs:
        raise ValueError("no run to report")
    names = [r.name for r in runs]
    if len(set(names)) != len(names):
        raise ValueError(f"model names must be unique in one report, got {names}")
    doc: dict[str, Any] = dict(runs[0].metrics)
    doc["models"] = {r.name: dict(r.metrics) for r in runs}
    if chance is not None:
        doc["chance"] = {k: v for k, v in chance.items() if k != "recall_curve"}
    doc["config"] = dict(config or {})
    return doc


def markdown_table(
    runs: Sequence[RetrievalRun],
    chance: Mapping[str, Any] | None = None,
    digits: int = 3,
) -> str:
    """One Markdown table: a row per run (and a chance row), a column per metric."""
    keys = metric_columns(runs)
    header = ["model", "query → gallery", *(column_label(k) for k in keys)]
    lines = [
        "| " + " | ".join(header) + " |",
        "|" + "|".join(["---"] * 2 + ["---:"] * len(keys)) + "|",
    ]
    for run in runs:
        pair = f"{run.settings.get('query_modality', '?')} → {run.settings.get('gallery_modality', '?')}"
        attrs = run.settings.get("attributes", "none")
        if attrs not in (None, "none") and "baseline" not in run.settings:
            pair += f" (+{attrs} attributes)"
        cells = [_escape(run.name), pair] + [_fmt(run.metrics.get(k), digits) for k in keys]
        lines.append("| " + " | ".join(cells) + " |")
    if chance is not None:
        cells = ["chance (random ranking)", "–"] + [_fmt(chance.get(k), digits) for k in keys]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def counts_line(run: RetrievalRun) -> str:
    """``193 queries scored (0 excluded: no positive in the gallery), 356 gallery listings.``"""
    m = run.metrics
    line = (
        f"{m.get('num_queries')} queries scored ({m.get('excluded_queries', 0)} excluded: no "
        f"positive in the gallery), {m.get('num_gallery')} gallery listings."
    )
    if "hard_num_queries" in m:
        line += (
            f" Hard score: each query ranks only its own family's gallery listings "
            f"({m['hard_num_queries']} queries, {m.get('hard_excluded_queries', 0)} excluded)."
        )
    return line


def report_markdown(
    runs: Sequence[RetrievalRun],
    chance: Mapping[str, Any] | None = None,
    config: Mapping[str, Any] | None = None,
) -> str:
    """The whole ``report.md``: a title, the settings, the table and the counts."""
    config = dict(config or {})
    title = "# Retrieval evaluation"
    settings = ", ".join(
        f"{k}: `{v}`" for k, v in config.items() if k in ("data", "split", "task", "attributes")
    )
    parts = [title, ""]
    if settings:
        parts += [settings, ""]
    parts += [markdown_table(runs, chance), "", counts_line(runs[0])]
    parts += [
        "",
        "R@K is the hit rate (a query counts when at least one of its positives is in its top K), "
        "as in the AFMRL paper's and M5Product's tables; true R@K is the share of a query's "
        f"positives found in its top K. Every metric reads the first {config.get('depth', '?')} "
        "results of each query (a positive below that rank counts as missed).",
    ]
    if chance is not None:
        parts += [
            "",
            "Chance = expected R@K of a uniformly random ranking of the same gallery "
            "(1 − C(N − p, K) / C(N, K), averaged over queries).",
        ]
    return "\n".join(parts) + "\n"


def plot_recall_at_k(
    path: str | os.PathLike,
    runs: Sequence[RetrievalRun],
    chance_curve: Sequence[float] | None = None,
    title: str = "Recall@K",
) -> Path:
    """Recall@K curves (K = 1..len(curve)), one line per run, chance dashed; written atomically."""
    try:
        import matplotlib
    except ImportError as err:
        raise ModuleNotFoundError(
            "the Recall@K plot needs matplotlib: pip install matplotlib"
        ) from err
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    path = Path(path)
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    try:
        for i, run in enumerate(runs):
            ks = range(1, len(run.recall_curve) + 1)
            # Line styles cycle too, so identical curves (a model and its baseline) stay visible.
            style = _LINE_STYLES[i % len(_LINE_STYLES)]
            ax.plot(ks, run.recall_curve, linestyle=style, label=run.name, linewidth=1.8)
        if chance_curve is not None:
            ks = range(1, len(chance_curve) + 1)
            ax.plot(ks, chance_curve, "k:", label="chance", linewidth=1.2)
        ax.set_xlabel("K")
        ax.set_ylabel("Recall@K")
        ax.set_ylim(0, 1.01)
        ax.set_xlim(1, max(len(r.recall_curve) for r in runs))
        ax.grid(alpha=0.3)
        ax.set_title(title)
        ax.legend(fontsize=8, loc="lower right")
        fig.tight_layout()
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png")
    finally:
        plt.close(fig)
    return path


def write_report(
    out_dir: str | os.PathLike,
    runs: Sequence[RetrievalRun],
    chance: Mapping[str, Any] | None = None,
    config: Mapping[str, Any] | None = None,
    plot: bool = True,
) -> dict[str, Path]:
    """Write ``metrics.json``, ``report.md``, ``recall_at_k.json`` and ``recall_at_k.png``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    doc = metrics_document(runs, chance, config)
    paths = {"metrics": out / METRICS_FILE, "report": out / REPORT_FILE}
    write_json_atomic(paths["metrics"], _finite(doc))
    write_text_atomic(paths["report"], report_markdown(runs, chance, config))
    curves = {r.name: r.recall_curve for r in runs}
    if chance is not None and "recall_curve" in chance:
        curves["chance"] = list(chance["recall_curve"])
    paths["curves"] = out / CURVES_FILE
    write_json_atomic(paths["curves"], curves, indent=None)
    if plot:
        title = (
            f"Recall@K ({(config or {}).get('split', '')} split, {(config or {}).get('task', '')})"
        )
        paths["plot"] = plot_recall_at_k(
            out / PLOT_FILE, runs, chance.get("recall_curve") if chance else None, title
        )
    return paths


def _fmt(value: Any, digits: int) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return "–" if math.isnan(value) else f"{value:.{digits}f}"
    return str(value)


def _escape(text: str) -> str:
    return str(text).replace("|", "\\|")


def _finite(obj: Any) -> Any:
    """JSON has no NaN: replace non-finite floats by None (recursively)."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_finite(v) for v in obj]
    return obj
