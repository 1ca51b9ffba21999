"""Search speed and memory benchmark: faiss exact vs numpy brute force, index build, approximate recall.

Run (defaults = the issue's sizes; a few minutes on 2 cores)::

    python -m benchmarks.bench_search
    python -m benchmarks.bench_search --n 20000 --n-large 0 --queries 200   # quick

What it measures, on synthetic L2-normalised float32 vectors (a Gaussian mixture: ``--clusters``
centres, ``--spread`` noise; queries are fresh draws from the same mixture, not gallery copies):

1. Exact top-k search, queries/s: numpy brute force (``queries @ gallery.T`` in query chunks,
   ``argpartition`` + sort of the k best) vs faiss ``IndexFlatIP`` (raw, and through
   :class:`~benchmarks.index.RetrievalIndex`, which adds id mapping and tie ordering), for the
   ``--n`` gallery and the ``--n-large`` gallery; the ratio to numpy is printed beside each.
   Timings are the best of ``--repeats`` runs (the machine is shared).
2. Peak memory while indexing ``--n-large`` vectors, measured in a fresh child process that
   streams the vectors in ``--batch`` rows (generated batch by batch, never all in memory):
   peak RSS during indexing minus the RSS just before it (kernel high-water mark, VmHWM). That
   counts everything indexing costs: the stored vectors, the batch being added and its float32
   copy, the id table and duplicate-check set, and faiss' transient buffers (the growth of its
   vector store); it excludes the interpreter and libraries loaded before indexing. Compared
   with the raw vector bytes ``N * D * 4``. Run with ``reserve(N)`` (gallery size known, as when
   indexing a dataset) and without (size unknown: the store grows by doubling).
3. Approximate indexes: IVF-Flat and IVF-PQ on both galleries, HNSW on a ``--hnsw-sample``
   subset; build time, queries/s, on-disk bytes per vector, and recall@k against exact search.

The BLAS libraries numpy and faiss use (threadpoolctl) and ``OPENBLAS_CORETYPE`` are printed.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

# ----------------------------------------------------------------------------------- data


def _centres(seed: int, clusters: int, dim: int) -> np.ndarray:
    return np.random.default_rng((seed, 0xC0FFEE)).standard_normal((clusters, dim), np.float32)


def synthetic_batch(
    seed: int, stream: int, batch: int, size: int, dim: int, clusters: int, spread: float
) -> np.ndarray:
    """Deterministic ``[size, dim]`` float32 unit vectors: batch ``batch`` of stream ``stream``.

    Any batch can be regenerated on its own, so a gallery can be streamed without storing it.
    ``clusters=0`` gives isotropic Gaussian vectors (no structure: the hardest case for IVF/PQ).
    """
    rng = np.random.default_rng((seed, stream, batch))
    x = rng.standard_normal((size, dim), np.float32)
    if clusters:
        x *= spread
        x += _centres(seed, clusters, dim)[rng.integers(0, clusters, size)]
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def synthetic_array(n: int, stream: int, args: argparse.Namespace) -> np.ndarray:
    """The first ``n`` vectors of a stream as one array (the same rows the streaming path sees)."""
    out = np.empty((n, args.dim), dtype=np.float32)
    for b, start in enumerate(range(0, n, args.batch)):
        size = min(args.batch, n - start)
        out[start : start + size] = synthetic_batch(
            args.seed, stream, b, size, args.dim, args.clusters, args.spread
        )
    return out


GALLERY_STREAM, QUERY_STREAM = 0, 1

# ------------------------------------------------------------------------------ baselines


def numpy_search(
    gallery: np.ndarray, queries: np.ndarray, k: int, max_block_bytes: int = 256 << 20
) -> tuple[np.ndarray, np.ndarray]:
    """Brute-force top-k by inner product: matmul in query chunks, argpartition, sort the k best."""
    n = gallery.shape[0]
    chunk = max(1, max_block_bytes // (4 * n))
    scores = np.empty((len(queries), k), dtype=np.float32)
    ids = np.empty((len(queries), k), dtype=np.int64)
    for start in range(0, len(queries), chunk):
        s = queries[start : start + chunk] @ gallery.T
        part = np.argpartition(-s, k - 1, axis=1)[:, :k]
        top = np.take_along_axis(s, part, axis=1)
        order = np.argsort(-top, axis=1)
        scores[start : start + chunk] = np.take_along_axis(top, order, axis=1)
        ids[start : start + chunk] = np.take_along_axis(part, order, axis=1)
    return scores, ids


def best_time(fn: Callable[[], Any], repeats: int) -> tuple[float, Any]:
    """Smallest wall time of ``repeats`` calls, and the last result."""
    best, result = float("inf"), None
    for _ in range(max(1, repeats)):
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
    return best, result


def recall_vs(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean fraction of the exact top-k ids that a method also returned."""
    k = truth.shape[1]
    return float(np.mean([len(set(a) & set(b)) / k for a, b in zip(found, truth, strict=True)]))


