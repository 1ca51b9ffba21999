"""RetrievalIndex past RAM: on-disk inverted lists and shards against the same index in RAM.

The reference is always the same IVF index built in RAM (same training sample, same vectors, same
order): with the same ``nprobe`` the on-disk and sharded variants must return exactly the same ids
and scores. Plus fresh-process round trips, every file's sha256, the model check and ``nprobe``.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from tiny_models import REPO

from afmrl.retrieval.index import IndexFileError, ModelMismatchError, RetrievalIndex

N, DIM, NLIST = 6_000, 32, 32


def _clustered(n: int, seed: int, clusters: int = 40) -> np.ndarray:
    """L2-normalised points around random centres (the same centres for every seed)."""
    centres = np.random.default_rng(1234).standard_normal((clusters, DIM))
    rng = np.random.default_rng(seed)
    x = centres[rng.integers(0, clusters, n)] + 0.5 * rng.standard_normal((n, DIM))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x.astype(np.float32)


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Gallery ``[N, D]``, its ids, and held-out queries ``[200, D]`` from the same mixture."""
    return _clustered(N, seed=0), np.arange(N, dtype=np.int64) * 5 + 3, _clustered(200, seed=1)


def _build(data, kind="ivfpq", **options) -> RetrievalIndex:
    gallery, ids, _ = data
    if kind == "ivfpq":
        options = {"pq_m": 8, "pq_nbits": 6, **options}  # 64 codes per sub-quantizer: quick
    return RetrievalIndex.build(
        gallery, ids, kind, nlist=NLIST, train_size=2_500, batch_size=1_500, **options
    )


@pytest.fixture(scope="module")
def reference(data) -> dict[str, RetrievalIndex]:
    """The IVF indexes in RAM, one shard, built once."""
    return {kind: _build(data, kind) for kind in ("ivf", "ivfpq")}


# ------------------------------------------------------------------ equal to the index in RAM


@pytest.mark.parametrize(
    ("kind", "lists", "shards"),
    [("ivfpq", "ondisk", 1), ("ivfpq", "ram", 3), ("ivfpq", "ondisk", 3), ("ivf", "ondisk", 2)],
)
def test_ondisk_and_sharded_return_what_the_ram_index_returns(
    data, reference, kind, lists, shards, tmp_path
):
    spill = tmp_path / "spill"
    spill.mkdir()
    reference = reference[kind]
    # A tiny spill budget: the lists are written out in many blocks while adding.
    index = _build(data, kind, lists=lists, shards=shards, spill_bytes=7_000, spill_dir=spill)
    if lists == "ondisk":
        blocks = list(spill.rglob("*.faiss"))
        assert len(blocks) >= 2 * shards, blocks
        with pytest.raises(ValueError, match="searchable once saved"):
            index.search(data[2][:1])
        index.save(tmp_path / "saved")
        assert not any(spill.rglob("*.faiss"))  # merged and removed
        loaded = RetrievalIndex.load(tmp_path / "saved")
        candidates = [index, loaded]
    else:
        candidates = [index]
    queries = data[2]
    for nprobe in (1, 5, NLIST):
        want_scores, want_ids = reference.search(queries, k=10, nprobe=nprobe)
        for candidate in candidates:
            scores, ids = candidate.search(queries, k=10, nprobe=nprobe)
            np.testing.assert_array_equal(ids, want_ids)
            np.testing.assert_array_equal(scores, want_scores)
    saved = candidates[-1]
    assert saved.count == N and saved.shards == shards and saved.lists == lists
    assert len(saved.faiss_parts) == shards
    sizes = [int(p.ntotal) for p in saved.faiss_parts]
    assert sum(sizes) == N and max(sizes) - min(sizes) <= 1  # dealt round-robin


