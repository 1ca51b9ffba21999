"""Index kinds past RAM: build time, memory, bytes per listing, latency and recall@k, per kind.

Run (the report's sizes; 15-40 min on 2 shared cores, most of it HNSW and exact ground truth)::

    nice python -m benchmarks.bench_index                        # 1M x 256
    nice python -m benchmarks.bench_index --n 100000 --queries 300  # quick

Data: ``--n`` synthetic float32 unit vectors of ``--dim`` dims, a Gaussian mixture (``--clusters``
centres, ``--spread`` noise; :func:`benchmarks.bench_search.synthetic_batch`), written once to
``--work``/gallery.npy; ``--queries`` held-out draws of the same mixture (another stream).

Kinds (:class:`afmrl.retrieval.index.RetrievalIndex`): ``flat`` (exact; its results are the ground
truth), ``ivf`` (IVF-Flat), ``ivfpq`` (lists in RAM), ``ivfpq-ondisk`` (``lists="ondisk"``, filled
block by block, ``--spill-mb`` per block), ``ivfpq-shards`` (``--shards`` shards, lists on disk)
and ``hnsw`` (``--hnsw-m``, ``--ef-construction``; chosen small so that 1M builds in minutes).

Each kind runs in two fresh child processes, so that nothing of one kind's memory counts for another:

1. build: loads the gallery into RAM, then builds and saves the index. Peak memory = the
   process' peak RSS while building (the kernel's VmHWM, the counter behind ``getrusage``'s
   ``ru_maxrss``, reset once the gallery is loaded) minus its RSS at that point: what building
   costs beyond holding the input vectors.
2. search: loads the saved index (every file's sha256 checked: the load time includes reading all
   files once) and searches the queries. Memory after search is reported as anonymous RSS (heap:
   quantizer, codes in RAM, id table) and file-backed RSS (pages of memory-mapped on-disk lists
   read so far; the kernel can drop them), each minus the process' RSS before loading. Latency:
   all queries in one batch divided by their number, and the median of ``--single`` one-query
   calls. Recall@k: the share of the exact top-k found.

``bytes/listing`` is the saved folder's size over ``N`` (faiss files + id table in index.json).
faiss runs ``--threads`` OpenMP threads (default 1: the machine is shared and per-query latency
is what scales). The load average is printed beside every row.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

KINDS = ("flat", "ivf", "ivfpq", "ivfpq-ondisk", "ivfpq-shards", "hnsw")


def _load() -> str:
    return "/".join(f"{v:.1f}" for v in os.getloadavg())


def _rss_parts() -> tuple[int, int]:
    """(anonymous, file-backed) resident bytes of this process, from /proc/self/status."""
    fields = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines())
    return (int(fields["RssAnon"].split()[0]) * 1024, int(fields["RssFile"].split()[0]) * 1024)


def _status(field: str) -> int:
    """A ``/proc/self/status`` memory field in bytes (VmRSS, VmHWM = peak RSS, ...)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(field)


def _reset_peak() -> int:
    """Reset the kernel's peak-RSS mark (VmHWM) to the current RSS, and return that RSS."""
    Path("/proc/self/clear_refs").write_text("5")
    return _status("VmRSS")


def _options(kind: str, args: argparse.Namespace) -> tuple[str, dict]:
    """(RetrievalIndex kind, constructor options) of a benchmark kind."""
    ivf = {"nlist": args.nlist} if args.nlist else {}
    pq = {**ivf, "pq_m": args.pq_m} if args.pq_m else ivf
    spill = {"spill_bytes": args.spill_mb << 20, "spill_dir": str(Path(args.work) / "spill")}
    return {
        "flat": ("flat", {}),
        "ivf": ("ivf", ivf),
        "ivfpq": ("ivfpq", pq),
        "ivfpq-ondisk": ("ivfpq", {**pq, "lists": "ondisk", **spill}),
        "ivfpq-shards": ("ivfpq", {**pq, "lists": "ondisk", "shards": args.shards, **spill}),
        "hnsw": ("hnsw", {"hnsw_m": args.hnsw_m, "ef_construction": args.ef_construction,
                          "ef_search": args.ef_searches[0]}),
    }[kind]  # fmt: skip