# ------------------------------------------------------------------------------- environment


def blas_report() -> list[str]:
    """Which BLAS numpy and faiss run (threadpoolctl), threads, and OPENBLAS_CORETYPE."""
    import faiss

    lines = [
        f"numpy {np.__version__}, faiss {faiss.__version__}, {os.cpu_count()} CPUs, "
        f"faiss OpenMP threads {faiss.omp_get_max_threads()}",
        f"OPENBLAS_CORETYPE={os.environ.get('OPENBLAS_CORETYPE', '(unset)')}, "
        f"OPENBLAS_L2_SIZE={os.environ.get('OPENBLAS_L2_SIZE', '(unset)')}, "
        f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', '(unset)')}",
        _load_line("load average at start"),
    ]
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return [*lines, "threadpoolctl not installed: BLAS unknown"]
    for info in threadpool_info():
        if info.get("user_api") != "blas":
            continue
        owner = "numpy" if "numpy" in info["filepath"] else Path(info["filepath"]).parts[-2]
        lines.append(
            f"BLAS for {owner}: {info['internal_api']} {info.get('version')} "
            f"(kernel {info.get('architecture')}, {info.get('threading_layer')}, "
            f"{info['num_threads']} threads)"
        )
    return lines


def _load_line(when: str) -> str:
    """The machine's 1-minute load average: timings on a shared machine need it beside them."""
    try:
        return f"{when}: {os.getloadavg()[0]:.2f} (1 min) on {os.cpu_count()} CPUs"
    except OSError:
        return f"{when}: unknown"


def _rss_bytes() -> tuple[int, int]:
    """(current RSS, peak RSS) of this process in bytes (Linux /proc; resource as fallback)."""
    try:
        fields = dict(
            line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines()
        )
        return int(fields["VmRSS"].split()[0]) * 1024, int(fields["VmHWM"].split()[0]) * 1024
    except (OSError, KeyError):
        import resource

        import psutil

        return psutil.Process().memory_info().rss, resource.getrusage(
            resource.RUSAGE_SELF
        ).ru_maxrss * 1024


# ------------------------------------------------------------------------------ measurements


def memory_child(args: argparse.Namespace) -> dict[str, Any]:
    """Stream ``n_large`` vectors into a flat index in this (fresh) process; report RSS growth."""
    from afmrl.retrieval.index import RetrievalIndex

    n = args.n_large
    index = RetrievalIndex(args.dim)
    synthetic_batch(args.seed, GALLERY_STREAM, 0, 1, args.dim, args.clusters, args.spread)
    rss_before, _ = _rss_bytes()
    start = time.perf_counter()
    add_seconds = 0.0
    if args.reserve:
        index.reserve(n)
    for b, first in enumerate(range(0, n, args.batch)):
        size = min(args.batch, n - first)
        x = synthetic_batch(
            args.seed, GALLERY_STREAM, b, size, args.dim, args.clusters, args.spread
        )
        t = time.perf_counter()
        index.add(x, np.arange(first, first + size))
        add_seconds += time.perf_counter() - t
        del x
    total = time.perf_counter() - start
    rss_after, peak = _rss_bytes()
    return {
        "n": n,
        "dim": args.dim,
        "reserve": bool(args.reserve),
        "raw_bytes": n * args.dim * 4,
        "rss_before": rss_before,
        "peak_growth": peak - rss_before,
        "final_growth": rss_after - rss_before,
        "add_seconds": add_seconds,
        "total_seconds": total,
    }


