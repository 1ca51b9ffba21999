"""The peers every table carries: what a user would try before training anything.

- **title BM25**: BM25 (the maintained ``bm25s`` library, Lucene idf, k1 1.5, b 0.75) of each gallery
  title for the query's title, no model at all.
- **title-only MiniLM**: all-MiniLM-L6-v2 over the title alone (``encode(texts=...)``), query
  title against gallery titles. No image enters the embedding.
- **image-only EfficientNet-Lite0**: the ImageNet EfficientNet-Lite0 over the photo alone
  (``encode(images=...)``), photo against photo. No text (not even an empty title) enters it.
- **untrained fusion**: both towers fused (``encode(images=..., texts=...)``), listing against
  listing: what the embedded default does before any training.

The towers' projections to the shared space are the checkpoint's untrained (random) ones. The
baselines never read attributes: they are the zero-shot floor every trained model must beat.
For ``--task image`` the image-only baseline is the task itself; for ``--task text``
(title -> image) the one baseline is the untrained model across modalities (expected near chance:
nothing has aligned the two towers yet).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .runner import DEFAULT_DEPTH, TASKS, RetrievalRun, evaluate_model, evaluate_scores

if TYPE_CHECKING:
    from datasets import Dataset


@dataclass(frozen=True)
class Baseline:
    """A zero-shot baseline: a name for the report and the (query, gallery) modalities."""

    name: str
    query_modality: str
    gallery_modality: str
    description: str


TITLE_BM25 = Baseline(
    "baseline: title BM25 (bm25s)",
    "text",
    "text",
    "BM25 over the titles (bm25s: lower-cased words, no stop words), no model",
)
TITLE_ONLY = Baseline(
    "baseline: title-only (MiniLM)",
    "text",
    "text",
    "all-MiniLM-L6-v2 on titles only, untrained projection",
)
IMAGE_ONLY = Baseline(
    "baseline: image-only (EfficientNet-Lite0)",
    "image",
    "image",
    "ImageNet EfficientNet-Lite0 on photos only, untrained projection",
)
FUSION = Baseline(
    "baseline: untrained fusion",
    "listing",
    "listing",
    "both towers, mean fusion of the untrained projections",
)
TITLE_TO_IMAGE = Baseline(
    "baseline: untrained title->image",
    "text",
    "image",
    "title tower against image tower, projections not aligned by any training",
)

#: The baselines reported for each ``--task``.
BASELINES_BY_TASK: dict[str, tuple[Baseline, ...]] = {
    "listing": (TITLE_BM25, TITLE_ONLY, IMAGE_ONLY, FUSION),
    "image": (IMAGE_ONLY,),
    "text": (TITLE_TO_IMAGE,),
}


def baselines_for_task(task: str) -> tuple[Baseline, ...]:
    """The zero-shot baselines that belong in a ``task`` report."""
    if task not in TASKS:
        raise ValueError(f"task must be one of {list(TASKS)}, got {task!r}")
    return BASELINES_BY_TASK[task]


def build_baseline_model(
    out_dir: str | os.PathLike, progress: Callable[[str], None] = print
) -> Path:
    """Build the embedded default (as ``afmrl init`` does, seed 0, no catalogue) into ``out_dir``."""
    from afmrl.defaults import build_embedded_default

    return Path(build_embedded_default(out_dir, progress=progress, seed=0))


def run_baselines(
    model,
    query_ds: Dataset,
    gallery_ds: Dataset,
    task: str = "listing",
    batch_size: int = 32,
    depth: int = DEFAULT_DEPTH,
    show_progress: bool = True,
    split_names: tuple[str, str] = ("query", "gallery"),
) -> list[RetrievalRun]:
    """Evaluate every baseline of ``task`` with ``model`` (the untrained embedded default)."""
    runs = []
    for baseline in baselines_for_task(task):
        if baseline is TITLE_BM25:
            run = title_bm25_run(query_ds, gallery_ds, depth=depth)
            run.settings.update(baseline=baseline.description, attributes="none")
            runs.append(run)
            continue
        run = evaluate_model(
            model,
            query_ds,
            gallery_ds,
            task=task,
            modalities=(baseline.query_modality, baseline.gallery_modality),
            attributes="none",
            batch_size=batch_size,
            depth=depth,
            name=baseline.name,
            show_progress=show_progress,
            split_names=split_names,
        )
        run.settings["baseline"] = baseline.description
        runs.append(run)
    return runs


def title_bm25_run(
    query_ds: Dataset, gallery_ds: Dataset, depth: int = DEFAULT_DEPTH
) -> RetrievalRun:
    """Rank the gallery by BM25 of its titles for each query's title (``bm25s``)."""
    import bm25s
    import numpy as np

    def titles(ds: Dataset) -> list[str]:
        return ["" if t is None else str(t) for t in ds["title"]]

    retriever = bm25s.BM25()
    retriever.index(
        bm25s.tokenize(titles(gallery_ds), stopwords=None, show_progress=False),
        show_progress=False,
    )
    queries = bm25s.tokenize(
        titles(query_ds), stopwords=None, return_ids=False, show_progress=False
    )
    scores = np.stack([retriever.get_scores(tokens) for tokens in queries])
    families = "family_id" in query_ds.column_names and "family_id" in gallery_ds.column_names
    run = evaluate_scores(
        scores,
        list(query_ds["listing_id"]),
        list(query_ds["product_id"]),
        list(gallery_ds["listing_id"]),
        list(gallery_ds["product_id"]),
        list(query_ds["family_id"]) if families else None,
        list(gallery_ds["family_id"]) if families else None,
        depth=depth,
        name=TITLE_BM25.name,
    )
    run.settings.update(task="listing", query_modality="text", gallery_modality="text", depth=depth)
    return run