def test_ondisk_folder_lists_every_file_with_its_sha256(data, tmp_path):
    import hashlib

    index = _build(data, lists="ondisk", shards=2)
    index.save(tmp_path / "ix")
    meta = json.loads((tmp_path / "ix" / "index.json").read_text())
    roles = sorted((f.get("shard", -1), f["role"]) for f in meta["files"])
    assert roles == [(-1, "ids"), (0, "index"), (0, "lists"), (1, "index"), (1, "lists")]
    assert meta["ids"] is None  # int ids: an int64 .npy file, memory-mapped on load
    on_disk = sorted(p.name for p in (tmp_path / "ix").iterdir())
    assert on_disk == sorted([f["name"] for f in meta["files"]] + ["index.json"])
    for f in meta["files"]:
        assert hashlib.sha256((tmp_path / "ix" / f["name"]).read_bytes()).hexdigest() == f["sha256"]
    assert meta["params"] == {
        "nlist": NLIST, "nprobe": 16, "pq_m": 8, "pq_nbits": 6, "lists": "ondisk", "shards": 2,
    }  # fmt: skip
    # The lists are memory-mapped from the file, not copied: the faiss index holds OnDiskInvertedLists.
    import faiss

    loaded = RetrievalIndex.load(tmp_path / "ix")
    lists = faiss.downcast_InvertedLists(faiss.extract_index_ivf(loaded.faiss_parts[0]).invlists)
    assert isinstance(lists, faiss.OnDiskInvertedLists)
    assert Path(lists.filename).parent == tmp_path / "ix"
    assert isinstance(loaded.ids, np.memmap)
    np.testing.assert_array_equal(loaded.ids, data[1])
    with pytest.raises(ValueError, match="on disk and read-only"):
        loaded.add(data[0][:3], [-1, -2, -3])


def test_round_trip_in_a_fresh_process_after_moving_the_folder(data, reference, tmp_path):
    _build(data, lists="ondisk", shards=2).save(tmp_path / "built")
    shutil.move(tmp_path / "built", tmp_path / "moved")  # the lists are found beside the index
    np.save(tmp_path / "q.npy", data[2])
    code = """
        import json, sys
        import numpy as np
        from afmrl.retrieval.index import RetrievalIndex
        index = RetrievalIndex.load(sys.argv[1])
        scores, ids = index.search(np.load(sys.argv[2]), k=10, nprobe=7)
        print(json.dumps({"ids": ids.tolist(), "scores": scores.tolist()}))
    """
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code), str(tmp_path / "moved"), str(tmp_path / "q.npy")],
        cwd=REPO, capture_output=True, text=True, timeout=120, check=True,
    )  # fmt: skip
    out = json.loads(proc.stdout)  # faiss' own messages do not reach stdout
    want_scores, want_ids = reference["ivfpq"].search(data[2], k=10, nprobe=7)
    np.testing.assert_array_equal(np.array(out["ids"]), want_ids)
    np.testing.assert_array_equal(np.array(out["scores"], dtype=np.float32), want_scores)


# ------------------------------------------------------------------------------- refusals


@pytest.mark.parametrize("shards", [1, 2])
def test_corrupt_truncated_or_missing_lists_file_is_refused(data, tmp_path, shards):
    folder = tmp_path / "ix"
    _build(data, lists="ondisk", shards=shards).save(folder)
    meta = json.loads((folder / "index.json").read_text())
    lists = folder / [f for f in meta["files"] if f["role"] == "lists"][-1]["name"]
    original = lists.read_bytes()
    middle = len(original) // 2
    lists.write_bytes(original[:middle] + bytes([original[middle] ^ 1]) + original[middle + 1 :])
    with pytest.raises(IndexFileError, match=rf"{lists.name} is corrupt or incomplete: its sha256"):
        RetrievalIndex.load(folder)
    lists.write_bytes(original[:-100])
    with pytest.raises(IndexFileError, match=rf"{lists.name} is corrupt or incomplete"):
        RetrievalIndex.load(folder)
    lists.unlink()
    with pytest.raises(IndexFileError, match=rf"{lists.name} \(named in .*index.json\) is missing"):
        RetrievalIndex.load(folder)
    lists.write_bytes(original)
    assert RetrievalIndex.load(folder).count == N
    ids_file = folder / next(f["name"] for f in meta["files"] if f["role"] == "ids")
    ids_file.rename(folder / "elsewhere.npy")
    with pytest.raises(IndexFileError, match=rf"{ids_file.name} \(named in .*\) is missing"):
        RetrievalIndex.load(folder)


