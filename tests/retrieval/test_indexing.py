"""``afmrl index`` / ``search`` / ``evaluate`` on a tiny catalogue and a tiny checkpoint.

The kill test SIGKILLs a real ``afmrl index`` subprocess after 2 checkpointed batches, then resumes
in this process and compares with an uninterrupted run.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from tiny_models import REPO

from afmrl.cli import main
from afmrl.retrieval.index import IndexFileError, RetrievalIndex

BATCH = 3


@pytest.fixture(scope="session")
def catalogue(tmp_path_factory) -> Path:
    """A 40-product synthetic catalogue (64 px): 8 queries, 14 gallery rows."""
    from afmrl.data.synthetic import CatalogConfig, build_catalog

    out = tmp_path_factory.mktemp("catalogue") / "cat"
    build_catalog(CatalogConfig(products=40, image_size=64), out, num_proc=1, log=lambda _: None)
    return out


def _index_args(checkpoint: str, catalogue: Path, out: Path, *extra: str) -> list[str]:
    return [
        "index",
        "--model",
        checkpoint,
        "--data",
        str(catalogue),
        "--out",
        str(out),
        "--batch-size",
        str(BATCH),
        "--no-progress",
        *extra,
    ]


def _vectors(index: RetrievalIndex) -> np.ndarray:
    return index.faiss_index.reconstruct_n(0, index.count)


@pytest.fixture(scope="module")
def complete_index(tmp_path_factory, checkpoint, catalogue) -> Path:
    out = tmp_path_factory.mktemp("index") / "complete"
    assert main(_index_args(checkpoint, catalogue, out)) == 0
    return out


@pytest.fixture(scope="module")
def killed_run(tmp_path_factory, checkpoint, catalogue) -> Path:
    """An index folder whose `afmrl index` was SIGKILLed after 2 of 5 batches."""
    out = tmp_path_factory.mktemp("index") / "killed"
    argv = _index_args(checkpoint, catalogue, out, "--debug-kill-after-batches", "2")
    proc = subprocess.run(
        [sys.executable, "-m", "afmrl.cli", *argv],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    return out


# ---------------------------------------------------------------------------- index, kill


def test_complete_index(complete_index, catalogue):
    from datasets import load_from_disk

    gallery = load_from_disk(str(catalogue))["gallery"]
    index = RetrievalIndex.load(complete_index)
    assert index.ids.tolist() == gallery["listing_id"]
    assert index.kind == "flat" and index.count == len(gallery) == 14
    np.testing.assert_allclose(np.linalg.norm(_vectors(index), axis=1), 1.0, atol=1e-5)
    assert not (complete_index / ".partial").exists()
    rows = [json.loads(line) for line in (complete_index / "listings.jsonl").open()]
    assert [r["id"] for r in rows] == gallery["listing_id"]
    assert [r["title"] for r in rows] == gallery["title"]
    info = json.loads((complete_index / "afmrl_index.json").read_text())
    assert info["split"] == "gallery" and info["modality"] == "listing" and info["count"] == 14


def test_index_vectors_equal_model_encode(complete_index, catalogue, checkpoint):
    from datasets import load_from_disk
    from transformers import AutoModel

    gallery = load_from_disk(str(catalogue))["gallery"]
    model = AutoModel.from_pretrained(checkpoint, trust_remote_code=True)
    rows = gallery.select(range(BATCH))
    expected = model.encode(images=list(rows["image"]), texts=list(rows["title"])).numpy()
    np.testing.assert_allclose(
        _vectors(RetrievalIndex.load(complete_index))[:BATCH], expected, atol=1e-5
    )


def test_killed_run_leaves_checkpoint_but_no_index(killed_run):
    manifest = json.loads((killed_run / ".partial" / "manifest.json").read_text())
    assert manifest["manifest"]["batch_size"] == BATCH and manifest["manifest"]["num_rows"] == 14
    assert sorted(p.name for p in (killed_run / ".partial").glob("shard-*.json")) == [
        "shard-000000.json",
        "shard-000001.json",
    ]
    with pytest.raises(IndexFileError, match="holds no complete index"):
        RetrievalIndex.load(killed_run)


def test_resume_reuses_batches_and_equals_uninterrupted_run(
    killed_run, complete_index, checkpoint, catalogue, tmp_path, capsys
):
    out = tmp_path / "resumed"
    shutil.copytree(killed_run, out)
    assert main(_index_args(checkpoint, catalogue, out)) == 0
    log = capsys.readouterr().out
    assert "resuming: 2/5 batches already encoded" in log
    assert "5 total, 2 reused from an interrupted run, 3 encoded now" in log
    resumed, whole = RetrievalIndex.load(out), RetrievalIndex.load(complete_index)
    assert resumed.ids.tolist() == whole.ids.tolist()
    # Equal up to float noise (the killed run encoded in another process: thread count and
    # denormal mode may differ in the last bits); re-encoding is ruled out by the marker test.
    np.testing.assert_allclose(_vectors(resumed), _vectors(whole), rtol=0, atol=1e-5)
    assert (out / "listings.jsonl").read_text() == (complete_index / "listings.jsonl").read_text()
    assert not (out / ".partial").exists()


def test_resume_does_not_re_encode_finished_batches(killed_run, checkpoint, catalogue, tmp_path):
    # Replace batch 1's checkpointed vectors with a marker: a resumed run that re-encoded it
    # would overwrite the marker.
    out = tmp_path / "marked"
    shutil.copytree(killed_run, out)
    shard = out / ".partial" / "shard-000001.embeddings.npy"
    marker = np.zeros_like(np.load(shard))
    marker[:, 0] = 1.0
    np.save(shard, marker)
    assert main(_index_args(checkpoint, catalogue, out)) == 0
    vectors = _vectors(RetrievalIndex.load(out))
    np.testing.assert_array_equal(vectors[BATCH : 2 * BATCH], marker)
    assert not np.allclose(vectors[: 2 * BATCH], np.tile(marker, (2, 1)))


def test_resume_with_other_settings_is_refused(killed_run, checkpoint, catalogue, tmp_path, capsys):
    out = tmp_path / "other"
    shutil.copytree(killed_run, out)
    argv = _index_args(checkpoint, catalogue, out)
    argv[argv.index("--batch-size") + 1] = "4"
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "holds unfinished work made with other settings (differs in: batch_size)" in err
    assert "use --overwrite to start over" in err and "Traceback" not in err
    assert main([*argv, "--overwrite"]) == 0
    assert "0 reused from an interrupted run, 4 encoded now" in capsys.readouterr().out


def test_damaged_shard_is_re_encoded(killed_run, complete_index, checkpoint, catalogue, tmp_path):
    out = tmp_path / "damaged"
    shutil.copytree(killed_run, out)
    (out / ".partial" / "shard-000001.embeddings.npy").write_bytes(b"not an npy file")
    (out / ".partial" / ".tmp-shard-000002.embeddings.npy").write_bytes(b"half a write")
    assert main(_index_args(checkpoint, catalogue, out)) == 0
    # Same vectors up to float noise: batches encoded in another process (thread count, denormal
    # mode) may differ in the last bits; re-encoding is ruled out by the marker test below.
    np.testing.assert_allclose(
        _vectors(RetrievalIndex.load(out)),
        _vectors(RetrievalIndex.load(complete_index)),
        rtol=0,
        atol=1e-5,
    )


def test_complete_index_is_not_overwritten_silently(complete_index, checkpoint, catalogue, capsys):
    assert main(_index_args(checkpoint, catalogue, complete_index)) == 2
    assert "already holds a complete index; use --overwrite" in capsys.readouterr().err


def test_ivf_index_and_bad_split(checkpoint, catalogue, tmp_path, capsys):
    out = tmp_path / "ivf"
    assert main(_index_args(checkpoint, catalogue, out, "--kind", "ivf")) == 0
    index = RetrievalIndex.load(out)
    assert index.kind == "ivf" and index.count == 14
    assert main(_index_args(checkpoint, catalogue, tmp_path / "x", "--split", "nope")) == 2
    assert "split 'nope' is not a contract split" in capsys.readouterr().err


# ---------------------------------------------------------------------------------- search


def _gallery_row(catalogue: Path, i: int, tmp_path: Path) -> tuple[str, str, Path]:
    from datasets import load_from_disk

    row = load_from_disk(str(catalogue))["gallery"][i]
    path = tmp_path / f"query{i}.png"
    row["image"].save(path)
    return row["listing_id"], row["title"], path


def test_search_finds_the_listing_itself(complete_index, catalogue, tmp_path, capsys):
    listing_id, title, image = _gallery_row(catalogue, 4, tmp_path)
    argv = ["search", "--index", str(complete_index), "--image", str(image), "--title", title]
    assert main([*argv, "-k", "3", "--json"]) == 0
    hits = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(hits) == 3 and [h["rank"] for h in hits] == [1, 2, 3]
    assert hits[0]["id"] == listing_id and hits[0]["title"] == title
    assert hits[0]["score"] == pytest.approx(1.0, abs=1e-3)  # PNG round trip is lossless
    assert hits[0]["score"] >= hits[1]["score"] >= hits[2]["score"]
    assert main([*argv, "-k", "2"]) == 0
    text = capsys.readouterr().out.splitlines()
    assert text[0] == "top 2 of 14 for the photo + title"
    assert text[2].split()[:3] == ["1", f"{hits[0]['score']:.4f}", listing_id]
    assert text[2].endswith(title)


def test_search_single_modality_and_errors(complete_index, catalogue, tmp_path, capsys):
    _, title, _ = _gallery_row(catalogue, 2, tmp_path)
    assert main(["search", "--index", str(complete_index), "--title", title, "--json"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 10
    assert (
        main(["search", "--index", str(complete_index), "--image", str(tmp_path / "no.jpg")]) == 2
    )
    assert "no.jpg: no such file" in capsys.readouterr().err
    assert main(["search", "--index", str(complete_index)]) == 2
    assert "give a query" in capsys.readouterr().err
    assert main(["search", "--index", str(tmp_path), "--title", "x"]) == 2
    assert "holds no complete index" in capsys.readouterr().err


# -------------------------------------------------------------------------------- evaluate


def test_evaluate_writes_the_three_files(checkpoint, catalogue, tmp_path, capsys):
    from datasets import load_from_disk
    from transformers import AutoModel

    from afmrl.evaluation.runner import evaluate_embeddings

    out = tmp_path / "eval"
    argv = ["evaluate", "--model", checkpoint, "--data", str(catalogue), "--out", str(out)]
    assert main([*argv, "--compare", checkpoint, "--no-progress"]) == 0
    for name in ("metrics.json", "report.md", "recall_at_k.png"):
        assert (out / name).is_file(), name
    metrics = json.loads((out / "metrics.json").read_text())
    for key in ("recall@1", "recall@5", "recall@10", "map@10", "mrr", "ndcg@10"):
        assert 0.0 <= metrics[key] <= 1.0
        assert f"hard_{key}" in metrics
    assert metrics["num_queries"] == 8 and metrics["num_gallery"] == 14
    assert metrics["excluded_queries"] == 0
    names = list(metrics["models"])
    assert len(names) == 2 and names[1] == f"{names[0]}-2"
    assert metrics["models"][names[0]] == metrics["models"][names[1]]  # same checkpoint twice
    assert 0 < metrics["chance"]["recall@1"] < metrics["chance"]["recall@10"] <= 1
    # Independent recomputation from model.encode.
    data = load_from_disk(str(catalogue))
    model = AutoModel.from_pretrained(checkpoint, trust_remote_code=True)
    emb = {
        s: model.encode(images=list(data[s]["image"]), texts=list(data[s]["title"])).numpy()
        for s in ("query", "gallery")
    }
    q, g = data["query"], data["gallery"]
    ref = evaluate_embeddings(
        emb["query"], emb["gallery"], q["listing_id"], q["product_id"], g["listing_id"],
        g["product_id"], q["family_id"], g["family_id"],
    )  # fmt: skip
    for key, value in ref.metrics.items():
        assert metrics[key] == pytest.approx(value, abs=1e-6), key
    table = [line for line in (out / "report.md").read_text().splitlines() if line.startswith("|")]
    assert len(table) == 2 + 2 + 1
    assert "| chance (random ranking) |" in table[-1]


def test_evaluate_validation_split_image_task(checkpoint, catalogue, tmp_path):
    out = tmp_path / "val"
    argv = ["evaluate", "--model", checkpoint, "--data", str(catalogue), "--out", str(out)]
    assert main([*argv, "--split", "validation", "--task", "image", "--no-plot"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["config"]["query_split"] == "validation_query"
    assert metrics["num_gallery"] == 15 and metrics["config"]["task"] == "image"
    assert "image → image" in (out / "report.md").read_text()
    assert not (out / "recall_at_k.png").exists()


def test_evaluate_bad_input(checkpoint, catalogue, tmp_path, capsys):
    from datasets import load_from_disk

    stripped = tmp_path / "no-teacher"
    data = load_from_disk(str(catalogue))
    for split in data:
        if "teacher_attributes" in data[split].column_names:
            data[split] = data[split].remove_columns("teacher_attributes")
    data.save_to_disk(str(stripped))
    argv = ["evaluate", "--model", checkpoint, "--out", str(tmp_path / "o"), "--no-progress"]
    assert main([*argv, "--data", str(stripped), "--attributes", "teacher"]) == 2
    err = capsys.readouterr().err
    assert "split 'query' has no 'teacher_attributes' column" in err
    assert main([*argv, "--data", str(tmp_path / "missing")]) == 2
    assert "no such file or folder" in capsys.readouterr().err
    assert main([*argv, "--data", str(catalogue), "--batch-size", "0"]) == 2
    assert "--batch-size: expected a positive integer, got '0'" in capsys.readouterr().err


@pytest.mark.slow
def test_evaluate_with_baselines_end_to_end(tmp_path):
    """`afmrl synth` + `afmrl init` + `afmrl evaluate --baselines` on a 150-product catalogue."""
    cat, model, out = tmp_path / "cat", tmp_path / "model", tmp_path / "eval"
    assert main(["synth", "--out", str(cat), "--products", "150", "--num-proc", "1"]) == 0
    assert main(["init", "--out", str(model), "--data", str(cat)]) == 0
    argv = ["evaluate", "--model", str(model), "--data", str(cat), "--out", str(out)]
    assert main([*argv, "--baselines", "--baseline-model", str(model), "--no-progress"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    models = metrics["models"]
    assert list(models)[1:] == [
        "baseline: title BM25 (bm25s)",
        "baseline: title-only (MiniLM)",
        "baseline: image-only (EfficientNet-Lite0)",
        "baseline: untrained fusion",
    ]
    # The untrained model is the fusion baseline: same numbers.
    assert models["model"]["recall@1"] == models["baseline: untrained fusion"]["recall@1"]
    # Well above chance, well below perfect (27 queries here: the 10x check is on the default
    # catalogue, reported by the evaluation note).
    chance = metrics["chance"]["recall@1"]
    for name in (
        "baseline: title BM25 (bm25s)",
        "baseline: title-only (MiniLM)",
        "baseline: image-only (EfficientNet-Lite0)",
    ):
        assert 3 * chance < models[name]["recall@1"] < 0.95, (name, models[name], chance)
    report = (out / "report.md").read_text()
    assert report.count("| baseline: ") == 4


# ------------------------------------------------------------------- generated attributes


@pytest.fixture(scope="module")
def extractor_checkpoint() -> str:
    from tiny_models import saved_tiny_checkpoint

    return saved_tiny_checkpoint("dual", extractor=True)


def test_index_with_generated_attributes(extractor_checkpoint, catalogue, tmp_path):
    from datasets import load_from_disk

    from afmrl.models import load_model

    out = tmp_path / "gen"
    extra = ("--attributes", "generated", "--max-new-tokens", "8")
    assert main(_index_args(extractor_checkpoint, catalogue, out, *extra)) == 0
    rows = [json.loads(line) for line in (out / "listings.jsonl").open()]
    assert len(rows) == 14 and all(isinstance(r["attributes"], str) for r in rows)
    # The stored vector is the listing encoded with the attributes the extractor generated.
    model = load_model(extractor_checkpoint)
    first = load_from_disk(str(catalogue))["gallery"][0]
    expected = model.encode(
        images=[first["image"]], texts=[first["title"]], attributes=[rows[0]["attributes"]]
    ).numpy()
    np.testing.assert_allclose(_vectors(RetrievalIndex.load(out))[:1], expected, atol=1e-5)
    info = json.loads((out / "afmrl_index.json").read_text())
    assert info["attributes"] == "generated" and info["max_new_tokens"] == 8


def test_evaluate_generated_attributes_are_cached(extractor_checkpoint, catalogue, tmp_path):
    out = tmp_path / "eval-gen"
    argv = ["evaluate", "--model", extractor_checkpoint, "--data", str(catalogue)]
    argv += ["--out", str(out), "--attributes", "generated", "--max-new-tokens", "8"]
    assert main([*argv, "--no-plot", "--no-progress"]) == 0
    cache = sorted((out / "cache").rglob("shard-*.json"))
    assert sorted({p.parent.name for p in cache}) == ["gallery", "query"]
    stamps = [p.stat().st_mtime_ns for p in cache]
    first = json.loads((out / "metrics.json").read_text())
    assert main([*argv, "--no-plot", "--no-progress"]) == 0
    assert [p.stat().st_mtime_ns for p in cache] == stamps  # reused, not regenerated
    assert json.loads((out / "metrics.json").read_text())["models"] == first["models"]
    assert first["config"]["attributes"] == "generated"