def run_memory(args: argparse.Namespace, reserve: bool) -> dict[str, Any]:
    cmd = [
        sys.executable,
        "-m",
        "benchmarks.bench_search",
        "--memory-child",
        *("--n-large", str(args.n_large), "--dim", str(args.dim), "--batch", str(args.batch)),
        *("--seed", str(args.seed), "--clusters", str(args.clusters)),
        *("--spread", str(args.spread), "--threads", str(args.threads)),
        *(["--reserve"] if reserve else []),
    ]
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run(cmd, cwd=root, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"memory child failed:\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def bytes_on_disk(index) -> int:
    """Size of the faiss file an index saves to."""
    import faiss

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "x.faiss")
        faiss.write_index(index.faiss_index, path)
        return os.path.getsize(path)


def exact_rows(
    label: str, gallery: np.ndarray, queries: np.ndarray, args: argparse.Namespace
) -> tuple[list[dict[str, Any]], np.ndarray]:
    """numpy vs raw faiss vs RetrievalIndex exact search on one gallery."""
    import faiss

    from afmrl.retrieval.index import RetrievalIndex

    k, n = args.k, len(gallery)
    rows = []
    np_time, (_, np_ids) = best_time(lambda: numpy_search(gallery, queries, k), args.repeats)
    rows.append({"gallery": label, "method": "numpy matmul + argpartition", "search_s": np_time})

    def build_raw():
        index = faiss.IndexFlatIP(args.dim)
        index.add(gallery)
        return index

    raw_build, raw_index = best_time(build_raw, 1)
    raw_time, (_, raw_ids) = best_time(lambda: raw_index.search(queries, k), args.repeats)
    raw_index.reset()  # free its copy of the vectors
    rows.append(
        {
            "gallery": label,
            "method": "faiss IndexFlatIP",
            "build_s": raw_build,
            "search_s": raw_time,
        }
    )
    ids = np.arange(n)
    build_s, index = best_time(lambda: RetrievalIndex.build(gallery, ids, batch_size=args.batch), 1)
    ri_time, (_, ri_ids) = best_time(lambda: index.search(queries, k), args.repeats)
    rows.append(
        {
            "gallery": label,
            "method": "RetrievalIndex flat (faiss + ids)",
            "build_s": build_s,
            "search_s": ri_time,
        }
    )
    for row in rows:
        row["qps"] = len(queries) / row["search_s"]
        row["vs_numpy"] = np_time / row["search_s"]
    agree = recall_vs(np_ids, ri_ids)
    rows[0]["agreement"] = agree
    rows[1]["agreement"] = recall_vs(raw_ids, ri_ids)
    rows[2]["agreement"] = 1.0
    return rows, ri_ids


def approx_rows(
    label: str,
    gallery: np.ndarray,
    queries: np.ndarray,
    truth: np.ndarray,
    kind: str,
    options: dict[str, Any],
    sweep: dict[str, list[int]],
    args: argparse.Namespace,
) -> list[dict[str, Any]]:
    """Build one approximate index, then search it at each setting of ``sweep``."""
    from afmrl.retrieval.index import RetrievalIndex

    build_s, index = best_time(
        lambda: RetrievalIndex.build(
            gallery, np.arange(len(gallery)), kind=kind, batch_size=args.batch, **options
        ),
        1,
    )
    per_vector = bytes_on_disk(index) / len(gallery)
    rows = []
    (name, values) = next(iter(sweep.items()))
    for value in values:
        t, (_, ids) = best_time(
            lambda value=value: index.search(queries, args.k, **{name: value}), args.repeats
        )
        params = {**index.params, name: value}
        rows.append(
            {
                "gallery": label,
                "index": kind,
                "params": ", ".join(f"{k}={v}" for k, v in params.items()),
                "build_s": build_s,
                "qps": len(queries) / t,
                "bytes_per_vector": per_vector,
                "recall": recall_vs(ids, truth),
            }
        )
    return rows


