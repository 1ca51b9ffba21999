"""Batch extraction: resumable after a kill, refuses mismatched partial work, CLI output, scoring."""

from __future__ import annotations

import functools
import json
import os
import signal
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import pytest
from test_extractor_sft import REPO, sft_config, tiny_catalog, tiny_llava_model

GEN = {"max_new_tokens": 6}


@functools.lru_cache(maxsize=1)
def saved_tiny_llava_checkpoint() -> str:
    """The tiny extractor after 15 SFT steps (an untrained one emits only end tokens), saved once."""
    import torch
    from datasets import load_from_disk

    from trainers.extractor_sft import train_extractor

    path = Path(tempfile.mkdtemp(prefix="afmrl-extract-model-"))
    torch.set_num_threads(1)
    model = tiny_llava_model()
    split = load_from_disk(tiny_catalog())["train"]
    config = sft_config(path, max_steps=15)
    train_extractor(model.extractor, model.processor.extractor_processor, split, config, None)
    model.save_pretrained(path / "model")
    return str(path / "model")


def _rows(n: int = 24):
    from datasets import load_from_disk

    return load_from_disk(tiny_catalog())["train"].select(range(n))


@pytest.mark.slow
def test_killed_extraction_resumes_to_the_uninterrupted_column(tmp_path):
    from modeling_afmrl import AFMRLModel
    from trainers.extraction import extract_split

    ckpt, cat = saved_tiny_llava_checkpoint(), tiny_catalog()
    work = tmp_path / "work"
    script = textwrap.dedent(
        f"""
        import os, signal, torch
        torch.set_num_threads(1)
        from datasets import load_from_disk
        from modeling_afmrl import AFMRLModel
        from trainers.extraction import extract_split

        model = AFMRLModel.from_pretrained({ckpt!r}).eval()
        split = load_from_disk({cat!r})["train"].select(range(24))

        def on_batch(done, total):
            if done >= 12:  # the third batch is generated but never written
                os.kill(os.getpid(), signal.SIGKILL)

        extract_split(model, split, {str(work)!r}, batch_size=4, model_id="m",
                      show_progress_bar=False, on_batch=on_batch, max_new_tokens=6)
        """
    )
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, env=env, capture_output=True, timeout=600
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    assert sorted(p.name for p in work.glob("shard-*")) == ["shard-00000.json", "shard-00001.json"]

    model = AFMRLModel.from_pretrained(ckpt).eval()
    split = _rows()
    resumed = extract_split(
        model, split, work, batch_size=4, model_id="m", show_progress_bar=False, **GEN
    )
    assert resumed.resumed_rows == 8
    full = extract_split(
        model, split, tmp_path / "fresh", batch_size=4, model_id="m", show_progress_bar=False, **GEN
    )
    assert full.resumed_rows == 0
    assert len(full.texts) == 24 and resumed.texts == full.texts
    assert resumed.valid == full.valid
    assert len(set(full.texts)) > 1  # the comparison is not between constant columns
    # Batched generation equals one-at-a-time generation (left padding is handled).
    single = model.extract_attributes(split["image"][:5], split["title"][:5], True, 1, **GEN).raw
    assert single == full.texts[:5]


def test_partial_work_from_other_settings_is_refused(tmp_path):
    from modeling_afmrl import AFMRLModel
    from trainers.extraction import extract_split

    model = AFMRLModel.from_pretrained(saved_tiny_llava_checkpoint()).eval()
    split = _rows(4)
    extract_split(model, split, tmp_path, batch_size=4, model_id="m", show_progress_bar=False,
                  max_new_tokens=3)  # fmt: skip
    with pytest.raises(ValueError, match="settings"):
        extract_split(model, split, tmp_path, batch_size=4, model_id="m",
                      show_progress_bar=False, max_new_tokens=4)  # fmt: skip
    with pytest.raises(ValueError, match="model"):
        extract_split(model, split, tmp_path, batch_size=4, model_id="other",
                      show_progress_bar=False, max_new_tokens=3)  # fmt: skip
    with pytest.raises(ValueError, match="'caption'"):
        extract_split(model, split, tmp_path / "x", title_column="caption")


@pytest.mark.slow
def test_cli_adds_the_column_and_counts_invalid_outputs(tmp_path):
    from afmrl.catalog import load_catalog
    from modeling_afmrl.attributes import parse_attributes

    out = tmp_path / "with_attrs"
    cmd = [
        sys.executable, "-m", "afmrl.cli", "extract", "--model", saved_tiny_llava_checkpoint(),
        "--data", tiny_catalog(), "--out", str(out), "--column", "gen_attrs",
        "--splits", "validation_query", "query", "--batch-size", "8", "--max-new-tokens", "6",
        "--threads", "1",
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = load_catalog(out)
    source = load_catalog(tiny_catalog())
    assert list(data) == list(source)
    report = json.loads((out / "extraction.json").read_text())
    for split in ("validation_query", "query"):
        texts = data[split]["gen_attrs"]
        assert len(texts) == len(source[split])
        invalid = sum(not parse_attributes(t).valid for t in texts)
        assert report["splits"][split] == {**report["splits"][split], "rows": len(texts),
                                           "invalid": invalid}  # fmt: skip
    assert "gen_attrs" not in data["train"].column_names
    assert not Path(str(out) + ".partial").exists()  # work shards removed after success


def test_bad_split_is_named(tmp_path, capsys):
    from afmrl.cli import main

    code = main(["extract", "--model", saved_tiny_llava_checkpoint(), "--data", tiny_catalog(),
                 "--out", str(tmp_path / "o"), "--splits", "nope"])  # fmt: skip
    assert code == 2
    assert "'nope'" in capsys.readouterr().out


def test_attribute_scores_and_table():
    from datasets import Dataset, DatasetDict

    from benchmarks.attribute_eval import format_attribute_table, score_column

    gold = ["category: mug; colour: navy", "category: cap; colour: red; count: 2"]
    data = DatasetDict(
        {
            "validation_query": Dataset.from_dict(
                {"gold_attributes": gold[:1], "gen": ["Category: Mug; Color: dark blue"]}
            ),
            "validation_gallery": Dataset.from_dict(
                {"gold_attributes": gold[1:], "gen": ["category: mug; colour red"]}
            ),
        }
    )
    m = score_column(data, "gen")
    assert m["valid_rate"] == 0.5
    assert m["accuracy/category"] == 0.5 and m["accuracy/colour"] == 0.5
    assert m["accuracy/count"] == 0.0
    # 3 predicted pairs (the malformed piece is dropped), 2 right, 5 gold pairs.
    assert m["precision"] == pytest.approx(2 / 3) and m["recall"] == pytest.approx(2 / 5)
    table = format_attribute_table({"a": m, "b": {**m, "accuracy/category": 1.0}})
    lines = table.splitlines()
    assert lines[0] == "| key | a | b |"
    assert lines[2] == "| category (n=2) | 0.500 | 1.000 |"
    assert lines[-1] == "| valid format | 0.500 | 0.500 |"
    with pytest.raises(ValueError, match="'missing'"):
        score_column(data, "missing")
