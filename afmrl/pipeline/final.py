"""The published model: a Hub-ready copy of the pipeline's best attribute-enhanced checkpoint.

Which one (AFMRL, or AFMRL after the CIT round) is chosen on the **validation** split (the
``evaluation/choice`` evaluation, Recall@1, the CIT round on a tie: it is the paper's last step);
the test split only reports. The folder gets the checkpoint's files, ``metrics.json`` -- the
chosen model's test-split metrics in ``afmrl evaluate``'s layout, one model -- and ``README.md``,
the model card whose ``model-index`` holds exactly those numbers. ``afmrl push --checkpoint
afmrl-model --metrics afmrl-model/metrics.json`` publishes it as it is.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from afmrl.evaluation.report import METRICS_FILE
from afmrl.io import building, write_json_atomic

from .plan import FINAL_MODEL


def choose(validation: dict[str, Any], candidates: Sequence[str]) -> str:
    """The candidate folder with the highest validation Recall@1 (the last one on a tie)."""
    models = validation["models"]
    scores = [models[Path(c).name]["recall@1"] for c in candidates]
    best = max(scores)
    return [c for c, r in zip(candidates, scores, strict=True) if r == best][-1]


def single_model_metrics(document: dict[str, Any], name: str) -> dict[str, Any]:
    """``document`` (an ``afmrl evaluate`` ``metrics.json``) reduced to the model ``name``."""
    row = document["models"][name]
    config = dict(document.get("config", {}))
    config["models"] = {name: config.get("models", {}).get(name, name)}
    return {**row, "models": {name: row}, "chance": document.get("chance", {}), "config": config}


def build_final_model(out: Path, candidates: Sequence[str]) -> Path:
    """Write ``OUT/afmrl-model`` (built beside, swapped in complete); returns it."""
    from hub_cards.cards import model_card

    validation = json.loads((out / "evaluation" / "choice" / METRICS_FILE).read_text())
    chosen = Path(choose(validation, candidates))
    test = json.loads((out / "evaluation" / "attributes" / METRICS_FILE).read_text())
    metrics = single_model_metrics(test, chosen.name)
    metrics["config"]["chosen_on_validation"] = {
        Path(c).name: validation["models"][Path(c).name]["recall@1"] for c in candidates
    }
    target = out / FINAL_MODEL
    with building(target) as stage:
        shutil.copytree(chosen, stage, dirs_exist_ok=True)
        write_json_atomic(stage / METRICS_FILE, metrics)
        model_card(stage, repo_id=FINAL_MODEL, metrics=metrics).save(stage / "README.md")
    return target
