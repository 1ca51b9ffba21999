"""One error path: a user error is one line on stderr and exit status 2, decided in ``cli.main`` only."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
from tiny_models import REPO


def _run(*argv: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run(
        [sys.executable, "-m", "afmrl.cli", *argv], cwd=REPO, env=env, capture_output=True,
        text=True, timeout=300,
    )  # fmt: skip


def test_only_cli_main_turns_errors_into_exit_status_2():
    offenders = []
    for path in (REPO / "afmrl").rglob("*.py"):
        text = path.read_text(encoding="utf-8")
        if path == REPO / "afmrl" / "cli" / "__init__.py":
            continue
        if re.search(r"return 2\b|exit\(2\)|file=sys\.stderr\)\s*\n\s*return", text):
            offenders.append(str(path.relative_to(REPO)))
    assert offenders == []


def test_a_missing_path_is_one_line_and_exit_2(tmp_path):
    proc = _run("index", "--model", str(tmp_path / "no-model"), "--data", str(tmp_path / "no-data"),
                "--out", str(tmp_path / "out"))  # fmt: skip
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == [
        f"afmrl index: error: {tmp_path / 'no-data'}: no such file or folder"
    ]
    assert not (tmp_path / "out").exists()


def test_a_bad_number_is_refused_while_parsing(tmp_path):
    proc = _run("evaluate", "--model", "m", "--data", "d", "--out", str(tmp_path), "--depth", "-1")
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == [
        "afmrl evaluate: error: argument --depth: expected a positive integer, got '-1'"
    ]


def test_a_corrupt_checkpoint_is_one_line(tmp_path):
    import shutil

    from tiny_models import saved_tiny_checkpoint

    ckpt = tmp_path / "ckpt"
    shutil.copytree(saved_tiny_checkpoint("dual"), ckpt)
    (ckpt / "model.safetensors").write_bytes(b"\x00" * 64)
    proc = _run("search", "--index", str(tmp_path), "--model", str(ckpt), "--title", "x")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    from afmrl.cli import main
    from afmrl.errors import UserError
    from afmrl.models import load_model

    with pytest.raises(UserError, match=r"cannot load the checkpoint"):
        load_model(ckpt)
    assert (
        main(["index", "--model", str(ckpt), "--data", str(tmp_path), "--out", str(tmp_path / "o")])
        == 2
    )


def test_torch_settings_are_restored():
    import torch

    from afmrl.runtime import torch_settings

    threads = torch.get_num_threads()
    tiny = torch.tensor([1e-39])  # a denormal float32: flushed to 0 only in flush-denormal mode
    with torch_settings(threads=1, flush_denormal=True):
        assert torch.get_num_threads() == 1 and (tiny * 1).item() == 0.0
    assert torch.get_num_threads() == threads and (tiny * 1).item() != 0.0


def test_a_missing_local_model_path_is_never_looked_up_on_the_hub(monkeypatch, tmp_path):
    from afmrl.errors import MissingPathError
    from afmrl.models import load_model

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    for name in ("./no-such-model", str(tmp_path / "gone"), "outputs/a/model"):
        with pytest.raises(MissingPathError, match="no such folder"):
            load_model(name, what="--model")
