"""``RetrievalIndex``: a faiss index of gallery embeddings with the gallery ids kept alongside.

Kinds (``kind=``):

- ``flat`` (default): exact inner-product (or L2) search, ``IndexFlatIP`` / ``IndexFlatL2``.
- ``ivf``: ``IndexIVFFlat``, an inverted file over ``nlist`` k-means cells, ``nprobe`` visited.
- ``ivfpq``: ``IndexIVFPQ``, the same with product-quantised vectors (``pq_m`` bytes each at 8
  bits): the index for galleries that do not fit in RAM as float32.
- ``hnsw``: ``IndexHNSWFlat``, a graph index (slow to build, fast to search).

IVF kinds need :meth:`RetrievalIndex.train` on a sample before :meth:`add`;
:meth:`RetrievalIndex.build` samples, trains and adds in batches in one call.

Past RAM (IVF kinds only):

- ``lists="ondisk"``: the inverted lists (codes and ids) live in a file beside the index,
  faiss' ``OnDiskInvertedLists``, memory-mapped read-only at search time (only the pages of the
  ``nprobe`` visited lists are read). Filling is streaming: :meth:`add` writes each block of about
  ``spill_bytes`` of lists to a temporary faiss file (``spill_dir``, default the system temp
  folder) and starts an empty block; :meth:`save` merges every block into one compact
  ``lists-<sha256[:16]>.ivfdata`` (``OnDiskInvertedLists.merge_from_multiple``, blocks read with
  ``IO_FLAG_MMAP``), as ``faiss.contrib.ondisk.merge_ondisk`` does. Only the coarse quantizer, the
  PQ codebooks, one block and the id table are ever in RAM. Such an index is searchable once
  saved, and read-only after that.
- ``shards=S``: the vectors are dealt round-robin (position ``i`` to shard ``i % S``) over ``S``
  IVF indexes that share one trained quantizer, each in its own file, searched together by
  ``faiss.IndexShards`` (one thread per shard). With the same ``nprobe`` each shard visits the
  same cells as the unsharded index would, so the merged top-k is the same. A shard is the unit a
  later multi-machine setup would serve; combined with ``lists="ondisk"`` each shard has its own
  lists file.

Ids: any ``str`` or ``int`` ids (one type per index, no duplicates). faiss stores vectors under
their insertion position and the id table maps positions back to ids. (faiss' ``IndexIDMap`` maps
int64 only; one table serves both id types and every kind.)

Ranking: results are sorted by descending score (ascending distance for ``l2``), ties by insertion
order, as :func:`afmrl.retrieval.ranking.rank_by_scores` does. For the exact kind that also
decides which of several items tied at the K-th place makes the cut. Missing results (an IVF probe
that found fewer than ``k``) come last with score ``-inf`` (``+inf`` for l2) and id ``-1`` (int ids)
or ``None`` (str ids).

On disk (:meth:`save` / :meth:`load`), a folder holds ``index-<sha256[:16]>.faiss`` (faiss' own
binary format; one ``index-s<i>-….faiss`` per shard, plus a ``lists-….ivfdata`` each for on-disk
lists), for int ids ``ids-….npy`` (the id table, int64, memory-mapped on load) and ``index.json``
(kind, metric, dim, count, parameters, what it was built with, str ids, and every file's name and
sha256). All are written atomically (temporary file in the same
folder, fsync, ``os.replace``), the data files first: a crash at any point leaves either the
previous complete save or nothing loadable, and :meth:`load` refuses any file that is missing or
whose sha256 differs from the one recorded (for on-disk lists that reads the whole lists file
once per load). Nothing is pickled.

``built_with`` (saved in ``index.json``) records where the vectors came from, e.g. the model's
weights fingerprint; :meth:`check_model` refuses another model in one line naming both.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import math
import os
import shutil
import sys
import tempfile
import weakref
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from afmrl.errors import UserError

if TYPE_CHECKING:
    import faiss
from afmrl.io import TMP_PREFIX, atomic_path, fsync_dir, sha256_file, write_text_atomic

from .ranking import rank_by_scores

INDEX_KINDS: tuple[str, ...] = ("flat", "ivf", "ivfpq", "hnsw")
IVF_KINDS: tuple[str, ...] = ("ivf", "ivfpq")
#: Where an IVF index keeps its inverted lists: in memory, or in a memory-mapped file.
INDEX_LISTS: tuple[str, ...] = ("ram", "ondisk")
#: Lists bytes (codes + 8-byte ids) held in RAM per shard before :meth:`RetrievalIndex.add`
#: writes them out as a block, for ``lists="ondisk"``.
SPILL_BYTES = 256 << 20
#: Threads faiss starts on every search of on-disk lists to read the visited lists ahead
#: (``OnDiskInvertedLists.prefetch_nthread``, 32 in faiss). Measured here (20k x 256, IVF-PQ,
#: one query per call, lists in the page cache): 0.39 ms per call with 32, 0.06 ms with 0, as in
#: RAM. Raise it for cold lists on storage that serves parallel reads.
PREFETCH_THREADS = 0
INDEX_METRICS: tuple[str, ...] = ("ip", "l2")
FORMAT_NAME = "afmrl-retrieval-index"
FORMAT_VERSION = 1
META_FILE = "index.json"
#: Rows converted to float32 and handed to faiss at a time by :meth:`RetrievalIndex.add`.
ADD_BATCH_SIZE = 65_536
#: faiss warns below this many training points per k-means centroid.
MIN_POINTS_PER_CENTROID = 39


def _metric_code(metric: str) -> int:
    """faiss' constant for ``ip`` / ``l2`` (faiss is imported on first use: it is heavy)."""
    import faiss

    return {"ip": faiss.METRIC_INNER_PRODUCT, "l2": faiss.METRIC_L2}[metric]