# ------------------------------------------------------------------------------------ report


def _fmt_n(n: int) -> str:
    return (
        f"{n // 1_000_000}M" if n % 1_000_000 == 0 else f"{n // 1000}k" if n % 1000 == 0 else str(n)
    )


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=100_000, help="gallery size (default 100000)")
    parser.add_argument(
        "--n-large", type=int, default=1_000_000, help="large gallery (0 skips it; default 1M)"
    )
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("-k", "--k", type=int, default=10)
    parser.add_argument("--batch", type=int, default=10_000, help="rows per add() (streaming)")
    parser.add_argument("--hnsw-sample", type=int, default=100_000, help="gallery size for HNSW")
    parser.add_argument("--clusters", type=int, default=1000, help="mixture centres (0: none)")
    parser.add_argument("--spread", type=float, default=1.0, help="noise scale around a centre")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs; the best is kept")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--threads",
        type=int,
        default=0,
        help="BLAS / OpenMP threads for numpy and faiss (0: as is)",
    )
    parser.add_argument("--skip-approx", action="store_true", help="no IVF / IVF-PQ / HNSW part")
    parser.add_argument("--skip-memory", action="store_true", help="no memory measurement")
    parser.add_argument("--json", type=Path, help="also write every figure to this JSON file")
    parser.add_argument("--memory-child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--reserve", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    for name in ("n", "dim", "queries", "k", "batch", "repeats"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.n_large < 0 or args.hnsw_sample < 0 or args.clusters < 0:
        parser.error("--n-large, --hnsw-sample and --clusters cannot be negative")
    return args


def run_sizes(args: argparse.Namespace, queries: np.ndarray) -> tuple[list[dict], list[dict]]:
    """Exact rows and approximate-index rows for every gallery size."""
    from afmrl.retrieval.index import RetrievalIndex

    sizes = [args.n] + ([args.n_large] if args.n_large else [])
    exact: list[dict[str, Any]] = []
    approx: list[dict[str, Any]] = []
    for n in sizes:
        label = _fmt_n(n)
        gallery = synthetic_array(n, GALLERY_STREAM, args)
        rows, truth = exact_rows(label, gallery, queries, args)
        exact += rows
        print(f"exact search on {label} done", file=sys.stderr, flush=True)
        if not args.skip_approx:
            nlist = max(1, round(np.sqrt(n)))
            approx += approx_rows(
                label, gallery, queries, truth, "ivf", {"nlist": nlist}, {"nprobe": [8, 32]}, args
            )
            approx += approx_rows(
                label, gallery, queries, truth, "ivfpq", {"nlist": nlist}, {"nprobe": [8, 32]}, args
            )
            if n == args.n and args.hnsw_sample:
                sample = min(n, args.hnsw_sample)
                sub = gallery[:sample]
                _, sub_truth = RetrievalIndex.build(sub, np.arange(sample)).search(queries, args.k)
                approx += approx_rows(
                    _fmt_n(sample),
                    sub,
                    queries,
                    sub_truth,
                    "hnsw",
                    {},
                    {"ef_search": [64, 128]},
                    args,
                )
            print(f"approximate indexes on {label} done", file=sys.stderr, flush=True)
        del gallery
    return exact, approx


def print_exact(exact: list[dict]) -> None:
    print("## Exact top-k search\n")
    print(
        _table(
            [
                "gallery",
                "method",
                "build s",
                "search s",
                "queries/s",
                "vs numpy",
                "top-k agreement",
            ],
            [
                [
                    r["gallery"],
                    r["method"],
                    f"{r['build_s']:.2f}" if "build_s" in r else "-",
                    f"{r['search_s']:.3f}",
                    f"{r['qps']:,.0f}",
                    f"{r['vs_numpy']:.2f}x",
                    f"{r['agreement']:.4f}",
                ]
                for r in exact
            ],
        )
    )
    print(
        "\n(top-k agreement: share of the RetrievalIndex top-k ids a method also returns; "
        "below 1 only through float rounding of near-equal scores)\n"
    )


def print_memory(args: argparse.Namespace) -> list[dict]:
    """Measure and print the peak memory of indexing the large gallery, with and without reserve."""
    memory = [run_memory(args, reserve=True), run_memory(args, reserve=False)]
    print(f"## Memory while indexing {_fmt_n(args.n_large)} x {args.dim} (streamed)\n")
    print(
        _table(
            [
                "mode",
                "raw vector bytes",
                "peak RSS growth",
                "peak / raw",
                "RSS growth after",
                "add s",
            ],
            [
                [
                    "reserve(N) first" if m["reserve"] else "size unknown (no reserve)",
                    f"{m['raw_bytes'] / 2**20:,.0f} MiB",
                    f"{m['peak_growth'] / 2**20:,.0f} MiB",
                    f"{m['peak_growth'] / m['raw_bytes']:.2f}x",
                    f"{m['final_growth'] / 2**20:,.0f} MiB",
                    f"{m['add_seconds']:.2f}",
                ]
                for m in memory
            ],
        )
    )
    print(
        f"\n(fresh process; batches of {args.batch}; growth = kernel high-water RSS minus the "
        "RSS just before indexing: stored vectors + batch buffers + id table + faiss' "
        "transient copies)\n"
    )
    return memory


def print_approx(approx: list[dict], args: argparse.Namespace) -> None:
    print(f"## Approximate indexes: recall@{args.k} against exact search\n")
    print(
        _table(
            [
                "gallery",
                "index",
                "params",
                "build s",
                "queries/s",
                "bytes/vector",
                f"recall@{args.k}",
            ],
            [
                [
                    r["gallery"],
                    r["index"],
                    r["params"],
                    f"{r['build_s']:.1f}",
                    f"{r['qps']:,.0f}",
                    f"{r['bytes_per_vector']:.0f}",
                    f"{r['recall']:.3f}",
                ]
                for r in approx
            ],
        )
    )
    print(f"\n(bytes/vector: faiss file size / N; float32 flat = {4 * args.dim})\n")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        import faiss
        from threadpoolctl import threadpool_limits

        faiss.omp_set_num_threads(args.threads)
        threadpool_limits(args.threads)
    if args.memory_child:
        print(json.dumps(memory_child(args)))
        return 0

    results: dict[str, Any] = {"config": {k: str(v) for k, v in vars(args).items()}}
    print("# Search benchmark\n")
    results["environment"] = blas_report()
    print("\n".join(f"- {line}" for line in results["environment"]))
    structure = (
        f"{args.clusters} clusters, spread {args.spread}" if args.clusters else "no clusters"
    )
    print(
        f"- data: synthetic unit vectors, D={args.dim}, {structure}; {args.queries} queries "
        f"drawn from the same mixture; top-{args.k}; best of {args.repeats} runs\n"
    )
    queries = synthetic_array(args.queries, QUERY_STREAM, args)
    exact, approx = run_sizes(args, queries)
    print_exact(exact)
    results["exact"] = exact
    if args.n_large and not args.skip_memory:
        results["memory"] = print_memory(args)
    if approx:
        print_approx(approx, args)
        results["approximate"] = approx
    results["load_at_end"] = _load_line("load average at end")
    print(f"- {results['load_at_end']}")
    if args.json:
        from afmrl.io import write_json_atomic

        write_json_atomic(args.json, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
