"""``afmrl index`` / ``afmrl extract`` split across 2 real processes (gloo on the CPU).

The launches are real: ``torchrun --standalone --nproc-per-node 2 -m afmrl index ...`` and
``accelerate launch --multi_gpu --num_processes 2 ... -m afmrl extract ...`` in a subprocess, each
process encoding its ``split_dataset_by_node`` part, the main one writing the output. Each result is
compared with a single-process run of the same command in this process: same ids in the same
order, vectors within 1e-5, the same generated attributes. The kill test SIGKILLs rank 1 of a
launch mid-encoding (torchrun then ends rank 0), reruns the launch and checks that the finished
shards are reused (log, and a marker planted in one of them) and that the index equals the
uninterrupted one.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from tiny_models import REPO

from afmrl.cli import main
from afmrl.retrieval.index import IndexFileError, RetrievalIndex
from afmrl.retrieval.processes import Processes

BATCH = 2


# ------------------------------------------------------------------------- helpers, fixtures


def _env(tmp_path: Path) -> dict[str, str]:
    # TMPDIR: torchrun leaves torchelastic_* folders; HF_HOME: no user accelerate config is read.
    return {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "HF_HUB_OFFLINE": "1",
        "TMPDIR": str(tmp_path),
        "HF_HOME": str(tmp_path / "hf"),
    }


def _torchrun(*argv: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
            "-m", "afmrl", *argv]  # fmt: skip


def _index_args(checkpoint: str, catalogue: Path, out: Path, batch: int = BATCH) -> list[str]:
    return ["index", "--model", checkpoint, "--data", str(catalogue), "--out", str(out),
            "--batch-size", str(batch), "--no-progress"]  # fmt: skip


def _vectors(index: RetrievalIndex) -> np.ndarray:
    return index.faiss_index.reconstruct_n(0, index.count)


def _gallery(catalogue: Path):
    from datasets import load_from_disk

    return load_from_disk(str(catalogue))["gallery"]


def _part_rows(catalogue: Path) -> list[int]:
    """Rows of each of the 2 processes' parts."""
    from datasets.distributed import split_dataset_by_node

    gallery = _gallery(catalogue)
    return [len(split_dataset_by_node(gallery, rank=r, world_size=2)) for r in (0, 1)]


@pytest.fixture(scope="module")
def catalogue(tmp_path_factory) -> Path:
    """A 300-product synthetic catalogue (64 px): about 110 gallery rows, enough batches for a kill
    to land mid-encoding."""
    from afmrl.data.synthetic import CatalogConfig, build_catalog

    out = tmp_path_factory.mktemp("catalogue") / "cat"
    build_catalog(CatalogConfig(products=300, image_size=64), out, num_proc=1, log=lambda _: None)
    return out


@pytest.fixture(scope="module")
def one_process(tmp_path_factory, checkpoint, catalogue) -> RetrievalIndex:
    """The reference: ``afmrl index`` in this one process."""
    out = tmp_path_factory.mktemp("one") / "index"
    assert main(_index_args(checkpoint, catalogue, out)) == 0
    return RetrievalIndex.load(out)


def _assert_same_index(got: RetrievalIndex, reference: RetrievalIndex) -> None:
    assert got.ids.tolist() == reference.ids.tolist()
    difference = np.abs(_vectors(got) - _vectors(reference)).max()
    assert difference < 1e-5, difference


# ------------------------------------------------------------------------------- the helpers


def test_one_process_is_the_whole_split(tmp_path):
    from datasets import Dataset

    ds = Dataset.from_dict({"listing_id": [f"l{i}" for i in range(7)]})
    alone = Processes()
    assert alone.main and alone.part(ds) is ds and alone.part_folder(tmp_path) == tmp_path
    assert alone.gather("x") == ["x"] and alone.label() == ""
    alone.wait()  # no process group: returns at once