class IndexFileError(UserError):
    """An index folder that cannot be loaded: missing, incomplete, corrupt or inconsistent."""


class ModelMismatchError(UserError):
    """An index searched with another model than the one its vectors were encoded with."""


@contextlib.contextmanager
def _faiss_stdout_quiet() -> Iterator[None]:
    """Send what faiss' C++ code prints to stdout (on-disk lists log each resize and each path
    rewrite with ``printf``) to /dev/null, so that a command's own stdout (``--json``) stays clean."""
    sys.stdout.flush()
    libc = ctypes.CDLL(None)
    saved = os.dup(1)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 1)
        yield
    finally:
        libc.fflush(None)
        os.dup2(saved, 1)
        os.close(saved)
        os.close(devnull)


def default_nlist(count: int) -> int:
    """IVF cell count for a gallery of ``count`` vectors: about sqrt(count), at least 1."""
    return max(1, round(math.sqrt(max(count, 1))))


def default_pq_m(dim: int) -> int:
    """PQ sub-quantizer count: the largest divisor of ``dim`` not above dim/4 (4 dims per byte)."""
    for m in range(max(1, dim // 4), 0, -1):
        if dim % m == 0:
            return m
    return 1


def default_train_size(nlist: int, pq: bool) -> int:
    """Training sample size: enough points per centroid for k-means (and for the PQ codebooks)."""
    return max(MIN_POINTS_PER_CENTROID * nlist, MIN_POINTS_PER_CENTROID * 256 if pq else 0)


class RetrievalIndex:
    """A faiss index over gallery vectors with their ids; see the module docstring.

    Args:
        dim: vector dimension ``D``.
        kind: one of ``flat``, ``ivf``, ``ivfpq``, ``hnsw``.
        metric: ``ip`` (inner product; cosine for L2-normalised vectors, higher is better) or
            ``l2`` (squared Euclidean distance, lower is better).
        nlist: IVF cells (default: :func:`default_nlist` of the expected gallery size, set at
            :meth:`train`).
        nprobe: IVF cells visited per query (default 16; can be overridden per search).
        pq_m: IVF-PQ bytes per vector (default :func:`default_pq_m`); must divide ``dim``.
        pq_nbits: bits per PQ code (default 8).
        hnsw_m: HNSW graph degree (default 32).
        ef_construction: HNSW build beam (default 80).
        ef_search: HNSW search beam (default 64; can be overridden per search).
        lists: IVF kinds: ``ram`` (default) or ``ondisk`` (see the module docstring).
        shards: IVF kinds: split the vectors over this many faiss indexes (default 1).
        spill_bytes: ``lists="ondisk"``: RAM lists per shard before a block is written out.
        spill_dir: ``lists="ondisk"``: where blocks wait until :meth:`save` (default: the system
            temporary folder; it needs room for the lists once more).
    """

    def __init__(
        self,
        dim: int,
        kind: str = "flat",
        metric: str = "ip",
        *,
        nlist: int | None = None,
        nprobe: int = 16,
        pq_m: int | None = None,
        pq_nbits: int = 8,
        hnsw_m: int = 32,
        ef_construction: int = 80,
        ef_search: int = 64,
        lists: str = "ram",
        shards: int = 1,
        spill_bytes: int = SPILL_BYTES,
        spill_dir: str | os.PathLike | None = None,
    ) -> None:
        if isinstance(dim, bool) or not isinstance(dim, int | np.integer) or dim < 1:
            raise ValueError(f"dim must be a positive integer, got {dim!r}")
        if kind not in INDEX_KINDS:
            raise ValueError(f"kind must be one of {INDEX_KINDS}, got {kind!r}")
        if metric not in INDEX_METRICS:
            raise ValueError(f"metric must be one of {tuple(INDEX_METRICS)}, got {metric!r}")
        for name, value in [
            ("nprobe", nprobe),
            ("pq_nbits", pq_nbits),
            ("hnsw_m", hnsw_m),
            ("ef_construction", ef_construction),
            ("ef_search", ef_search),
            ("nlist", 1 if nlist is None else nlist),
            ("pq_m", 1 if pq_m is None else pq_m),
            ("shards", shards),
            ("spill_bytes", spill_bytes),
        ]:
            if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if lists not in INDEX_LISTS:
            raise ValueError(f"lists must be one of {INDEX_LISTS}, got {lists!r}")
        if kind not in IVF_KINDS and (lists != "ram" or shards != 1):
            raise ValueError(
                f"lists={lists!r} and shards={shards} need an IVF kind {IVF_KINDS}; "
                f"{kind!r} keeps one index in RAM"
            )
        if kind == "ivfpq":
            pq_m = default_pq_m(int(dim)) if pq_m is None else pq_m
            if dim % pq_m:
                raise ValueError(f"pq_m={pq_m} must divide dim={dim}")
            if pq_nbits > 16:
                raise ValueError(f"pq_nbits must be at most 16, got {pq_nbits}")
        self.dim = int(dim)
        self.kind = kind
        self.metric = metric
        self.params: dict[str, int | str | None] = {}
        if kind in IVF_KINDS:
            self.params = {"nlist": nlist, "nprobe": nprobe}
        if kind == "ivfpq":
            self.params.update(pq_m=int(pq_m), pq_nbits=pq_nbits)
        if kind == "hnsw":
            self.params = {
                "hnsw_m": hnsw_m,
                "ef_construction": ef_construction,
                "ef_search": ef_search,
            }
        self.params = {k: None if v is None else int(v) for k, v in self.params.items()}
        if kind in IVF_KINDS:
            self.params.update(lists=lists, shards=int(shards))
        #: What the vectors were made with (e.g. ``model``, ``model_fingerprint``), kept by save.
        self.built_with: dict[str, Any] = {}
        self.spill_bytes = int(spill_bytes)
        self.spill_dir = spill_dir
        self._index: faiss.Index | None = None  # what search runs on (IndexShards for S > 1)
        self._parts: list[faiss.Index] = []  # the per-shard IVF indexes
        self._empty: faiss.Index | None = None  # the trained, empty IVF index (blocks clone it)
        self._blocks: list[list[Path]] = []  # per shard: written-out blocks awaiting save()
        self._block_dir: Path | None = None
        self._lists_on_disk = False  # True once the lists are in a saved .ivfdata (read-only)
        self._n = 0
        self._int_chunks: list[np.ndarray] = []  # int ids, one array per add()
        self._str_ids: list[str] = []
        self._id_type: str | None = None  # "int" | "str"
        # Ids already added: a set of str, or sorted runs of int (8 bytes an id, not a Python int's
        # ~70); None after load until vectors are added (rebuilt from the table then).
        self._seen: set[str] | _SortedRuns | None = None
        self._table_cache: np.ndarray | None = None
        if kind in ("flat", "hnsw"):
            self._index = self._new_faiss_index()
            self._parts = [self._index]

    # ------------------------------------------------------------------------------ properties

    @property
    def count(self) -> int:
        """Number of vectors in the index."""
        return self._n

    def __len__(self) -> int:
        return self.count

    @property
    def is_trained(self) -> bool:
        """False for an IVF index that still needs :meth:`train`."""
        return bool(self._parts) and all(bool(p.is_trained) for p in self._parts)

    @property
    def lists(self) -> str:
        """Where the inverted lists live: ``ram`` or ``ondisk`` (``ram`` for non-IVF kinds)."""
        return str(self.params.get("lists", "ram"))

    @property
    def shards(self) -> int:
        """Number of faiss indexes the vectors are dealt over (1 for non-IVF kinds)."""
        return int(self.params.get("shards", 1))

    @property
    def ids(self) -> np.ndarray:
        """``[count]`` ids in insertion order (int64, or object array of str)."""
        if self._table_cache is None:
            if self._id_type == "str":
                self._table_cache = np.array(self._str_ids, dtype=object)
            elif len(self._int_chunks) == 1:
                self._table_cache = self._int_chunks[0]  # (a memory map once loaded)
            elif self._int_chunks:
                self._table_cache = np.concatenate(self._int_chunks)
                self._int_chunks = [self._table_cache]
            else:
                self._table_cache = np.zeros(0, dtype=np.int64)
        return self._table_cache

    @property
    def faiss_index(self) -> faiss.Index | None:
        """The underlying faiss index (for inspection; changing it bypasses the id table).

        ``faiss.IndexShards`` over the shards when ``shards > 1``.
        """
        return self._index

    @property
    def faiss_parts(self) -> list[faiss.Index]:
        """The per-shard faiss indexes (one element unless ``shards > 1``)."""
        return list(self._parts)

    def __repr__(self) -> str:
        return (
            f"RetrievalIndex(dim={self.dim}, kind={self.kind!r}, metric={self.metric!r}, "
            f"count={self.count}, params={self.params})"
        )

    # ---------------------------------------------------------------------------- construction

    def _new_faiss_index(self) -> faiss.Index:
        import faiss

        metric = _metric_code(self.metric)
        if self.kind == "flat":
            return faiss.IndexFlat(self.dim, metric)
        if self.kind == "hnsw":
            index = faiss.IndexHNSWFlat(self.dim, self.params["hnsw_m"], metric)
            index.hnsw.efConstruction = self.params["ef_construction"]
            index.hnsw.efSearch = self.params["ef_search"]
            return index
        quantizer = faiss.IndexFlat(self.dim, metric)
        if self.kind == "ivf":
            return faiss.IndexIVFFlat(quantizer, self.dim, self.params["nlist"], metric)
        index = faiss.IndexIVFPQ(
            quantizer,
            self.dim,
            self.params["nlist"],
            self.params["pq_m"],
            self.params["pq_nbits"],
            metric,
        )
        # Each PQ codebook is a k-means on a few dimensions: a larger sample costs minutes on a
        # small CPU and gains little, so it uses at most 39 points per code.
        index.pq.cp.max_points_per_centroid = MIN_POINTS_PER_CENTROID
        return index

    def reserve(self, count: int) -> None:
        """Pre-allocate storage for ``count`` vectors in a flat index (no-op for other kinds).

        A flat index grows a contiguous buffer; growing by doubling copies it and can briefly hold
        twice the vectors in memory. Reserving when the gallery size is known avoids that.
        """
        if self.kind != "flat" or count <= self.count:
            return
        code_size = self._index.code_size
        # std::vector keeps its capacity when shrunk, so growing back within it never reallocates.
        self._index.codes.resize(int(count) * code_size)
        self._index.codes.resize(self.count * code_size)

    def train(self, vectors: np.ndarray, expected_count: int | None = None) -> None:
        """Train an IVF index's k-means cells (and PQ codebooks) on a sample; no-op otherwise.

        Args:
            vectors: ``[S, D]`` training sample, ideally drawn at random from the gallery.
            expected_count: the gallery size, used to pick ``nlist`` when it was not given
                (default: the sample size).
        """
        if self.kind in ("flat", "hnsw"):
            return
        if self.is_trained:
            raise ValueError(f"this {self.kind} index is already trained")
        x = self._as_float32(vectors, "training vectors")
        if self.params["nlist"] is None:
            self.params["nlist"] = default_nlist(int(expected_count or len(x)))
        nlist = self.params["nlist"]
        needed = nlist
        if self.kind == "ivfpq":
            needed = max(needed, 2 ** self.params["pq_nbits"])
        if len(x) < needed:
            raise ValueError(
                f"training a {self.kind} index with nlist={nlist} needs at least {needed} vectors, "
                f"got {len(x)} (give more, or a smaller nlist / pq_nbits)"
            )
        import faiss

        empty = self._new_faiss_index()
        empty.train(x)
        self._empty = empty
        self._set_parts([faiss.clone_index(empty) for _ in range(self.shards)])

    def _set_parts(self, parts: list[faiss.Index]) -> None:
        """Install the per-shard indexes and the index searches run on."""
        import faiss

        self._parts = parts
        if len(parts) == 1:
            self._index = parts[0]
            return
        shards = faiss.IndexShards(self.dim, True, False)  # threaded, ids kept as given
        for part in parts:
            shards.add_shard(part)
        self._index = shards

    @classmethod
    def build(
        cls,
        vectors: np.ndarray,
        ids: Sequence[int | str] | np.ndarray,
        kind: str = "flat",
        metric: str = "ip",
        *,
        train_size: int | None = None,
        batch_size: int = ADD_BATCH_SIZE,
        seed: int = 0,
        **options: Any,
    ) -> RetrievalIndex:
        """Index a whole ``[N, D]`` array (a memmap works): sample, train if needed, add in batches.

        ``options`` go to the constructor (``nlist``, ``nprobe``, ``pq_m``, ...).
        """
        if getattr(vectors, "ndim", None) != 2:
            raise ValueError(
                f"vectors must be a 2-D [N, D] array, got shape {getattr(vectors, 'shape', None)}"
            )
        n, dim = vectors.shape
        if len(ids) != n:
            raise ValueError(f"got {n} vectors but {len(ids)} ids")
        index = cls(dim, kind, metric, **options)
        if kind in IVF_KINDS:
            if index.params["nlist"] is None:
                index.params["nlist"] = min(default_nlist(n), max(1, n // MIN_POINTS_PER_CENTROID))
            size = train_size or default_train_size(index.params["nlist"], kind == "ivfpq")
            rng = np.random.default_rng(seed)
            sample = np.sort(rng.choice(n, size=min(n, size), replace=False))
            index.train(np.asarray(vectors[sample]), expected_count=n)
        index.reserve(n)
        for start in range(0, n, batch_size):
            index.add(vectors[start : start + batch_size], ids[start : start + batch_size])
        return index

    # -------------------------------------------------------------------------------- checks

    def _as_float32(self, vectors: np.ndarray, what: str, offset: int = 0) -> np.ndarray:
        x = np.asarray(vectors)
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"{what} must have shape [N, {self.dim}], got {tuple(x.shape)}")
        if not (np.issubdtype(x.dtype, np.floating) or np.issubdtype(x.dtype, np.integer)):
            raise TypeError(f"{what} must be real numbers, got dtype {x.dtype}")
        x = np.ascontiguousarray(x, dtype=np.float32)
        if not np.isfinite(x).all():
            bad = offset + int(np.flatnonzero(~np.isfinite(x).all(axis=1))[0])
            raise ValueError(f"{what} row {bad} contains NaN or inf")
        return x

    def _check_ids(self, ids: Sequence[int | str] | np.ndarray, n: int) -> tuple[str, Any]:
        """Validate one batch of ids; returns (id type, ids as int64 array or list of str)."""
        if isinstance(ids, str | bytes):
            raise TypeError("ids must be a sequence of ids, got a single string")
        if isinstance(ids, np.ndarray) and ids.ndim != 1:
            raise ValueError(f"ids must be 1-D, got shape {ids.shape}")
        values = ids.tolist() if isinstance(ids, np.ndarray) else list(ids)
        values = [v.item() if isinstance(v, np.generic) else v for v in values]
        if len(values) != n:
            raise ValueError(f"got {n} vectors but {len(values)} ids")
        if all(isinstance(v, str) for v in values):
            kind, batch = "str", values
        elif all(isinstance(v, int) and not isinstance(v, bool) for v in values):
            try:
                kind, batch = "int", np.array(values, dtype=np.int64)
            except OverflowError as err:
                raise ValueError(f"int ids must fit in int64: {err}") from err
        else:
            bad = next(
                (v for v in values if not isinstance(v, str | int) or isinstance(v, bool)), None
            )
            found = "a mix of str and int" if bad is None else f"{type(bad).__name__} {bad!r}"
            raise TypeError(f"ids must all be str or all be int, got {found}")
        if self._id_type is not None and n and kind != self._id_type:
            raise TypeError(f"this index holds {self._id_type} ids; got {kind} ids")
        if len(set(values)) != len(values):
            seen: set = set()
            dup = next(v for v in values if v in seen or seen.add(v))
            raise ValueError(f"id {dup!r} appears twice in this batch")
        if self._seen is None or isinstance(self._seen, set) != (kind == "str"):
            self._seen = set(self.ids.tolist()) if kind == "str" else _SortedRuns(self.ids)
        if isinstance(self._seen, _SortedRuns):
            dup = self._seen.first_member(batch)
            if dup is not None:
                raise ValueError(f"id {dup!r} is already in the index")
        elif not self._seen.isdisjoint(values):
            dup = next(v for v in values if v in self._seen)
            raise ValueError(f"id {dup!r} is already in the index")
        return kind, batch

    # ------------------------------------------------------------------------------ add/search

    def add(self, vectors: np.ndarray, ids: Sequence[int | str] | np.ndarray) -> None:
        """Add ``[N, D]`` vectors with their ``N`` ids (converted to float32 in bounded batches).

        Raises a clear error for a wrong shape, non-finite values, mixed or repeated ids, or an IVF
        index that has not been trained.
        """
        if not self.is_trained:
            raise ValueError(f"this {self.kind} index must be trained first: call train(sample)")
        if self._lists_on_disk:
            raise ValueError(
                "this index's inverted lists are on disk and read-only: build a new index to add "
                "vectors"
            )
        shape = getattr(vectors, "shape", None)
        if shape is None or len(shape) != 2 or shape[1] != self.dim:
            raise ValueError(f"vectors must have shape [N, {self.dim}], got {shape}")
        n = shape[0]
        id_type, batch_ids = self._check_ids(ids, n)
        # Each slice is validated, added and recorded together: an error (say a NaN row) leaves
        # the index consistent, holding the slices before the bad one.
        for start in range(0, n, ADD_BATCH_SIZE):
            stop = min(n, start + ADD_BATCH_SIZE)
            x = self._as_float32(vectors[start:stop], "vectors", offset=start)
            if self.kind in IVF_KINDS:
                self._add_ivf(x)
            else:
                self._index.add(x)
            self._n += len(x)
            self._id_type = id_type
            chunk = batch_ids[start:stop]
            if id_type == "int":
                self._int_chunks.append(chunk)
                self._seen.add(chunk)
            else:
                self._str_ids.extend(chunk)
                self._seen.update(chunk)
            self._table_cache = None

    def _add_ivf(self, x: np.ndarray) -> None:
        """Add ``[n, D]`` rows under their positions, dealt round-robin over the shards."""
        import faiss

        s_count = self.shards
        positions = np.arange(self._n, self._n + len(x), dtype=np.int64)
        for s, part in enumerate(self._parts):
            first = (s - self._n) % s_count  # the first row that goes to shard s
            if first < len(x):
                part.add_with_ids(x[first::s_count], positions[first::s_count])
        if self.lists != "ondisk":
            if s_count > 1:
                self._index.syncWithSubIndexes()
            return
        entry = self._parts[0].code_size + 8
        for s, part in enumerate(self._parts):
            if part.ntotal * entry >= self.spill_bytes:
                if self._block_dir is None:
                    self._block_dir = Path(
                        tempfile.mkdtemp(prefix="afmrl-ivf-", dir=self.spill_dir)
                    )
                    weakref.finalize(self, shutil.rmtree, self._block_dir, True)
                    self._blocks = [[] for _ in self._parts]
                block = self._block_dir / f"s{s}-b{len(self._blocks[s])}.faiss"
                faiss.write_index(part, str(block))
                self._blocks[s].append(block)
                self._parts[s] = faiss.clone_index(self._empty)
        self._set_parts(self._parts)

    def set_nprobe(self, nprobe: int) -> None:
        """Change the default number of IVF cells visited per search (IVF kinds only)."""
        if self.kind not in IVF_KINDS:
            raise UserError(f"nprobe applies to IVF indexes {IVF_KINDS}; this one is {self.kind}")
        if isinstance(nprobe, bool) or not isinstance(nprobe, int | np.integer) or nprobe < 1:
            raise UserError(f"nprobe must be a positive integer, got {nprobe!r}")
        self.params["nprobe"] = int(nprobe)

    def check_model(self, fingerprint: str, name: str, where: str = "the index") -> None:
        """Refuse a model other than the one ``built_with`` records (no-op when none is recorded).

        Raises :class:`ModelMismatchError` naming both models and their weights fingerprints.
        """
        expected = self.built_with.get("model_fingerprint")
        if expected and expected != fingerprint:
            built = self.built_with.get("model") or "another model"
            raise ModelMismatchError(
                f"model mismatch: {where} was built with {built} (weights {expected[:12]}) but the "
                f"query model is {name} (weights {fingerprint[:12]}); search with the model the "
                "index was built with, or rebuild the index with this one"
            )

    def search(
        self,
        queries: np.ndarray,
        k: int = 10,
        *,
        nprobe: int | None = None,
        ef_search: int | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` best gallery items for each query.

        Args:
            queries: ``[Q, D]`` (or ``[D]`` for one query).
            k: results per query (clipped to the index size).
            nprobe: IVF cells to visit (default: the index's ``nprobe``).
            ef_search: HNSW search beam (default: the index's ``ef_search``).

        Returns:
            ``(scores [Q, k] float32, ids [Q, k])``, best first (see the module docstring for ties
            and missing results); ``[k]`` each for a 1-D query.
        """
        if self.count == 0:
            raise ValueError("the index is empty: add vectors before searching")
        if self.lists == "ondisk" and not self._lists_on_disk:
            raise ValueError("an index with lists='ondisk' is searchable once saved: call save()")
        q = np.asarray(queries)
        single = q.ndim == 1
        x = self._as_float32(q[None, :] if single else q, "queries")
        if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 1:
            raise ValueError(f"k must be a positive integer, got {k!r}")
        kk = min(int(k), self.count)
        params = self._search_params(nprobe, ef_search)
        exact = self.kind == "flat"
        fetch = kk + 1 if exact and kk < self.count else kk
        scores, positions = self._index.search(x, fetch, params=params)
        higher_better = self.metric == "ip"
        if exact and fetch > kk:
            # The (k+1)-th result ties with the k-th: the cut is ambiguous; rank those rows again.
            for row in np.flatnonzero(scores[:, kk - 1] == scores[:, kk]):
                scores[row, :kk], positions[row, :kk] = self._exact_row(x[row], kk)
            scores, positions = scores[:, :kk], positions[:, :kk]
        missing = positions < 0
        worst = -np.inf if higher_better else np.inf
        scores = np.where(missing, worst, scores).astype(np.float32)
        # Sort each list by (score, insertion order); missing results go last.
        key_pos = np.where(missing, np.iinfo(np.int64).max, positions)
        order = np.lexsort((key_pos, -scores if higher_better else scores), axis=-1)
        scores = np.take_along_axis(scores, order, axis=1)
        positions = np.take_along_axis(positions, order, axis=1)
        ids = self._ids_at(positions)
        return (scores[0], ids[0]) if single else (scores, ids)

    def _exact_row(self, query: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Exact top-k of one query against every stored vector, ties by insertion order."""
        n, d = self.count, self.dim
        import faiss

        xb = faiss.rev_swig_ptr(self._index.get_xb(), n * d).reshape(n, d)  # a view, no copy
        row = np.empty(n, dtype=np.float32)
        for start in range(0, n, ADD_BATCH_SIZE):
            block = xb[start : start + ADD_BATCH_SIZE]
            if self.metric == "ip":
                row[start : start + len(block)] = block @ query
            else:
                diff = block - query
                row[start : start + len(block)] = -np.einsum("ij,ij->i", diff, diff)
        top_scores, top_pos = rank_by_scores(row, None, k)
        return (top_scores if self.metric == "ip" else -top_scores), top_pos

    def _search_params(self, nprobe: int | None, ef_search: int | None):
        import faiss

        for name, value in (("nprobe", nprobe), ("ef_search", ef_search)):
            if value is not None and (not isinstance(value, int | np.integer) or value < 1):
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.kind in IVF_KINDS:
            return faiss.SearchParametersIVF(nprobe=int(nprobe or self.params["nprobe"]))
        if self.kind == "hnsw":
            return faiss.SearchParametersHNSW(efSearch=int(ef_search or self.params["ef_search"]))
        return None

    def _ids_at(self, positions: np.ndarray) -> np.ndarray:
        table = self.ids
        safe = np.where(positions < 0, 0, positions)
        out = np.asarray(table[safe])
        pad = None if self._id_type == "str" else -1
        out[positions < 0] = pad
        return out

    # ---------------------------------------------------------------------------- save / load

    def metadata(self) -> dict[str, Any]:
        """Everything :meth:`save` records in ``index.json`` except the file name and hash."""
        import faiss

        return {
            "format": FORMAT_NAME,
            "format_version": FORMAT_VERSION,
            "kind": self.kind,
            "metric": self.metric,
            "dim": self.dim,
            "count": self.count,
            "params": dict(self.params),
            "built_with": dict(self.built_with),
            "id_type": self._id_type or "int",
            "faiss_version": faiss.__version__,
            # int ids go to their own .npy file (see save), str ids stay here
            "ids": None if self._id_type == "int" else self.ids.tolist(),
        }

    def save(self, path: str | os.PathLike) -> Path:
        """Write the index to the folder ``path`` atomically (see the module docstring).

        Returns the path of the (first shard's) index file written. With ``lists="ondisk"`` the
        written-out blocks are merged into the folder's lists file(s), and this index then
        searches those (read-only). Not safe against two processes saving into the same folder at
        once.
        """
        if not self.is_trained:
            raise ValueError(f"this {self.kind} index has not been trained; nothing to save")
        folder = Path(path)
        if folder.exists() and not folder.is_dir():
            raise NotADirectoryError(f"{folder} exists and is not a folder")
        folder.mkdir(parents=True, exist_ok=True)
        import faiss

        if self.lists == "ondisk":
            for s, part in enumerate(self._parts):
                if part.ntotal == 0 and not (self._blocks and self._blocks[s]):
                    raise UserError(
                        f"lists='ondisk' needs at least one vector per shard; shard {s} is empty "
                        f"({self.count} vectors over {self.shards} shards)"
                    )
        files: list[dict[str, Any]] = []
        for s, part in enumerate(self._parts):
            tag = f"s{s}-" if self.shards > 1 else ""
            if self.lists == "ondisk":
                name, digest = self._write_lists(folder, s, part, tag)
                files.append({"name": name, "sha256": digest, "role": "lists", "shard": s})
            staged = folder / f"{TMP_PREFIX}{tag}index.faiss"
            with atomic_path(staged) as tmp:
                faiss.write_index(part, str(tmp))
            digest = sha256_file(staged)
            name = f"index-{tag}{digest[:16]}.faiss"
            os.replace(staged, folder / name)
            files.append({"name": name, "sha256": digest, "role": "index", "shard": s})
        if self._id_type == "int":
            staged = folder / f"{TMP_PREFIX}ids.npy"
            with atomic_path(staged) as tmp:
                np.save(tmp, np.ascontiguousarray(self.ids, dtype=np.int64))
            digest = sha256_file(staged)
            name = f"ids-{digest[:16]}.npy"
            os.replace(staged, folder / name)
            files.append({"name": name, "sha256": digest, "role": "ids"})
        fsync_dir(folder)
        if self.lists == "ondisk":
            self._lists_on_disk = True
            if self._block_dir is not None:
                shutil.rmtree(self._block_dir, ignore_errors=True)
            self._blocks, self._block_dir = [], None
            self._set_parts(self._parts)
        meta = self.metadata()
        meta.update(files=files, sha256=_files_digest(files))
        if self.shards == 1:
            meta["index_file"] = next(f["name"] for f in files if f["role"] == "index")
        write_text_atomic(folder / META_FILE, json.dumps(meta))
        keep = {f["name"] for f in files}
        for stale in folder.iterdir():
            data_file = any(
                stale.name.startswith(prefix) and stale.suffix == suffix
                for prefix, suffix in (
                    ("index-", ".faiss"),
                    ("lists-", ".ivfdata"),
                    ("ids-", ".npy"),
                )
            )
            if stale.name.startswith(TMP_PREFIX) or (data_file and stale.name not in keep):
                stale.unlink(missing_ok=True)
        return folder / files[1 if self.lists == "ondisk" else 0]["name"]

    def _write_lists(self, folder: Path, s: int, part: faiss.Index, tag: str) -> tuple[str, str]:
        """Merge shard ``s``'s blocks and RAM lists into ``folder/lists-….ivfdata``; ``part``
        then reads its lists from that file. Returns the file's name and sha256."""
        import faiss

        blocks = self._blocks[s] if self._blocks else []
        with _faiss_stdout_quiet():
            sources = [faiss.read_index(str(b), faiss.IO_FLAG_MMAP) for b in blocks] + [part]
        pointers = faiss.InvertedListsPtrVector()
        for source in sources:
            pointers.push_back(faiss.extract_index_ivf(source).invlists)
        staged = folder / f"{TMP_PREFIX}{tag}lists.ivfdata"
        staged.unlink(missing_ok=True)
        ivf = faiss.extract_index_ivf(part)
        ondisk = faiss.OnDiskInvertedLists(ivf.nlist, ivf.code_size, str(staged))
        with _faiss_stdout_quiet():
            total = ondisk.merge_from_multiple(pointers.data(), pointers.size(), False)
        del pointers, sources
        for block in blocks:
            block.unlink(missing_ok=True)
        fd = os.open(staged, os.O_RDONLY)
        try:
            os.fsync(fd)  # the mapping's dirty pages are the file's page cache
        finally:
            os.close(fd)
        digest = sha256_file(staged)
        name = f"lists-{tag}{digest[:16]}.ivfdata"
        os.replace(staged, folder / name)
        ondisk.filename = str(folder / name)  # what write_index records (load reads the basename)
        ondisk.prefetch_nthread = PREFETCH_THREADS
        ivf.replace_invlists(ondisk, True)
        ondisk.this.disown()  # owned by the index now
        part.ntotal = ivf.ntotal = int(total)
        return name, digest

    @classmethod
    def load(cls, path: str | os.PathLike) -> RetrievalIndex:
        """Read a folder written by :meth:`save`; raises :class:`IndexFileError` if anything is off."""
        folder = Path(path)
        meta_path = folder / META_FILE
        if not folder.is_dir():
            raise IndexFileError(
                f"{folder} is not an index folder (it does not exist or is a file)"
            )
        if not meta_path.is_file():
            raise IndexFileError(
                f"{meta_path} is missing: {folder} holds no complete index (was the save "
                "interrupted before it finished?)"
            )
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise IndexFileError(f"{meta_path} is not valid JSON: {err}") from err
        if not isinstance(meta, dict) or meta.get("format") != FORMAT_NAME:
            raise IndexFileError(f"{meta_path} is not a {FORMAT_NAME} metadata file")
        if meta.get("format_version") != FORMAT_VERSION:
            raise IndexFileError(
                f"{meta_path} has format_version {meta.get('format_version')!r}; "
                f"this code reads version {FORMAT_VERSION}"
            )
        required = ("kind", "metric", "dim", "count", "params", "id_type", "ids", "sha256")
        missing = [key for key in required if key not in meta]
        if "files" not in meta and "index_file" not in meta:
            missing.append("files")
        if missing:
            raise IndexFileError(f"{meta_path} lacks the field(s) {missing}")
        files = meta.get("files") or [
            {"name": meta["index_file"], "sha256": meta["sha256"], "role": "index", "shard": 0}
        ]
        if not isinstance(files, list) or not all(isinstance(f, dict) for f in files):
            raise IndexFileError(f"{meta_path}: files must be a list of objects")
        for entry in files:
            _verify_file(folder, entry, meta_path)
        ids = meta["ids"]
        ids_files = [f for f in files if f.get("role") == "ids"]
        if ids_files:  # int ids: a memory-mapped int64 array, not a Python list
            try:
                ids = np.load(folder / ids_files[0]["name"], mmap_mode="r", allow_pickle=False)
            except ValueError as err:
                raise IndexFileError(f"{folder / ids_files[0]['name']}: {err}") from err
            if ids.dtype != np.int64 or ids.ndim != 1 or meta["id_type"] != "int":
                raise IndexFileError(f"{ids_files[0]['name']} is not a 1-D int64 id table")
        if not isinstance(ids, list | np.ndarray) or len(ids) != meta["count"]:
            raise IndexFileError(
                f"{meta_path}: the id table does not hold count={meta['count']} ids"
            )
        params = dict(meta["params"])
        try:
            index = cls(meta["dim"], meta["kind"], meta["metric"], **params)
        except (TypeError, ValueError) as err:
            raise IndexFileError(f"{meta_path}: invalid settings: {err}") from err
        index.params.update(params)
        index.built_with = dict(meta.get("built_with") or {})
        parts = [index._read_part(folder, files, s, meta_path) for s in range(index.shards)]
        total = sum(int(p.ntotal) for p in parts)
        if total != meta["count"]:
            raise IndexFileError(f"{folder}'s index files hold {total} vectors; {meta_path} says "
                                 f"{meta['count']}")  # fmt: skip
        index._set_parts(parts)
        index._n = total
        index._lists_on_disk = index.lists == "ondisk"
        if meta["count"]:
            index._id_type = meta["id_type"]
            if meta["id_type"] == "str":
                if not all(isinstance(v, str) for v in ids):
                    raise IndexFileError(f"{meta_path}: id_type is str but the table is not")
                index._str_ids = ids
            else:
                index._int_chunks = [ids if ids_files else np.asarray(ids, dtype=np.int64)]
            index._seen = None  # built from the table if vectors are added
        return index

    def _read_part(
        self, folder: Path, files: list[dict[str, Any]], s: int, meta_path: Path
    ) -> faiss.Index:
        """Shard ``s``'s faiss index (its on-disk lists memory-mapped read-only), checked."""
        import faiss

        def named(role: str) -> Path | None:
            found = [f for f in files if f.get("role") == role and f.get("shard", 0) == s]
            if len(found) > 1:
                raise IndexFileError(f"{meta_path} names {len(found)} {role} files for shard {s}")
            return folder / found[0]["name"] if found else None

        index_file, lists_file = named("index"), named("lists")
        if index_file is None:
            raise IndexFileError(f"{meta_path} names no index file for shard {s}")
        if (lists_file is not None) != (self.lists == "ondisk"):
            raise IndexFileError(
                f"{meta_path}: lists={self.lists!r} but shard {s} "
                f"{'has' if lists_file else 'has no'} lists file"
            )
        flags = faiss.IO_FLAG_ONDISK_SAME_DIR | faiss.IO_FLAG_READ_ONLY if lists_file else 0
        try:
            with _faiss_stdout_quiet():
                raw = faiss.read_index(str(index_file), flags)
        except RuntimeError as err:
            raise IndexFileError(f"faiss cannot read {index_file}: {err}") from err
        if lists_file is not None:
            invlists = faiss.downcast_InvertedLists(faiss.extract_index_ivf(raw).invlists)
            if Path(getattr(invlists, "filename", "")).name != lists_file.name:
                raise IndexFileError(
                    f"{index_file} does not read its lists from {lists_file.name} (named in "
                    f"{meta_path})"
                )
            invlists.prefetch_nthread = PREFETCH_THREADS
        if raw.d != self.dim:
            raise IndexFileError(
                f"{index_file} holds vectors of dim {raw.d}; {meta_path} says {self.dim}"
            )
        if raw.metric_type != _metric_code(self.metric):
            raise IndexFileError(f"{index_file}'s metric differs from {meta_path}'s {self.metric}")
        return raw


class _SortedRuns:
    """A set of int64 ids as sorted arrays of decreasing size (merged like a binary counter):
    membership in O(log^2 N) with ``searchsorted``, adding in amortised O(log N) per id."""

    def __init__(self, ids: np.ndarray | None = None) -> None:
        self.runs: list[np.ndarray] = []
        if ids is not None and len(ids):
            self.add(np.asarray(ids, dtype=np.int64))

    def add(self, ids: np.ndarray) -> None:
        run = np.sort(np.asarray(ids, dtype=np.int64))
        while self.runs and len(self.runs[-1]) <= len(run):
            run = np.sort(np.concatenate([self.runs.pop(), run]), kind="stable")
        self.runs.append(run)

    def first_member(self, ids: np.ndarray) -> int | None:
        """The first of ``ids`` (in their order) that is in the set, or None."""
        hit = np.zeros(len(ids), dtype=bool)
        for run in self.runs:
            at = np.minimum(np.searchsorted(run, ids), len(run) - 1)
            hit |= run[at] == ids
        return int(ids[np.flatnonzero(hit)[0]]) if hit.any() else None


def _files_digest(files: list[dict[str, Any]]) -> str:
    """One sha256 for a save: the file's own for one file, else over every (name, sha256)."""
    if len(files) == 1:
        return str(files[0]["sha256"])
    import hashlib

    listing = json.dumps([[f["name"], f["sha256"]] for f in files])
    return hashlib.sha256(listing.encode()).hexdigest()


def _verify_file(folder: Path, entry: dict[str, Any], meta_path: Path) -> None:
    """Refuse a recorded file that is not a plain name, is missing, or whose sha256 differs."""
    name = entry.get("name")
    if not isinstance(name, str) or Path(name).name != name or name in ("", ".", ".."):
        raise IndexFileError(f"{meta_path}: file names must be plain file names, got {name!r}")
    path = folder / name
    if not path.is_file():
        raise IndexFileError(f"{path} (named in {meta_path}) is missing")
    digest = sha256_file(path)
    if digest != entry.get("sha256"):
        raise IndexFileError(
            f"{path} is corrupt or incomplete: its sha256 {digest[:16]}… differs from "
            f"the {str(entry.get('sha256'))[:16]}… recorded in {meta_path}"
        )
