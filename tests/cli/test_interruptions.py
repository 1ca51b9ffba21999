"""Interruptions lose nothing: a killed rebuild leaves the old output, Ctrl-C leaves resumable state
and one line. (The pipeline's reruns and resumes: ``tests/pipeline``.)"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from tiny_models import REPO, saved_tiny_checkpoint, saved_untrained_llava_checkpoint, tiny_catalog


def _default_sigint() -> None:
    # A test run started in the background of a non-interactive shell inherits SIGINT ignored,
    # and Python keeps an ignored SIGINT ignored: the command would never see the Ctrl-C.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _start(*argv: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "afmrl.cli", *argv], cwd=REPO, env=env, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True, preexec_fn=_default_sigint,
    )  # fmt: skip


def _wait_for(condition, proc: subprocess.Popen, timeout: float = 240) -> None:
    start = time.monotonic()
    while not condition():
        if proc.poll() is not None:
            raise AssertionError(
                f"finished before the interruption: {proc.communicate()[1][-2000:]}"
            )
        if time.monotonic() - start > timeout:
            proc.kill()
            raise AssertionError("timed out waiting for progress")
        time.sleep(0.05)


def _interrupt(proc: subprocess.Popen, sig: int) -> tuple[int, str]:
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    return proc.returncode, err


# ------------------------------------------------------------------ killed rebuilds (SIGKILL)


@pytest.mark.slow
def test_killed_catalogue_rebuild_leaves_the_old_catalogue(tmp_path):
    from afmrl.cli import main
    from afmrl.data.synthetic import content_fingerprint

    out = tmp_path / "cat"
    assert main(["synth", "--out", str(out), "--products", "40", "--num-proc", "1"]) == 0
    old = json.loads((out / "fingerprint.json").read_text())["sha256"]
    proc = _start("synth", "--out", str(out), "--products", "400", "--seed", "1", "--num-proc", "1")
    _wait_for(lambda: (tmp_path / ".cat.building").is_dir(), proc)
    time.sleep(1.0)  # mid-build
    code, _ = _interrupt(proc, signal.SIGKILL)
    assert code == -signal.SIGKILL
    from datasets import load_from_disk

    assert content_fingerprint(load_from_disk(str(out))) == old  # the old catalogue, whole
    assert (
        main(["synth", "--out", str(out), "--products", "40", "--seed", "1", "--num-proc", "1"])
        == 0
    )
    assert json.loads((out / "fingerprint.json").read_text())["sha256"] != old
    assert not (tmp_path / ".cat.building").exists()


@pytest.mark.slow
def test_killed_checkpoint_rebuild_leaves_the_old_checkpoint(tmp_path):
    import shutil

    from afmrl.io import sha256_file
    from afmrl.models import load_model

    out = tmp_path / "model"
    shutil.copytree(saved_tiny_checkpoint("dual"), out)
    before = sha256_file(out / "model.safetensors")
    proc = _start("init", "--out", str(out), "--overwrite")
    _wait_for(lambda: (tmp_path / ".model.building").is_dir(), proc)  # writing the new one
    code, _ = _interrupt(proc, signal.SIGKILL)
    assert code == -signal.SIGKILL
    assert sha256_file(out / "model.safetensors") == before
    load_model(out)


# ------------------------------------------------------------------------------- Ctrl-C


def _last_line(err: str) -> str:
    return err.strip().splitlines()[-1]


@pytest.mark.slow
def test_ctrl_c_in_index_leaves_resumable_batches(tmp_path):
    from afmrl.cli import main

    out = tmp_path / "index"
    args = ["index", "--model", saved_untrained_llava_checkpoint(), "--data", tiny_catalog(),
            "--out", str(out), "--batch-size", "1", "--attributes", "generated",
            "--max-new-tokens", "24"]  # fmt: skip
    proc = _start(*args)
    _wait_for(lambda: len(list((out / ".partial").glob("shard-*.json"))) >= 2, proc)
    code, err = _interrupt(proc, signal.SIGINT)
    assert code == 130, err[-2000:]
    assert _last_line(err) == "afmrl index: interrupted; rerun the same command to resume"
    assert "Traceback" not in err
    assert main([*args, "--no-progress"]) == 0
    assert (out / "afmrl_index.json").is_file()


@pytest.mark.slow
def test_ctrl_c_in_extract_leaves_resumable_shards(tmp_path):
    from afmrl.cli import main
    from afmrl.data import load_catalog

    out = tmp_path / "extracted"
    args = ["extract", "--model", saved_untrained_llava_checkpoint(), "--data", tiny_catalog(),
            "--out", str(out), "--splits", "train", "--batch-size", "2",
            "--max-new-tokens", "24"]  # fmt: skip
    proc = _start(*args)
    work = Path(f"{out}.partial") / "train"
    _wait_for(lambda: len(list(work.glob("shard-*.json"))) >= 2, proc)
    code, err = _interrupt(proc, signal.SIGINT)
    assert code == 130 and _last_line(err) == (
        "afmrl extract: interrupted; rerun the same command to resume"
    ), err[-2000:]
    assert not out.exists()
    assert main([*args, "--no-progress"]) == 0
    report = json.loads((out / "extraction.json").read_text())
    assert report["splits"]["train"]["attributes"]["resumed_rows"] >= 4
    assert len(load_catalog(out)["train"]["pos_attributes"]) == len(load_catalog(out)["train"])


@pytest.mark.slow
def test_ctrl_c_in_train_encoder_leaves_a_checkpoint_to_resume(tmp_path):
    from afmrl.cli import main

    out = tmp_path / "encoder"
    common = ["train-encoder", "--model", saved_tiny_checkpoint("dual"), "--data", tiny_catalog(),
              "--out", str(out), "--batch-size", "4", "--save-steps", "2", "--train-text-layers",
              "1", "--no-progress"]  # fmt: skip
    proc = _start(*common, "--max-steps", "400")
    checkpoints = Path(f"{out}.checkpoints")
    _wait_for(lambda: (checkpoints / "checkpoint-2" / "trainer_state.json").is_file(), proc)
    code, err = _interrupt(proc, signal.SIGINT)
    assert code == 130, err[-2000:]
    assert _last_line(err) == "afmrl train-encoder: interrupted; rerun the same command to resume"
    assert not out.exists()
    assert main([*common, "--max-steps", "6", "--resume"]) == 0
    summary = json.loads((out / "agcl_training.json").read_text())
    assert summary["global_step"] == 6
