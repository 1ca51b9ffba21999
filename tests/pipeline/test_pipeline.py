"""``afmrl pipeline --smoke``: the whole paper runs end to end; its published model is Hub-ready;
a killed run continues where it stopped and ends with the same report; a rerun skips what
finished and reruns exactly the stages a changed setting touches."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from tiny_models import REPO

pytestmark = pytest.mark.slow

SMOKE = ("pipeline", "--smoke", "--seeds", "2", "--no-progress", "--threads", "1")
STAGES = 21  # 4 shared, 5 per training seed, 7 after
ROWS = (
    "chance", "title BM25", "title-only (MiniLM)", "image-only (EfficientNet-Lite0)",
    "untrained fusion", "InfoNCE", "AGCL", "AGCL + SFT attributes",
    "AGCL + RAR attributes (AFMRL)", "AFMRL + CIT",
)  # fmt: skip


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


def _pipeline(out: Path, *extra: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "afmrl.cli", *SMOKE, "--out", str(out), *extra]
    return subprocess.run(cmd, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=900)


def _retrieval_table(out: Path) -> str:
    report = (out / "report.md").read_text()
    return report.split("## Retrieval (test split)\n\n", 1)[1].split("\n\n", 1)[0]


def _ran(log: str) -> list[str]:
    """Names of the stages a log shows running (not skipped), in order."""
    return re.findall(
        rf"\[pipeline\] \d+/{STAGES} (.+?)(?: \(resuming\))?: (?:afmrl |\(a function)", log
    )


@pytest.fixture(scope="module")
def smoke(tmp_path_factory) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp("pipeline") / "run"
    start = time.perf_counter()
    proc = _pipeline(out)
    assert proc.returncode == 0, proc.stderr[-3000:] + proc.stdout[-3000:]
    print(f"smoke pipeline: {time.perf_counter() - start:.0f} s, load {os.getloadavg()[0]:.2f}")
    return out, proc.stdout


def test_smoke_runs_every_stage_and_writes_the_report(smoke):
    out, log = smoke
    assert len(_ran(log)) == STAGES
    table = _retrieval_table(out)
    rows = [line.split(" | ") for line in table.splitlines()[2:]]
    assert [r[0].removeprefix("| ") for r in rows] == list(ROWS)
    assert all(" ± " in r[1] for r in rows[5:])  # trained rows: mean ± std over the 2 seeds
    assert " ± " not in rows[1][1]  # a peer is deterministic
    assert "paper, M5Product" in table and "(VLM2Vec)" in table  # labelled as the paper's
    for png in ("ablation.png", "rar_reward.png", "stage_times.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    state = json.loads((out / "pipeline.json").read_text())
    assert len(state) == STAGES and all(s["finished"] for s in state.values())
    report = (out / "report.md").read_text()
    for name, stage in state.items():
        if name != "report":  # the report is written before its own time is known
            assert re.search(rf"\| {re.escape(name)} \| {round(stage['seconds'])} \|", report)
    assert "afmrl demo --model" in log and "afmrl push --checkpoint" in log  # closing summary
    assert table in log


def test_published_model_loads_offline_and_its_card_holds_its_metrics(smoke):
    from huggingface_hub import ModelCard
    from huggingface_hub.repocard import metadata_load

    model = smoke[0] / "afmrl-model"
    metrics = json.loads((model / "metrics.json").read_text())
    card = ModelCard.load(model / "README.md")
    index = {r.metric_type: r.metric_value for r in card.data.eval_results}
    assert index and all(index[k] == metrics[k] for k in index)  # exactly, not rounded
    meta = metadata_load(model / "README.md")
    parsed = {m["type"]: m["value"] for m in meta["model-index"][0]["results"][0]["metrics"]}
    assert parsed == index
    chosen = next(iter(metrics["models"]))
    table = json.loads((smoke[0] / "evaluation" / "attributes" / "metrics.json").read_text())
    assert {k: metrics[k] for k in index} == {k: table["models"][chosen][k] for k in index}
    assert (model / "calibration.json").is_file()

    code = (
        "import sys, torch\n"
        "from transformers import AutoModel\n"
        "from safetensors.torch import load_file\n"
        "m = AutoModel.from_pretrained(sys.argv[1], trust_remote_code=True)\n"
        "sd = load_file(sys.argv[1] + '/model.safetensors')\n"
        "own = m.state_dict()\n"
        "assert all(torch.equal(own[k], v) for k, v in sd.items() if k in own)\n"
        "print(type(m).__name__, len(sd))\n"
    )
    env = {**_env(), "HF_MODULES_CACHE": str(smoke[0].parent / "modules")}
    env.pop("PYTHONPATH")  # the checkpoint's own code, not the repository's
    proc = subprocess.run([sys.executable, "-c", code, str(model)], cwd=smoke[0].parent, env=env,
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.startswith("AFMRLModel ")


def test_killed_run_continues_where_it_stopped_with_the_same_report(smoke, tmp_path):
    out = tmp_path / "killed"
    log = tmp_path / "log.txt"
    cmd = [sys.executable, "-m", "afmrl.cli", *SMOKE, "--out", str(out)]
    with log.open("w") as handle:
        proc = subprocess.Popen(cmd, cwd=REPO, env=_env(), stdout=handle, stderr=subprocess.STDOUT)
        start = time.monotonic()
        checkpoints = out / "models" / "agcl-s0.checkpoints"
        while not any(checkpoints.glob("checkpoint-*/trainer_state.json")):
            assert proc.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() - start < 600, "timed out"
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    state = json.loads((out / "pipeline.json").read_text())
    assert state["AGCL encoder (seed 0)"]["finished"] is False  # killed inside the stage

    rerun = _pipeline(out)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    ran = _ran(rerun.stdout)
    assert ran[0] == "AGCL encoder (seed 0)" and len(ran) == STAGES - 5
    assert "AGCL encoder (seed 0) (resuming): afmrl train-encoder" in rerun.stdout
    assert rerun.stdout.count("finished earlier with the same settings, skipped") == 5
    assert _retrieval_table(out) == _retrieval_table(smoke[0])


def test_rerun_skips_finished_stages_and_reruns_what_a_changed_setting_touches(smoke):
    out = smoke[0]
    same = _pipeline(out)
    assert same.returncode == 0, same.stderr[-3000:]
    assert _ran(same.stdout) == []
    assert same.stdout.count("skipped") == STAGES

    changed = _pipeline(out, "--rar-steps", "3")
    assert changed.returncode == 0, changed.stderr[-3000:]
    assert _ran(changed.stdout) == [
        "RAR (seed 0)", "CIT round (seed 0)", "RAR (seed 1)", "CIT round (seed 1)",
        "evaluation: attribute-enhanced", "evaluation: extractor attributes",
        "choice of the published model (validation)", "Hub-ready model", "calibration", "report",
    ]  # fmt: skip
    for seed in (0, 1):
        history = json.loads((out / "models" / f"afmrl-s{seed}" / "rar_training.json").read_text())
        assert history["steps"] == 3


def test_pipeline_refuses_a_folder_that_is_not_its_own(tmp_path):
    from afmrl.cli import main

    (tmp_path / "notes.txt").write_text("mine")
    assert main(["pipeline", "--smoke", "--out", str(tmp_path)]) == 2
    assert (tmp_path / "notes.txt").read_text() == "mine" and len(list(tmp_path.iterdir())) == 1