# ------------------------------------------------------------------------------ children


def child_build(kind: str, args: argparse.Namespace) -> dict:
    import faiss

    from afmrl.retrieval.index import RetrievalIndex

    faiss.omp_set_num_threads(args.build_threads)
    work = Path(args.work)
    gallery = np.load(work / "gallery.npy")  # in RAM: the baseline below includes it
    base = _reset_peak()
    base_kind, options = _options(kind, args)
    (work / "spill").mkdir(exist_ok=True)
    start = time.perf_counter()
    index = RetrievalIndex.build(gallery, np.arange(len(gallery)), base_kind, **options)
    index.save(work / kind)
    seconds = time.perf_counter() - start
    size = sum(p.stat().st_size for p in (work / kind).iterdir())
    return {
        "build_s": seconds,
        "build_peak_bytes": _status("VmHWM") - base,
        "max_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "disk_bytes": size,
        "bytes_per_listing": size / len(gallery),
        "params": index.params,
        "load": _load(),
    }


def child_search(kind: str, args: argparse.Namespace) -> dict:
    import faiss

    from afmrl.retrieval.index import IVF_KINDS, RetrievalIndex

    faiss.omp_set_num_threads(args.threads)
    work = Path(args.work)
    queries = np.load(work / "queries.npy")
    anon0, file0 = _rss_parts()
    start = time.perf_counter()
    index = RetrievalIndex.load(work / kind)
    load_s = time.perf_counter() - start
    truth = np.load(work / "truth.npy") if (work / "truth.npy").exists() else None
    settings: list[dict] = [{}]
    if index.kind in IVF_KINDS:
        settings = [{"nprobe": p} for p in args.nprobes if p <= index.params["nlist"]]
    elif index.kind == "hnsw":
        settings = [{"ef_search": e} for e in args.ef_searches]
    rows = []
    for setting in settings:
        start = time.perf_counter()
        _, ids = index.search(queries, k=args.k, **setting)
        batch_s = time.perf_counter() - start
        single = []
        for q in queries[: args.single]:
            start = time.perf_counter()
            index.search(q, k=args.k, **setting)
            single.append(time.perf_counter() - start)
        recall = None
        if truth is not None:
            hits = [len(set(a.tolist()) & set(b.tolist())) for a, b in zip(ids, truth, strict=True)]
            recall = float(np.mean(hits)) / args.k
        elif kind == "flat":
            np.save(work / "truth.npy", ids)
            recall = 1.0
        rows.append({
            "setting": " ".join(f"{k}={v}" for k, v in setting.items()) or "-",
            "batch_ms_per_query": 1e3 * batch_s / len(queries),
            "single_ms_median": 1e3 * float(np.median(single)) if single else None,
            "recall": recall,
            "load": _load(),
        })  # fmt: skip
    anon, file = _rss_parts()
    return {"load_s": load_s, "anon_bytes": anon - anon0, "file_bytes": file - file0, "rows": rows}


# -------------------------------------------------------------------------------- parent