def test_mismatched_model_is_refused_naming_both(data, tmp_path):
    index = _build(data, lists="ondisk")
    index.built_with = {"model": "ckpt-a", "model_fingerprint": "a" * 64}
    index.save(tmp_path / "ix")
    loaded = RetrievalIndex.load(tmp_path / "ix")
    assert loaded.built_with == {"model": "ckpt-a", "model_fingerprint": "a" * 64}
    loaded.check_model("a" * 64, "ckpt-a")  # the same weights pass
    with pytest.raises(ModelMismatchError) as err:
        loaded.check_model("b" * 64, "--model ckpt-b", where="the index ix")
    message = str(err.value)
    assert "\n" not in message
    assert (
        "ckpt-a (weights aaaaaaaaaaaa)" in message
        and "--model ckpt-b (weights bbbbbbbbbbbb)" in message
    )


def test_bad_combinations_are_refused(tmp_path):
    with pytest.raises(ValueError, match="need an IVF kind"):
        RetrievalIndex(8, "flat", lists="ondisk")
    with pytest.raises(ValueError, match="need an IVF kind"):
        RetrievalIndex(8, "hnsw", shards=2)
    with pytest.raises(ValueError, match="lists must be one of"):
        RetrievalIndex(8, "ivf", lists="ssd")
    with pytest.raises(ValueError, match="nprobe applies to IVF"):
        RetrievalIndex(8, "flat").set_nprobe(4)
    index = RetrievalIndex(8, "ivf", nlist=2, lists="ondisk", shards=3)
    index.train(np.random.default_rng(0).standard_normal((100, 8)))
    index.add(np.ones((2, 8)), [1, 2])
    with pytest.raises(ValueError, match="shard 2 is empty"):
        index.save(tmp_path / "ix")


# ---------------------------------------------------------------------------------- nprobe


def _recall(found: np.ndarray, truth: np.ndarray) -> float:
    return float(
        np.mean([len(set(f) & set(t)) / len(t) for f, t in zip(found, truth, strict=True)])
    )


def test_nprobe_nlist_is_exhaustive_and_recall_grows_with_nprobe(data, reference, tmp_path):
    gallery, ids, queries = data
    _, exact = RetrievalIndex.build(gallery, ids, "flat").search(queries, k=10)
    _build(data, "ivf", lists="ondisk", shards=2).save(tmp_path / "ivf")
    ivf = RetrievalIndex.load(tmp_path / "ivf")
    # Every cell visited: IVF-Flat is exact search.
    np.testing.assert_array_equal(ivf.search(queries, k=10, nprobe=NLIST)[1], exact)
    recalls = [_recall(ivf.search(queries, k=10, nprobe=p)[1], exact) for p in (1, 2, 16)]
    assert recalls[0] < recalls[1] <= recalls[2] and recalls[0] < 0.99, recalls
    # The default nprobe is the recorded one, and set_nprobe changes it.
    ivf.set_nprobe(4)
    np.testing.assert_array_equal(
        ivf.search(queries, k=10)[1], ivf.search(queries, k=10, nprobe=4)[1]
    )
    # IVF-PQ on disk: nprobe = nlist scans every code, as the in-RAM index does; recall grows too.
    _build(data, lists="ondisk").save(tmp_path / "pq")
    pq = RetrievalIndex.load(tmp_path / "pq")
    pq_recalls = [_recall(pq.search(queries, k=10, nprobe=p)[1], exact) for p in (1, 4, NLIST)]
    assert pq_recalls[0] < pq_recalls[1] <= pq_recalls[2], pq_recalls
    np.testing.assert_array_equal(
        pq.search(queries, k=10, nprobe=NLIST)[1],
        reference["ivfpq"].search(queries, k=10, nprobe=NLIST)[1],
    )


