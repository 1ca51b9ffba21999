"""What an evaluation can be asked for, and its defaults (standard library only: the CLI reads it)."""

from __future__ import annotations

#: ``--split`` -> (query split, gallery split).
SPLIT_PAIRS: dict[str, tuple[str, str]] = {
    "test": ("query", "gallery"),
    "validation": ("validation_query", "validation_gallery"),
}
#: ``--task`` -> (query modality, gallery modality).
TASKS: dict[str, tuple[str, str]] = {
    "listing": ("listing", "listing"),
    "image": ("image", "image"),
    "text": ("text", "image"),
}
#: Ranked list length kept per query (MRR counts a first positive below it as 0).
DEFAULT_DEPTH = 100
#: The Recall@K curve (the plot) goes from K=1 to this.
CURVE_MAX_K = 50

__all__ = ["CURVE_MAX_K", "DEFAULT_DEPTH", "SPLIT_PAIRS", "TASKS"]