def test_parts_are_contiguous_and_cover_the_split_in_order(tmp_path):
    from datasets import Dataset

    ds = Dataset.from_dict({"listing_id": [f"l{i}" for i in range(7)]})
    parts = [Processes(r, 3).part(ds)["listing_id"] for r in range(3)]
    assert [len(p) for p in parts] == [3, 2, 2]
    assert [i for p in parts for i in p] == ds["listing_id"]
    assert Processes(1, 3).part_folder(tmp_path) == tmp_path / "part-00001-of-00003"
    assert Processes(2, 3).label() == "process 2 of 3: " and not Processes(2, 3).main


# ------------------------------------------------------------------------------ afmrl index


@pytest.mark.slow
def test_two_processes_give_the_index_of_one(tmp_path, checkpoint, catalogue, one_process):
    out = tmp_path / "two"
    proc = subprocess.run(
        _torchrun(*_index_args(checkpoint, catalogue, out)),
        cwd=REPO, env=_env(tmp_path), capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    n0, n1 = _part_rows(catalogue)
    batches = -(-n0 // BATCH) + -(-n1 // BATCH)
    assert f"[index] batches: {batches} total, 0 reused" in proc.stdout
    assert proc.stdout.count("[index] wrote") == 1  # the main process alone writes
    two = RetrievalIndex.load(out)
    assert two.count == len(_gallery(catalogue)) == one_process.count > 100
    _assert_same_index(two, one_process)
    assert not (out / ".partial").exists()
    info = json.loads((out / "afmrl_index.json").read_text())
    assert info["processes"] == 2 and info["num_rows"] == two.count
    rows = [json.loads(line) for line in (out / "listings.jsonl").open()]
    assert [r["id"] for r in rows] == _gallery(catalogue)["listing_id"]


def _kill_rank_mid_encoding(argv: list[str], out: Path, tmp_path: Path, rank: int) -> str:
    """Launch ``argv`` under torchrun, SIGKILL process ``rank`` once it checkpointed 2 batches;
    returns the launch's output."""
    import psutil

    part = out / ".partial" / f"part-{rank:05d}-of-00002"
    with open(tmp_path / "killed.log", "w+") as log:
        launch = subprocess.Popen(
            _torchrun(*argv), cwd=REPO, env=_env(tmp_path), stdout=log, stderr=subprocess.STDOUT
        )
        try:
            deadline = time.monotonic() + 300
            while not (part / "shard-000001.json").exists():
                assert launch.poll() is None, "the launch ended before the kill"
                assert time.monotonic() < deadline, "no batch checkpointed in 300 s"
                time.sleep(0.005)
            workers = [  # torchrun's own children are the workers
                p
                for p in psutil.Process(launch.pid).children()
                if p.environ().get("RANK") == str(rank)
            ]
            assert len(workers) == 1, workers
            workers[0].send_signal(signal.SIGKILL)
            launch.wait(timeout=300)
        finally:
            if launch.poll() is None:
                launch.kill()
                launch.wait()
        log.seek(0)
        output = log.read()
    assert launch.returncode != 0, output[-3000:]
    return output


def _finished(part: Path) -> list[Path]:
    return sorted(part.glob("shard-*.json"))


@pytest.mark.slow
def test_killed_process_resumes_to_the_uninterrupted_index(
    tmp_path, checkpoint, catalogue, one_process, capsys
):
    out = tmp_path / "killed"
    argv = _index_args(checkpoint, catalogue, out, batch=1)
    _kill_rank_mid_encoding(argv, out, tmp_path, rank=1)
    n0, n1 = _part_rows(catalogue)
    parts = [out / ".partial" / f"part-{r:05d}-of-00002" for r in (0, 1)]
    done = [len(_finished(p)) for p in parts]
    assert 2 <= done[1] < n1, f"the kill did not land mid-encoding: {done[1]} of {n1} batches"
    with pytest.raises(IndexFileError, match="holds no complete index"):
        RetrievalIndex.load(out)
    marked, alone = tmp_path / "marked", tmp_path / "alone"
    shutil.copytree(out, marked)
    shutil.copytree(out, alone)

    # The rerun: every process reuses its finished batches, encodes the rest, and the index is
    # the uninterrupted one.
    rerun = subprocess.run(_torchrun(*argv), cwd=REPO, env=_env(tmp_path), capture_output=True,
                           text=True, timeout=600)  # fmt: skip
    output = rerun.stdout
    assert rerun.returncode == 0, output[-2000:] + rerun.stderr[-4000:]
    assert f"process 1 of 2: resuming: {done[1]}/{n1} batches already encoded" in output
    if done[0]:
        assert f"process 0 of 2: resuming: {done[0]}/{n0} batches already encoded" in output
    reused = re.search(r"\[index\] batches: (\d+) total, (\d+) reused", output)
    assert reused and reused.groups() == (str(n0 + n1), str(sum(done)))
    _assert_same_index(RetrievalIndex.load(out), one_process)
    assert not (out / ".partial").exists()

    # Proof that a finished batch is read, not re-encoded: a marker planted in rank 1's second
    # shard ends up in the index at that row.
    shard = marked / ".partial" / "part-00001-of-00002" / "shard-000001.embeddings.npy"
    marker = np.zeros_like(np.load(shard))
    marker[:, 0] = 1.0
    np.save(shard, marker)
    proc = subprocess.run(_torchrun(*_index_args(checkpoint, catalogue, marked, batch=1)),
                          cwd=REPO, env=_env(tmp_path), capture_output=True, text=True,
                          timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    vectors = _vectors(RetrievalIndex.load(marked))
    np.testing.assert_array_equal(vectors[n0 + 1], marker[0])
    np.testing.assert_allclose(vectors[n0], _vectors(one_process)[n0], rtol=0, atol=1e-5)

    # Parts are reused only by as many processes: one process says so and starts afresh.
    capsys.readouterr()
    assert main(_index_args(checkpoint, catalogue, alone, batch=1)) == 0
    log = capsys.readouterr().out
    assert "also holds unfinished work of a run on 2 process(es)" in log
    assert f"batches: {n0 + n1} total, 0 reused" in log
    _assert_same_index(RetrievalIndex.load(alone), one_process)


# ---------------------------------------------------------------------------- afmrl extract


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_extract_the_attributes_of_one(tmp_path):
    from datasets import load_from_disk
    from tiny_models import tiny_catalog, trained_llava_checkpoint

    model, data = trained_llava_checkpoint(), tiny_catalog()
    argv = ["extract", "--model", model, "--data", data, "--splits", "gallery", "query",
            "--no-pos-view", "--batch-size", "1", "--max-new-tokens", "24", "--no-progress"]  # fmt: skip
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu",
              "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
              "--dynamo_backend", "no", "--main_process_port", str(_free_port()),
              "-m", "afmrl"]  # fmt: skip
    two = tmp_path / "two"
    proc = subprocess.run(
        [*launch, *argv, "--out", str(two), "--keep-work"],
        cwd=REPO, env=_env(tmp_path), capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    assert proc.stdout.count("[extract] wrote") == 1
    parts = sorted(p.name for p in (Path(f"{two}.partial") / "gallery").iterdir())
    assert parts == ["part-00000-of-00002", "part-00001-of-00002"]

    one = tmp_path / "one"
    assert main([*argv, "--out", str(one), "--threads", "1"]) == 0
    got, expected = load_from_disk(str(two)), load_from_disk(str(one))
    for split in ("gallery", "query"):
        assert got[split]["listing_id"] == expected[split]["listing_id"]
        assert got[split]["attributes"] == expected[split]["attributes"], split
    assert "attributes" not in got["train"].column_names
    texts = [*expected["gallery"]["attributes"], *expected["query"]["attributes"]]
    assert len(set(texts)) > 2  # not a constant column
    report = json.loads((two / "extraction.json").read_text())
    assert report["splits"]["gallery"]["attributes"]["rows"] == len(expected["gallery"])
