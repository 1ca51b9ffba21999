"""Attribute-extraction quality of a checkpoint's extractor (``afmrl evaluate --task attributes``).

Runs the extractor (greedy, batched) on eval splits, or reads an already generated column, and
scores it against ``gold_attributes`` with :func:`benchmarks.attribute_metrics.attribute_metrics`:
valid-format rate, micro P/R/F1 and per-key accuracy / coverage. :func:`format_attribute_table`
puts several systems (untrained, SFT, majority class, probes...) side by side, one row per key.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from benchmarks.attribute_metrics import attribute_metrics

#: The validation splits the extractor is tuned and reported on (the test splits stay untouched).
VALIDATION_SPLITS: tuple[str, ...] = ("validation_query", "validation_gallery")
TEST_SPLITS: tuple[str, ...] = ("query", "gallery")
#: Keys shown first in tables (the rest follow, sorted).
HEADLINE_KEYS: tuple[str, ...] = (
    "category",
    "colour",
    "pattern",
    "count",
    "brand",
    "secondary_colour",
    "size",
)


def _concat(data: Any, splits: Sequence[str], reference_column: str):
    from datasets import concatenate_datasets

    missing = [s for s in splits if s not in data]
    if missing:
        raise ValueError(f"the catalogue has no split {missing[0]!r} (splits: {list(data)})")
    for s in splits:
        if reference_column not in data[s].column_names:
            raise ValueError(
                f"split {s!r} has no {reference_column!r} column to score against "
                f"(columns: {data[s].column_names})"
            )
    return concatenate_datasets([data[s] for s in splits])


def score_column(
    data: Any,
    column: str,
    splits: Sequence[str] = VALIDATION_SPLITS,
    reference_column: str = "gold_attributes",
) -> dict[str, float]:
    """Score a column of generated attribute strings (e.g. ``afmrl extract``'s) against gold."""
    rows = _concat(data, splits, reference_column)
    if column not in rows.column_names:
        raise ValueError(f"no {column!r} column to score (columns: {rows.column_names})")
    return attribute_metrics([str(t or "") for t in rows[column]], list(rows[reference_column]))


def evaluate_attributes(
    model: Any,
    data: Any,
    splits: Sequence[str] = VALIDATION_SPLITS,
    reference_column: str = "gold_attributes",
    batch_size: int = 32,
    max_new_tokens: int = 64,
    return_raw: bool = False,
    **generate_kwargs: Any,
) -> dict[str, Any]:
    """Run ``model.extract_attributes`` on ``splits`` and score it against ``reference_column``.

    Returns the flat metrics dict (``valid_rate``, ``f1``, ``accuracy/<key>``...), with the raw
    generations under ``"raw"`` when ``return_raw``.
    """
    rows = _concat(data, splits, reference_column)
    result = model.extract_attributes(
        rows["image"],
        rows["title"],
        return_raw=True,
        batch_size=batch_size,
        max_new_tokens=max_new_tokens,
        **generate_kwargs,
    )
    metrics: dict[str, Any] = attribute_metrics(result.raw, list(rows[reference_column]))
    if return_raw:
        metrics["raw"] = list(result.raw)
    return metrics


def table_keys(systems: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """Every key with an ``accuracy/<key>`` in any system, headline keys first."""
    seen = {k.split("/", 1)[1] for m in systems.values() for k in m if k.startswith("accuracy/")}
    return [k for k in HEADLINE_KEYS if k in seen] + sorted(seen - set(HEADLINE_KEYS))


def format_attribute_table(systems: Mapping[str, Mapping[str, Any]]) -> str:
    """Markdown: one row per key (per-key accuracy), then micro F1 and valid-format rate rows."""
    names = list(systems)
    lines = [
        "| key | " + " | ".join(names) + " |",
        "|---|" + "---|" * len(names),
    ]

    def cell(m: Mapping[str, Any], key: str) -> str:
        value = m.get(key)
        return "—" if value is None else f"{float(value):.3f}"

    for key in table_keys(systems):
        support = next(
            (m.get(f"support/{key}") for m in systems.values() if m.get(f"support/{key}")), ""
        )
        label = f"{key} (n={support})" if support else key
        lines.append(
            f"| {label} | " + " | ".join(cell(systems[n], f"accuracy/{key}") for n in names) + " |"
        )
    for key, label in (("f1", "micro F1"), ("valid_rate", "valid format")):
        lines.append(f"| {label} | " + " | ".join(cell(systems[n], key) for n in names) + " |")
    return "\n".join(lines)


def run_attribute_task(args: Any) -> int:
    """``afmrl evaluate --task attributes``: score each model's extractor on the eval splits.

    Uses ``args.model``, ``args.compare``, ``args.data``, ``args.split`` (``validation`` or
    ``test``), ``args.column``, ``args.batch_size``, ``args.max_new_tokens`` and ``args.out``.
    Writes ``OUT/metrics.json`` (``{model name: flat metrics}``) and ``OUT/report.md`` (one row
    per key, one column per model).
    """
    import json
    import time
    from pathlib import Path

    from afmrl.catalog import load_catalog, parse_column_mapping
    from benchmarks.retrieval import load_model, model_display_name

    start = time.perf_counter()
    splits = VALIDATION_SPLITS if args.split == "validation" else TEST_SPLITS
    data = load_catalog(args.data, columns=parse_column_mapping(args.column), splits=list(splits))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    systems: dict[str, dict] = {}
    names: list[str] = []
    for path in [args.model, *args.compare]:
        name = model_display_name(path, names)
        names.append(name)
        model = load_model(path)
        if getattr(model, "extractor", None) is None:
            raise ValueError(f"{path} has no attribute extractor to evaluate")
        metrics = evaluate_attributes(
            model, data, splits, batch_size=args.batch_size, max_new_tokens=args.max_new_tokens
        )
        systems[name] = metrics
        print(
            f"[evaluate] {name}: valid {metrics['valid_rate']:.3f}, f1 {metrics['f1']:.3f}",
            flush=True,
        )
    (out / "metrics.json").write_text(json.dumps(systems, indent=2) + "\n")
    table = format_attribute_table(systems)
    header = f"# Attribute extraction on {' + '.join(splits)} (per-key accuracy vs gold)\n\n"
    (out / "report.md").write_text(header + table + "\n")
    print(table)
    print(
        f"[evaluate] wrote {out / 'metrics.json'}, {out / 'report.md'} "
        f"({time.perf_counter() - start:.0f} s)"
    )
    return 0
