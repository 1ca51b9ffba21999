"""The pipeline's pure parts: the report's statistics and tables, the choice of the published model,
the stage plan and its fingerprints."""

from __future__ import annotations

import statistics
from pathlib import Path

import pytest

from afmrl.pipeline.final import choose, single_model_metrics
from afmrl.pipeline.plan import VARIANTS, build_plan
from afmrl.pipeline.report import PAPER, ablation_table, mean_std, step_table
from afmrl.pipeline.runner import stage_fingerprints
from afmrl.pipeline.settings import SMOKE, PipelineSettings, smoke_settings


def test_mean_std_is_the_sample_standard_deviation():
    values = [0.71, 0.69, 0.74]
    assert mean_std(values) == pytest.approx((statistics.mean(values), statistics.stdev(values)))
    assert mean_std([0.5]) == (0.5, 0.0)


def _rows(r1: dict[str, list[float]]) -> dict[str, dict[str, list[float]]]:
    return {row: {"recall@1": v, "hard_recall@1": [x / 2 for x in v]} for row, v in r1.items()}


def test_step_table_gives_per_seed_differences_and_their_spread():
    rows = _rows({
        "InfoNCE": [0.70, 0.72], "AGCL": [0.75, 0.73], "AGCL + SFT attributes": [0.75, 0.73],
        "AGCL + RAR attributes (AFMRL)": [0.80, 0.70], "AFMRL + CIT": [0.80, 0.70],
    })  # fmt: skip
    table = step_table(rows)
    agcl = next(line for line in table.splitlines() if line.startswith("| AGCL instead"))
    assert "+0.030 ± 0.028" in agcl and "+0.050 / +0.010" in agcl  # diffs 0.05, 0.01
    overall = next(line for line in table.splitlines() if line.startswith("| AFMRL over"))
    assert "+0.100 / -0.020" in overall


def test_ablation_table_puts_the_papers_numbers_beside_the_matching_rows_only():
    rows = _rows({"chance": [0.01], "InfoNCE": [0.7, 0.8]})
    lines = ablation_table(rows).splitlines()
    assert "paper, M5Product" in lines[0]
    assert lines[2].endswith("|  |")  # chance: nothing from the paper
    name, r1, r5, r10 = PAPER["InfoNCE"][0], *PAPER["InfoNCE"][1:]
    assert "0.750 ± 0.071" in lines[3] and f"{r1:.2f} / {r5:.2f} / {r10:.2f} ({name})" in lines[3]


def test_the_published_model_is_chosen_on_validation_recall_at_1():
    validation = {"models": {"afmrl-s0": {"recall@1": 0.70}, "afmrl_cit-s0": {"recall@1": 0.68}}}
    candidates = ["/x/models/afmrl-s0", "/x/models/afmrl_cit-s0"]
    assert choose(validation, candidates) == candidates[0]
    validation["models"]["afmrl_cit-s0"]["recall@1"] = 0.70
    assert choose(validation, candidates) == candidates[1]  # a tie goes to the later step


def test_single_model_metrics_keeps_only_that_models_numbers():
    doc = {
        "recall@1": 0.1, "models": {"a": {"recall@1": 0.1}, "b": {"recall@1": 0.9, "mrr": 0.95}},
        "chance": {"recall@1": 0.01}, "config": {"split": "test", "models": {"a": "/a", "b": "/b"}},
    }  # fmt: skip
    one = single_model_metrics(doc, "b")
    assert one["recall@1"] == 0.9 and one["mrr"] == 0.95 and list(one["models"]) == ["b"]
    assert one["config"] == {"split": "test", "models": {"b": "/b"}}


def test_plan_runs_every_variant_per_seed_and_fingerprints_follow_the_reads(tmp_path: Path):
    settings = PipelineSettings(seeds=2)
    plan = build_plan(settings, tmp_path)
    names = [s.name for s in plan]
    assert len(names) == len(set(names))
    trained = [s for s in plan if s.trains]
    assert len(trained) == 1 + 2 * len(VARIANTS)  # the extractor SFT, then every variant per seed
    base = stage_fingerprints(plan)
    changed = stage_fingerprints(build_plan(PipelineSettings(seeds=2, rar_steps=7), tmp_path))
    differs = {n for n in names if base[n] != changed[n]}
    assert differs == {
        "RAR (seed 0)", "RAR (seed 1)", "CIT round (seed 0)", "CIT round (seed 1)",
        "evaluation: attribute-enhanced", "evaluation: extractor attributes",
        "choice of the published model (validation)", "Hub-ready model", "calibration", "report",
    }  # fmt: skip
    rar = next(s for s in plan if s.name == "RAR (seed 1)")
    assert rar.argv[rar.argv.index("--max-steps") + 1] == str(settings.rar_steps)
    assert rar.argv[rar.argv.index("--seed") + 1] == "1"
    infonce = next(s for s in plan if s.name == "InfoNCE encoder (seed 1)")
    assert "--max-steps" not in infonce.argv  # None: the stage command's own default


def test_smoke_sizes_fill_in_what_was_not_given():
    smoke = smoke_settings(PipelineSettings(seeds=3, threads=1, rar_steps=5))
    assert smoke.seeds == 3 and smoke.threads == 1 and smoke.rar_steps == 5
    assert smoke.products == SMOKE["products"] and smoke.encoder_steps == SMOKE["encoder_steps"]
