"""Attributes for a split: one function and one policy for extraction, evaluation and indexing.

``generate_attributes`` resumes after a kill, refuses mismatched partial work, and the column that
``afmrl extract`` writes is exactly what ``afmrl evaluate --attributes generated`` and ``afmrl index``
use for the same rows and checkpoint, malformed generations included.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import pytest
from tiny_models import REPO, tiny_catalog, tiny_llava_model, trained_llava_checkpoint

GEN = {"max_new_tokens": 16}


def _rows(split: str = "train", n: int = 24):
    from datasets import load_from_disk

    rows = load_from_disk(tiny_catalog())[split]
    return rows.select(range(min(n, len(rows))))


def _model():
    from afmrl.models import load_model

    return load_model(trained_llava_checkpoint())


def _run(*argv: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
    return subprocess.run(
        [sys.executable, "-m", "afmrl.cli", *argv],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip


# ------------------------------------------------------------------------------- the policy


def test_malformed_generations_become_empty_text(monkeypatch):
    from afmrl.retrieval.attributes import attribute_texts

    raw = ["Color: Navy Blue; size: M", "garbage without pairs", "count: 2; count: 3", "  "]
    model = SimpleNamespace(extract_attributes=lambda *a, **k: SimpleNamespace(raw=raw))
    texts, got_raw = attribute_texts(model, ["i"] * 4, ["t", None, "t", "t"])
    assert texts == ["colour: navy; size: m", "", "", ""]
    assert got_raw == raw


def test_generate_attributes_caches_in_its_work_dir(tmp_path):
    from afmrl.retrieval.attributes import generate_attributes

    model, rows = _model(), _rows(n=8)
    first = generate_attributes(
        model, rows, work_dir=tmp_path, batch_size=4, show_progress=False, **GEN
    )
    assert len(first.texts) == 8 and first.resumed_rows == 0

    def refuse(*args, **kwargs):
        raise AssertionError("extract_attributes ran again despite the finished shards")

    real, model.extract_attributes = model.extract_attributes, refuse
    try:
        again = generate_attributes(
            model, rows, work_dir=tmp_path, batch_size=4, show_progress=False, **GEN
        )
    finally:
        model.extract_attributes = real
    assert again.texts == first.texts and again.raw == first.raw and again.resumed_rows == 8


def test_partial_work_from_other_settings_is_refused(tmp_path):
    from afmrl.errors import UserError
    from afmrl.retrieval.attributes import generate_attributes

    model, rows = _model(), _rows(n=4)
    generate_attributes(model, rows, work_dir=tmp_path, batch_size=4, max_new_tokens=3,
                        show_progress=False)  # fmt: skip
    with pytest.raises(UserError, match="max_new_tokens"):
        generate_attributes(model, rows, work_dir=tmp_path, batch_size=4, max_new_tokens=4)
    with pytest.raises(UserError, match="rows"):
        generate_attributes(model, rows.select([1, 0, 2, 3]), work_dir=tmp_path, batch_size=4,
                            max_new_tokens=3)  # fmt: skip
    other = tiny_llava_model(seed=1)
    with pytest.raises(UserError, match="model"):
        generate_attributes(other, rows, work_dir=tmp_path, batch_size=4, max_new_tokens=3)
    with pytest.raises(ValueError, match="'caption'"):
        generate_attributes(model, rows, work_dir=tmp_path / "x", title_column="caption")


@pytest.mark.slow
def test_killed_generation_resumes_to_the_uninterrupted_column(tmp_path):
    from afmrl.retrieval.attributes import generate_attributes

    work = tmp_path / "work"
    script = textwrap.dedent(
        f"""
        import os, signal, torch
        torch.set_num_threads(1)
        from datasets import load_from_disk
        from afmrl.models import load_model
        from afmrl.retrieval.attributes import generate_attributes

        model = load_model({trained_llava_checkpoint()!r})
        rows = load_from_disk({tiny_catalog()!r})["train"].select(range(24))
        real, calls = model.extract_attributes, []

        def counted(*args, **kwargs):
            calls.append(1)
            if len(calls) == 3:  # the third batch is generated but never written
                os.kill(os.getpid(), signal.SIGKILL)
            return real(*args, **kwargs)

        model.extract_attributes = counted
        generate_attributes(model, rows, work_dir={str(work)!r}, batch_size=4,
                            show_progress=False, max_new_tokens=16)
        """
    )
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, env=env, capture_output=True, timeout=600
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    assert sorted(p.name for p in work.glob("shard-*")) == [
        "shard-000000.json",
        "shard-000001.json",
    ]

    model, rows = _model(), _rows()
    resumed = generate_attributes(
        model, rows, work_dir=work, batch_size=4, show_progress=False, **GEN
    )
    assert resumed.resumed_rows == 8
    full = generate_attributes(model, rows, batch_size=4, show_progress=False, **GEN)
    assert full.resumed_rows == 0
    assert len(full.texts) == 24 and resumed.texts == full.texts and resumed.raw == full.raw
    assert len(set(full.texts)) > 1  # the comparison is not between constant columns
    # Batched generation equals one-at-a-time generation (left padding is handled).
    single = model.extract_attributes(rows["image"][:5], rows["title"][:5], True, 1, **GEN).raw
    assert single == full.raw[:5]


# ------------------------------------------------------------------ one column, three commands


@pytest.mark.slow
def test_extract_evaluate_and_index_see_the_same_attributes(tmp_path):
    from afmrl.data import load_catalog
    from afmrl.io import ShardFolder

    ckpt, cat = trained_llava_checkpoint(), tiny_catalog()
    common = ["--model", ckpt, "--data", cat, "--batch-size", "4", "--max-new-tokens", "16",
              "--no-progress"]  # fmt: skip
    extracted = tmp_path / "extracted"
    proc = _run("extract", *common, "--out", str(extracted), "--splits", "query", "gallery")
    assert proc.returncode == 0, proc.stderr[-3000:]
    proc = _run("evaluate", *common, "--out", str(tmp_path / "eval"), "--attributes", "generated",
                "--no-plot")  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    proc = _run("index", *common, "--out", str(tmp_path / "index"), "--attributes", "generated")
    assert proc.returncode == 0, proc.stderr[-3000:]

    column = load_catalog(extracted)
    for split in ("query", "gallery"):
        written = list(column[split]["attributes"])
        (cache,) = (tmp_path / "eval" / "cache").glob("model-*")  # one per model's weights
        shards = ShardFolder(cache / split, {})
        evaluated = [t for i in range(len(list(shards.folder.glob("shard-*.json"))))
                     for t in shards.read(i)[0]["texts"]]  # fmt: skip
        assert evaluated == written, split
    indexed = [
        json.loads(line)["attributes"] for line in (tmp_path / "index" / "listings.jsonl").open()
    ]
    assert indexed == list(column["gallery"]["attributes"])
    every = list(column["query"]["attributes"]) + list(column["gallery"]["attributes"])
    assert "" in every and any(every), "need both malformed and well-formed generations"


@pytest.mark.slow
def test_cli_adds_the_column_and_counts_malformed_outputs(tmp_path):
    from afmrl.data import load_catalog

    out = tmp_path / "with_attrs"
    proc = _run(
        "extract", "--model", trained_llava_checkpoint(), "--data", tiny_catalog(), "--out", str(out),
        "--attributes-column", "gen_attrs", "--splits", "validation_query", "query",
        "--batch-size", "8", "--max-new-tokens", "16", "--threads", "1",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = load_catalog(out)
    source = load_catalog(tiny_catalog())
    assert list(data) == list(source)
    report = json.loads((out / "extraction.json").read_text())
    for split in ("validation_query", "query"):
        texts = data[split]["gen_attrs"]
        assert len(texts) == len(source[split])
        assert report["splits"][split]["gen_attrs"]["rows"] == len(texts)
        assert report["splits"][split]["gen_attrs"]["malformed"] == sum(not t for t in texts)
    assert "gen_attrs" not in data["train"].column_names
    assert not Path(str(out) + ".partial").exists()  # work shards removed after success


def test_bad_split_is_named(tmp_path, capsys):
    from afmrl.cli import main

    code = main(["extract", "--model", trained_llava_checkpoint(), "--data", tiny_catalog(),
                 "--out", str(tmp_path / "o"), "--splits", "nope"])  # fmt: skip
    assert code == 2
    err = capsys.readouterr().err
    assert "'nope'" in err.strip().splitlines()[-1] and "Traceback" not in err


def test_attribute_scores_and_table():
    from datasets import Dataset, DatasetDict

    from afmrl.evaluation.attributes import format_attribute_table, score_column

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


@pytest.mark.slow
def test_cli_extracts_the_second_listing_of_train_pairs(tmp_path):
    from afmrl.cli import main
    from afmrl.data import load_catalog

    out = tmp_path / "with_attrs"
    code = main(["extract", "--model", trained_llava_checkpoint(), "--data", tiny_catalog(),
                 "--out", str(out), "--attributes-column", "gen", "--splits", "train",
                 "--batch-size", "16", "--max-new-tokens", "4", "--threads", "1", "--no-progress"])  # fmt: skip
    assert code == 0
    train = load_catalog(out, splits=["train"])["train"]
    assert len(train["gen"]) == len(train["pos_gen"]) == len(train)
    assert list(train["pos_gen"]) != list(train["gen"])  # another listing, its own attributes
