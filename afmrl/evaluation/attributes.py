"""Attribute-extraction quality of a checkpoint's extractor (``afmrl evaluate --task attributes``).

Generates the eval splits' attributes with :func:`afmrl.retrieval.attributes.generate_attributes`
(the same function and malformed-output policy as extraction and retrieval), or reads an already
generated column, and scores them against ``gold_attributes`` with
:func:`afmrl.evaluation.attribute_metrics.attribute_metrics`:
valid-format rate, micro P/R/F1 and per-key accuracy / coverage. :func:`format_attribute_table`
puts several systems (untrained, SFT, majority class, probes...) side by side, one row per key.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from afmrl.retrieval.attributes import DEFAULT_GENERATION_BATCH_SIZE, DEFAULT_MAX_NEW_TOKENS

from .attribute_metrics import attribute_metrics

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
    batch_size: int = DEFAULT_GENERATION_BATCH_SIZE,
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
    return_raw: bool = False,
    show_progress: bool = True,
) -> dict[str, Any]:
    """Generate the attributes of ``splits`` with ``model`` and score them against
    ``reference_column``.

    Returns the flat metrics dict (``valid_rate``, ``f1``, ``accuracy/<key>``...), with the raw
    generations under ``"raw"`` when ``return_raw``.
    """
    from afmrl.retrieval.attributes import generate_attributes

    rows = _concat(data, splits, reference_column)
    generated = generate_attributes(
        model, rows, batch_size=batch_size, max_new_tokens=max_new_tokens,
        desc="extract", show_progress=show_progress,
    )  # fmt: skip
    metrics: dict[str, Any] = attribute_metrics(generated.texts, list(rows[reference_column]))
    if return_raw:
        metrics["raw"] = list(generated.raw)
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