def _child(role: str, kind: str, argv: list[str]) -> dict:
    cmd = [sys.executable, "-m", "benchmarks.bench_index", *argv, "--child", role, kind]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode:
        sys.exit(f"{role} {kind} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _data(args: argparse.Namespace) -> None:
    from benchmarks.bench_search import synthetic_batch

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    tag = work / "data.json"
    want = {k: getattr(args, k) for k in ("n", "dim", "queries", "clusters", "spread", "seed", "k")}
    if tag.exists() and json.loads(tag.read_text()) == want:
        return
    gallery = np.lib.format.open_memmap(work / "gallery.npy", "w+", np.float32, (args.n, args.dim))
    step = 50_000
    for b, start in enumerate(range(0, args.n, step)):
        size = min(step, args.n - start)
        gallery[start : start + size] = synthetic_batch(
            args.seed, 0, b, size, args.dim, args.clusters, args.spread
        )
    gallery.flush()
    del gallery
    queries = synthetic_batch(args.seed, 1, 0, args.queries, args.dim, args.clusters, args.spread)
    np.save(work / "queries.npy", queries)
    (work / "truth.npy").unlink(missing_ok=True)
    tag.write_text(json.dumps(want))


def _mib(x: float | None) -> str:
    return "-" if x is None else f"{x / 2**20:.0f}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=1_000_000, help="gallery size")
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("-k", "--k", type=int, default=10)
    parser.add_argument("--clusters", type=int, default=1000, help="mixture centres")
    parser.add_argument("--spread", type=float, default=1.0, help="noise around a centre")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--kinds", default=",".join(KINDS), help=f"comma list of {KINDS}")
    parser.add_argument("--nlist", type=int, default=None, help="IVF cells (default: sqrt(N))")
    parser.add_argument("--nprobes", default="1,4,16,64", help="IVF nprobe values searched")
    parser.add_argument("--pq-m", type=int, default=None, help="PQ bytes/vector (default dim/4)")
    parser.add_argument("--shards", type=int, default=4, help="shards of ivfpq-shards")
    parser.add_argument("--spill-mb", type=int, default=8, help="on-disk build: MiB per block")
    parser.add_argument("--hnsw-m", type=int, default=16)
    parser.add_argument("--ef-construction", type=int, default=40)
    parser.add_argument("--ef-searches", default="64,256", help="HNSW efSearch values searched")
    parser.add_argument("--threads", type=int, default=1, help="faiss threads while searching")
    parser.add_argument("--build-threads", type=int, default=1, help="faiss threads building")
    parser.add_argument("--single", type=int, default=50, help="one-query calls timed")
    parser.add_argument("--work", default=os.path.join(os.environ.get("TMPDIR", "/tmp"),
                                                       "afmrl-bench-index"))  # fmt: skip
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    parser.add_argument("--child", nargs=2, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.nprobes = [int(p) for p in str(args.nprobes).split(",")]
    args.ef_searches = [int(e) for e in str(args.ef_searches).split(",")]
    if args.child:
        role, kind = args.child
        result = (child_build if role == "build" else child_search)(kind, args)
        print(json.dumps(result))
        return
    passthrough = [a for a in (argv if argv is not None else sys.argv[1:])]
    kinds = [k for k in args.kinds.split(",") if k]
    if "flat" not in kinds:
        kinds.insert(0, "flat")  # the ground truth
    print(f"[bench_index] {args.n} x {args.dim} vectors, {args.clusters} clusters, "
          f"{args.queries} queries, k={args.k}; {os.cpu_count()} CPUs, load {_load()}")  # fmt: skip
    start = time.perf_counter()
    _data(args)
    print(f"[bench_index] data ready in {args.work} ({time.perf_counter() - start:.0f} s)")
    results = {}
    for kind in sorted(kinds, key=lambda k: k != "flat"):
        build = _child("build", kind, passthrough)
        search = _child("search", kind, passthrough)
        results[kind] = {"build": build, "search": search}
        print(f"[bench_index] {kind}: build {build['build_s']:.0f} s (load {build['load']}), "
              f"params {build['params']}", flush=True)  # fmt: skip
    head = (f"{'kind':<13} {'build s':>7} {'build MiB':>9} {'B/listing':>9} {'load s':>6} "
            f"{'anon MiB':>8} {'file MiB':>8} {'search':>12} {'ms/q batch':>10} {'ms/q one':>8} "
            f"{'R@' + str(args.k):>6}  load avg")  # fmt: skip
    print(head)
    for kind, r in results.items():
        b, s = r["build"], r["search"]
        for row in s["rows"]:
            single = "-" if row["single_ms_median"] is None else f"{row['single_ms_median']:.2f}"
            print(f"{kind:<13} {b['build_s']:>7.0f} {_mib(b['build_peak_bytes']):>9} "
                  f"{b['bytes_per_listing']:>9.1f} {s['load_s']:>6.1f} {_mib(s['anon_bytes']):>8} "
                  f"{_mib(s['file_bytes']):>8} {row['setting']:>12} "
                  f"{row['batch_ms_per_query']:>10.3f} {single:>8} {row['recall']:>6.3f}  "
                  f"{row['load']}")  # fmt: skip
    if args.json:
        settings = {
            k: v if isinstance(v, int | float | list) else str(v) for k, v in vars(args).items()
        }
        args.json.write_text(json.dumps({"args": settings, "results": results}, indent=1))


if __name__ == "__main__":
    main()