# ---------------------------------------------------------------------------- the commands


@pytest.fixture(scope="module")
def catalogue(tmp_path_factory) -> Path:
    from afmrl.data.synthetic import CatalogConfig, build_catalog

    out = tmp_path_factory.mktemp("catalogue") / "cat"
    build_catalog(CatalogConfig(products=40, image_size=64), out, num_proc=1, log=lambda _: None)
    return out


@pytest.mark.slow
def test_index_and_search_commands_on_disk_with_nprobe_and_the_model_check(
    catalogue, tmp_path, capsys
):
    from tiny_models import saved_tiny_checkpoint, tiny_dual_model

    from afmrl.cli import main

    checkpoint = saved_tiny_checkpoint("dual")
    other = tmp_path / "other-model"
    tiny_dual_model(seed=7).save_pretrained(other)
    out = tmp_path / "ix"
    argv = ["index", "--model", checkpoint, "--data", str(catalogue), "--out", str(out),
            "--kind", "ivf", "--nlist", "2", "--nprobe", "1", "--lists", "ondisk", "--shards", "2",
            "--batch-size", "4", "--no-progress"]  # fmt: skip
    assert main(argv) == 0
    capsys.readouterr()
    index = RetrievalIndex.load(out)
    assert (index.kind, index.lists, index.shards, index.params["nprobe"]) == (
        "ivf",
        "ondisk",
        2,
        1,
    )
    info = json.loads((out / "afmrl_index.json").read_text())
    assert info["params"]["lists"] == "ondisk"
    assert index.built_with["model_fingerprint"] == info["model_fingerprint"]
    from datasets import load_from_disk

    title = load_from_disk(str(catalogue))["gallery"][3]["title"]
    search = ["search", "--index", str(out), "--title", title, "--json", "-k", "14"]
    found = {}
    for nprobe in ("1", "2"):
        assert main([*search, "--nprobe", nprobe]) == 0
        found[nprobe] = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    # nprobe = nlist = 2 visits both cells: all 14 listings; one cell holds fewer.
    assert len(found["2"]) == 14 and len(found["1"]) < 14
    assert main([*search, "--model", str(other)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "model mismatch" in err
    assert str(other) in err and info["model_fingerprint"][:12] in err and checkpoint in err
    bad = ["index", "--model", checkpoint, "--data", str(catalogue), "--out", str(tmp_path / "f"),
           "--kind", "flat", "--lists", "ondisk"]  # fmt: skip
    assert main(bad) == 2
    assert "--lists ondisk and --shards need --kind ivf or ivfpq" in capsys.readouterr().err


@pytest.mark.slow
def test_index_benchmark_runs_small(tmp_path):
    """benchmarks/bench_index.py at toy sizes: every kind runs; exact search has recall 1."""
    out = tmp_path / "bench.json"
    subprocess.run(
        [sys.executable, "-m", "benchmarks.bench_index", "--n", "3000", "--dim", "32",
         "--queries", "40", "--clusters", "20", "--nprobes", "4,16", "--single", "5",
         "--spill-mb", "1", "--work", str(tmp_path / "work"), "--json", str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=600, check=True,
    )  # fmt: skip
    results = json.loads(out.read_text())["results"]
    assert set(results) == {"flat", "ivf", "ivfpq", "ivfpq-ondisk", "ivfpq-shards", "hnsw"}
    assert results["flat"]["search"]["rows"][0]["recall"] == 1.0
    # The same IVF-PQ in RAM and on disk finds the same neighbours.
    ram, disk, shards = (results[k]["search"]["rows"] for k in ("ivfpq", "ivfpq-ondisk",
                                                                 "ivfpq-shards"))  # fmt: skip
    assert (
        [r["recall"] for r in ram] == [r["recall"] for r in disk] == [r["recall"] for r in shards]
    )
    assert results["ivfpq-ondisk"]["build"]["params"]["lists"] == "ondisk"
