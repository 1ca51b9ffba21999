"""RetrievalIndex: exact search vs numpy, ids, ties, approximate recall, atomic save / load."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from tiny_models import REPO

from afmrl.retrieval.index import IndexFileError, RetrievalIndex
from afmrl.retrieval.ranking import rank_by_scores


def _random(n: int, dim: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)


def _clustered(n: int, dim: int, clusters: int, seed: int) -> np.ndarray:
    """L2-normalised points around random centres: the structure real embeddings have."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dim))
    x = centres[rng.integers(0, clusters, n)] + 0.35 * rng.standard_normal((n, dim))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x.astype(np.float32)


def _run_child(code: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter (the repo on its path), arguments in ``sys.argv[1:]``."""
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=check,
    )


# --------------------------------------------------------------------------- exact search


@pytest.mark.parametrize("metric", ["ip", "l2"])
def test_exact_search_equals_numpy_brute_force(metric):
    gallery, queries = _random(3000, 48, seed=0), _random(60, 48, seed=1)
    index = RetrievalIndex.build(gallery, np.arange(3000) * 3 + 7, metric=metric, batch_size=700)
    scores, ids = index.search(queries, k=10)
    if metric == "ip":
        full = queries.astype(np.float64) @ gallery.T.astype(np.float64)
    else:
        diff = queries[:, None, :].astype(np.float64) - gallery[None, :, :]
        full = -(diff**2).sum(axis=2)
    ref_scores, ref_pos = rank_by_scores(full, None, 10)
    np.testing.assert_array_equal(ids, ref_pos * 3 + 7)
    expected = ref_scores if metric == "ip" else -ref_scores
    np.testing.assert_allclose(scores, expected, rtol=1e-4, atol=1e-3)


def test_string_ids_round_trip_and_single_query():
    gallery = _random(200, 16, seed=2)
    names = [f"listing-{i:04d}" for i in range(200)]
    index = RetrievalIndex(16)
    for start in range(0, 200, 64):  # several add() calls
        index.add(gallery[start : start + 64], names[start : start + 64])
    assert index.ids.tolist() == names
    assert len(index) == 200
    # each gallery vector's nearest neighbour (by L2-normalised cosine) is itself
    unit = gallery / np.linalg.norm(gallery, axis=1, keepdims=True)
    cos_index = RetrievalIndex.build(unit, names)
    _, top = cos_index.search(unit, k=1)
    assert top[:, 0].tolist() == names
    scores, ids = cos_index.search(unit[5], k=3)
    assert ids.shape == (3,) and ids[0] == "listing-0005"
    assert scores[0] == pytest.approx(1.0, abs=1e-5)


def test_ties_follow_gallery_order_like_rank_by_scores():
    # Small integer vectors: every score is exact, so duplicates tie exactly.
    rng = np.random.default_rng(3)
    base = rng.integers(-2, 3, size=(40, 8)).astype(np.float32)
    gallery = base[rng.integers(0, 40, size=400)]  # ~10 copies of each vector
    queries = rng.integers(-2, 3, size=(30, 8)).astype(np.float32)
    index = RetrievalIndex.build(gallery, [f"g{i}" for i in range(400)], batch_size=128)
    for k in (1, 7, 25):
        scores, ids = index.search(queries, k=k)
        ref_scores, ref_ids = rank_by_scores(queries @ gallery.T, [f"g{i}" for i in range(400)], k)
        np.testing.assert_array_equal(ids, ref_ids)
        np.testing.assert_array_equal(scores, ref_scores)


def test_k_larger_than_index_is_clipped():
    index = RetrievalIndex.build(_random(5, 4, seed=4), ["a", "b", "c", "d", "e"])
    _, ids = index.search(_random(2, 4, seed=5), k=50)
    assert ids.shape == (2, 5) and sorted(ids[0]) == ["a", "b", "c", "d", "e"]


def test_reserve_keeps_results_identical():
    gallery, queries = _random(2000, 32, seed=6), _random(20, 32, seed=7)
    plain = RetrievalIndex(32)
    reserved = RetrievalIndex(32)
    reserved.reserve(2000)
    for start in range(0, 2000, 300):
        plain.add(gallery[start : start + 300], range(start, min(2000, start + 300)))
        reserved.add(gallery[start : start + 300], range(start, min(2000, start + 300)))
    for a, b in zip(plain.search(queries, 10), reserved.search(queries, 10), strict=True):
        np.testing.assert_array_equal(a, b)


def test_build_from_a_memmap(tmp_path):
    gallery = _random(1000, 16, seed=8)
    np.save(tmp_path / "g.npy", gallery.astype(np.float64))
    mapped = np.load(tmp_path / "g.npy", mmap_mode="r")
    a = RetrievalIndex.build(mapped, np.arange(1000), batch_size=128)
    b = RetrievalIndex.build(gallery, np.arange(1000))
    q = _random(5, 16, seed=9)
    for x, y in zip(a.search(q, 5), b.search(q, 5), strict=True):
        np.testing.assert_array_equal(x, y)


# ----------------------------------------------------------------------------- bad input


def test_bad_input_gives_clear_errors():
    index = RetrievalIndex(8)
    with pytest.raises(ValueError, match="the index is empty"):
        index.search(np.zeros((1, 8)), 1)
    with pytest.raises(ValueError, match=r"shape \[N, 8\]"):
        index.add(np.zeros((3, 7)), [1, 2, 3])
    with pytest.raises(ValueError, match="got 3 vectors but 2 ids"):
        index.add(np.zeros((3, 8)), [1, 2])
    with pytest.raises(ValueError, match="id 2 appears twice in this batch"):
        index.add(np.zeros((3, 8)), [1, 2, 2])
    with pytest.raises(TypeError, match="all be str or all be int, got a mix of str and int"):
        index.add(np.zeros((2, 8)), [1, "b"])
    with pytest.raises(TypeError, match=r"all be str or all be int, got float 1\.5"):
        index.add(np.zeros((1, 8)), [1.5])
    bad = np.zeros((3, 8))
    bad[2, 4] = np.nan
    with pytest.raises(ValueError, match="vectors row 2 contains NaN or inf"):
        index.add(bad, [1, 2, 3])
    assert index.count == 0 and len(index.ids) == 0  # nothing half-added
    index.add(np.ones((2, 8)), np.array([10, 11]))
    with pytest.raises(ValueError, match="id 11 is already in the index"):
        index.add(np.ones((1, 8)), [11])
    with pytest.raises(TypeError, match="this index holds int ids; got str ids"):
        index.add(np.ones((1, 8)), ["x"])
    with pytest.raises(ValueError, match=r"queries must have shape \[N, 8\]"):
        index.search(np.ones((1, 9)), 1)
    with pytest.raises(ValueError, match="k must be a positive integer"):
        index.search(np.ones((1, 8)), 0)
    assert index.count == 2 and index.ids.tolist() == [10, 11]

    with pytest.raises(ValueError, match="kind must be one of"):
        RetrievalIndex(8, kind="annoy")
    with pytest.raises(ValueError, match="pq_m=3 must divide dim=8"):
        RetrievalIndex(8, kind="ivfpq", pq_m=3)
    ivf = RetrievalIndex(8, kind="ivf", nlist=50)
    with pytest.raises(ValueError, match=r"must be trained first: call train\(sample\)"):
        ivf.add(np.ones((1, 8)), [1])
    with pytest.raises(ValueError, match="needs at least 50 vectors, got 20"):
        ivf.train(_random(20, 8, seed=0))


# ------------------------------------------------------------------- approximate indexes


@pytest.mark.parametrize(
    ("kind", "options", "floor"),
    [
        ("ivf", {"nlist": 64, "nprobe": 8}, 0.9),
        ("hnsw", {"hnsw_m": 16, "ef_search": 64}, 0.9),
        ("ivfpq", {"nlist": 64, "nprobe": 8, "pq_m": 32, "pq_nbits": 6, "train_size": 3000}, 0.7),
    ],
)
def test_approximate_recall_against_exact(kind, options, floor):
    points = _clustered(12200, 32, clusters=80, seed=10)
    gallery, queries = points[:12000], points[12000:]  # queries: unseen points, same clusters
    exact = RetrievalIndex.build(gallery, np.arange(12000))
    approx = RetrievalIndex.build(gallery, np.arange(12000), kind=kind, **options)
    _, truth = exact.search(queries, 10)
    _, found = approx.search(queries, 10)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(found, truth, strict=True)])
    assert recall >= floor, f"{kind} recall@10 vs exact = {recall:.3f}"
    if kind != "hnsw":  # more probes can only help
        _, found_all = approx.search(queries, 10, nprobe=options["nlist"])
        recall_all = np.mean(
            [len(set(a) & set(b)) / 10 for a, b in zip(found_all, truth, strict=True)]
        )
        assert recall_all >= recall


# -------------------------------------------------------------------------- save / load


@pytest.mark.parametrize("kind", ["flat", "ivf", "hnsw"])
def test_save_load_in_a_fresh_process_gives_identical_results(tmp_path, kind):
    points = _clustered(3040, 24, 30, seed=11)
    gallery, queries = points[:3000], points[3000:]
    names = [f"p{i}" for i in range(3000)]
    index = RetrievalIndex.build(gallery, names, kind=kind, nlist=32, nprobe=4)
    scores, ids = index.search(queries, 10)
    index.save(tmp_path / "idx")
    np.save(tmp_path / "q.npy", queries)
    _run_child(
        """
        import sys, json, numpy as np
        from afmrl.retrieval.index import RetrievalIndex
        folder, q, out = sys.argv[1:]
        index = RetrievalIndex.load(folder)
        scores, ids = index.search(np.load(q), 10)
        np.save(out, scores)
        json.dump({"ids": ids.tolist(), "repr": repr(index)}, open(out + ".json", "w"))
        """,
        str(tmp_path / "idx"),
        str(tmp_path / "q.npy"),
        str(tmp_path / "out.npy"),
    )
    child = json.loads((tmp_path / "out.npy.json").read_text())
    np.testing.assert_array_equal(np.load(tmp_path / "out.npy"), scores)
    assert child["ids"] == ids.tolist()
    assert child["repr"] == repr(index)


def _saved(tmp_path: Path, n: int, seed: int = 13) -> tuple[Path, RetrievalIndex]:
    folder = tmp_path / "idx"
    index = RetrievalIndex.build(_random(n, 16, seed), [f"v{i}" for i in range(n)])
    index.save(folder)
    return folder, index


def test_truncated_or_altered_index_file_never_loads(tmp_path):
    folder, _ = _saved(tmp_path, 500)
    meta = json.loads((folder / "index.json").read_text())
    index_file = folder / meta["index_file"]
    data = index_file.read_bytes()
    index_file.write_bytes(data[: len(data) // 2])
    with pytest.raises(IndexFileError, match="corrupt or incomplete"):
        RetrievalIndex.load(folder)
    index_file.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))  # one flipped bit
    with pytest.raises(IndexFileError, match="corrupt or incomplete"):
        RetrievalIndex.load(folder)
    index_file.unlink()
    with pytest.raises(IndexFileError, match="is missing"):
        RetrievalIndex.load(folder)
    (folder / "index.json").write_text('{"format": "afmrl-retri')
    with pytest.raises(IndexFileError, match="not valid JSON"):
        RetrievalIndex.load(folder)
    (folder / "index.json").unlink()
    with pytest.raises(IndexFileError, match="holds no complete index"):
        RetrievalIndex.load(folder)
    with pytest.raises(IndexFileError, match="is not an index folder"):
        RetrievalIndex.load(tmp_path / "nowhere")


_CRASHING_SAVE = """
    import os, sys, numpy as np
    import faiss
    from afmrl.retrieval.index import RetrievalIndex
    folder, n, where = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    index = RetrievalIndex.build(
        np.random.default_rng(99).standard_normal((n, 16)).astype("float32"),
        [f"v{i}" for i in range(n)],
    )
    if where == "between-writes":
        real_replace = os.replace
        def replace(src, dst):
            if str(dst).endswith("index.json"):
                os._exit(17)  # the index file is in place, the metadata not yet
            real_replace(src, dst)
        os.replace = replace
    else:
        real_write = faiss.write_index
        def write_index(idx, path):
            real_write(idx, path)
            size = os.path.getsize(path)
            os.truncate(path, size // 2)
            os._exit(17)  # died while faiss was writing
        faiss.write_index = write_index
    index.save(folder)
"""


@pytest.mark.parametrize("where", ["between-writes", "mid-write"])
def test_crash_during_save_keeps_the_previous_index(tmp_path, where):
    folder, before = _saved(tmp_path, 300)
    queries = _random(8, 16, seed=14)
    expected = before.search(queries, 5)
    child = _run_child(_CRASHING_SAVE, str(folder), "450", where, check=False)
    assert child.returncode == 17, child.stderr
    loaded = RetrievalIndex.load(folder)  # the previous, complete save
    assert loaded.count == 300
    for a, b in zip(loaded.search(queries, 5), expected, strict=True):
        np.testing.assert_array_equal(a, b)
    # a later save cleans up what the crash left behind
    loaded.save(folder)
    assert sorted(p.name for p in folder.iterdir())[-1] == "index.json"
    assert len(list(folder.iterdir())) == 2


@pytest.mark.parametrize("where", ["between-writes", "mid-write"])
def test_crash_during_first_save_leaves_nothing_loadable(tmp_path, where):
    folder = tmp_path / "idx"
    child = _run_child(_CRASHING_SAVE, str(folder), "450", where, check=False)
    assert child.returncode == 17, child.stderr
    with pytest.raises(IndexFileError, match="holds no complete index"):
        RetrievalIndex.load(folder)


def test_killed_while_saving_in_a_loop_always_loads_a_complete_version(tmp_path):
    """SIGKILL at arbitrary moments of repeated saves: what loads is always one whole version."""
    folder = tmp_path / "idx"
    code = """
        import sys, numpy as np
        from afmrl.retrieval.index import RetrievalIndex
        folder = sys.argv[1]
        x = np.random.default_rng(5).standard_normal((60000, 16)).astype("float32")
        version = 0
        while True:
            n = 20000 + 1000 * (version % 40)
            RetrievalIndex.build(x[:n], np.arange(n)).save(folder)
            print(n, flush=True)
            version += 1
    """
    x = np.random.default_rng(5).standard_normal((60000, 16)).astype(np.float32)
    queries = _random(4, 16, seed=15)
    loaded_versions = 0
    for delay in (0.9, 1.3, 1.7, 2.1):
        proc = subprocess.Popen(
            [sys.executable, "-c", textwrap.dedent(code), str(folder)],
            cwd=REPO,
            stdout=subprocess.PIPE,
            text=True,
        )
        time.sleep(delay)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        try:
            loaded = RetrievalIndex.load(folder)
        except IndexFileError as err:  # killed before any save completed (or began, when busy)
            assert "holds no complete index" in str(err) or not folder.exists(), err
            continue
        n = loaded.count
        assert n in range(20000, 60000, 1000)
        assert loaded.ids.tolist() == list(range(n))
        fresh = RetrievalIndex.build(x[:n], np.arange(n))
        for a, b in zip(loaded.search(queries, 5), fresh.search(queries, 5), strict=True):
            np.testing.assert_array_equal(a, b)
        loaded_versions += 1
    print(f"complete versions loaded after a kill: {loaded_versions} of 4")
    assert loaded_versions >= 1


def test_search_benchmark_runs_small_and_exact_methods_agree(tmp_path):
    """The benchmark script at toy sizes: it runs, and numpy / faiss exact return the same ids."""
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks.bench_search",
            *("--n", "3000", "--n-large", "4000", "--dim", "32", "--queries", "50"),
            *("--batch", "1000", "--hnsw-sample", "1000", "--clusters", "20", "--repeats", "1"),
            *("--threads", "1"),  # OpenMP spin-waits badly on a busy 2-core machine
            *("--json", str(out)),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    assert "| 3k | numpy matmul + argpartition |" in proc.stdout
    assert "peak / raw" in proc.stdout
    results = json.loads(out.read_text())
    assert [r["agreement"] for r in results["exact"]] == [1.0] * 6
    assert {r["index"] for r in results["approximate"]} == {"ivf", "ivfpq", "hnsw"}
    assert all(0.0 <= r["recall"] <= 1.0 for r in results["approximate"])
    assert [m["reserve"] for m in results["memory"]] == [True, False]
    assert all(m["raw_bytes"] == 4000 * 32 * 4 for m in results["memory"])
