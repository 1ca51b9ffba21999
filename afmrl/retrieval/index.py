"""``RetrievalIndex``: a faiss index of gallery embeddings with the gallery ids kept alongside.

Kinds (``kind=``):

- ``flat`` (default): exact inner-product (or L2) search, ``IndexFlatIP`` / ``IndexFlatL2``.
- ``ivf``: ``IndexIVFFlat``, an inverted file over ``nlist`` k-means cells, ``nprobe`` visited.
- ``ivfpq``: ``IndexIVFPQ``, the same with product-quantised vectors (``pq_m`` bytes each at 8
  bits): the index for galleries that do not fit in RAM as float32.
- ``hnsw``: ``IndexHNSWFlat``, a graph index (slow to build, fast to search).

IVF kinds need :meth:`RetrievalIndex.train` on a sample before :meth:`add`;
:meth:`RetrievalIndex.build` samples, trains and adds in batches in one call.

Ids: any ``str`` or ``int`` ids (one type per index, no duplicates). faiss stores vectors under
their insertion position and the id table maps positions back to ids. (faiss' ``IndexIDMap`` maps
int64 only; one table serves both id types and every kind.)

Ranking: results are sorted by descending score (ascending distance for ``l2``), ties by insertion
order, as :func:`afmrl.retrieval.ranking.rank_by_scores` does. For the exact kind that also
decides which of several items tied at the K-th place makes the cut. Missing results (an IVF probe
that found fewer than ``k``) come last with score ``-inf`` (``+inf`` for l2) and id ``-1`` (int ids)
or ``None`` (str ids).

On disk (:meth:`save` / :meth:`load`), a folder holds ``index-<sha256[:16]>.faiss`` (faiss' own
binary format) and ``index.json`` (kind, metric, dim, count, parameters, the id table and the
file's sha256). Both are written atomically (temporary file in the same folder, fsync,
``os.replace``), the index file first: a crash at any point leaves either the previous complete
save or nothing loadable, and :meth:`load` refuses an index file whose sha256 differs from the one
recorded. Nothing is pickled.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from afmrl.errors import UserError

if TYPE_CHECKING:
    import faiss
from afmrl.io import TMP_PREFIX, atomic_path, fsync_dir, sha256_file, write_text_atomic

from .ranking import rank_by_scores

INDEX_KINDS: tuple[str, ...] = ("flat", "ivf", "ivfpq", "hnsw")
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
        ]:
            if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if kind == "ivfpq":
            pq_m = default_pq_m(int(dim)) if pq_m is None else pq_m
            if dim % pq_m:
                raise ValueError(f"pq_m={pq_m} must divide dim={dim}")
            if pq_nbits > 16:
                raise ValueError(f"pq_nbits must be at most 16, got {pq_nbits}")
        self.dim = int(dim)
        self.kind = kind
        self.metric = metric
        self.params: dict[str, int | None] = {}
        if kind in ("ivf", "ivfpq"):
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
        self._index: faiss.Index | None = None
        self._int_chunks: list[np.ndarray] = []  # int ids, one array per add()
        self._str_ids: list[str] = []
        self._id_type: str | None = None  # "int" | "str"
        self._seen: set[int | str] = set()
        self._table_cache: np.ndarray | None = None
        if kind in ("flat", "hnsw"):
            self._index = self._new_faiss_index()

    # ------------------------------------------------------------------------------ properties

    @property
    def count(self) -> int:
        """Number of vectors in the index."""
        return 0 if self._index is None else int(self._index.ntotal)

    def __len__(self) -> int:
        return self.count

    @property
    def is_trained(self) -> bool:
        """False for an IVF index that still needs :meth:`train`."""
        return self._index is not None and bool(self._index.is_trained)

    @property
    def ids(self) -> np.ndarray:
        """``[count]`` ids in insertion order (int64, or object array of str)."""
        if self._table_cache is None:
            if self._id_type == "str":
                self._table_cache = np.array(self._str_ids, dtype=object)
            elif self._int_chunks:
                self._table_cache = np.concatenate(self._int_chunks)
                self._int_chunks = [self._table_cache]
            else:
                self._table_cache = np.zeros(0, dtype=np.int64)
        return self._table_cache

    @property
    def faiss_index(self) -> faiss.Index | None:
        """The underlying faiss index (for inspection; changing it bypasses the id table)."""
        return self._index

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
        if self._index is not None and self._index.is_trained:
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
        self._index = self._new_faiss_index()
        self._index.train(x)

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
        if kind in ("ivf", "ivfpq"):
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
        if not self._seen.isdisjoint(values):
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
            self._index.add(x)
            self._id_type = id_type
            chunk = batch_ids[start:stop]
            if id_type == "int":
                self._int_chunks.append(chunk)
                self._seen.update(chunk.tolist())
            else:
                self._str_ids.extend(chunk)
                self._seen.update(chunk)
            self._table_cache = None

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
        if self.kind in ("ivf", "ivfpq"):
            return faiss.SearchParametersIVF(nprobe=int(nprobe or self.params["nprobe"]))
        if self.kind == "hnsw":
            return faiss.SearchParametersHNSW(efSearch=int(ef_search or self.params["ef_search"]))
        return None

    def _ids_at(self, positions: np.ndarray) -> np.ndarray:
        table = self.ids
        safe = np.where(positions < 0, 0, positions)
        out = table[safe]
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
            "id_type": self._id_type or "int",
            "faiss_version": faiss.__version__,
            "ids": self.ids.tolist(),
        }

    def save(self, path: str | os.PathLike) -> Path:
        """Write the index to the folder ``path`` atomically (see the module docstring).

        Returns the path of the index file written. Not safe against two processes saving into
        the same folder at once.
        """
        if self._index is None:
            raise ValueError(f"this {self.kind} index has not been trained; nothing to save")
        folder = Path(path)
        if folder.exists() and not folder.is_dir():
            raise NotADirectoryError(f"{folder} exists and is not a folder")
        folder.mkdir(parents=True, exist_ok=True)
        import faiss

        staged = folder / f"{TMP_PREFIX}index.faiss"
        with atomic_path(staged) as tmp:
            faiss.write_index(self._index, str(tmp))
        digest = sha256_file(staged)
        index_file = folder / f"index-{digest[:16]}.faiss"
        os.replace(staged, index_file)
        fsync_dir(folder)
        meta = self.metadata()
        meta.update(index_file=index_file.name, sha256=digest)
        write_text_atomic(folder / META_FILE, json.dumps(meta))
        for stale in folder.iterdir():
            if stale.name.startswith(TMP_PREFIX) or (
                stale.name.startswith("index-")
                and stale.suffix == ".faiss"
                and stale.name != index_file.name
            ):
                stale.unlink(missing_ok=True)
        return index_file

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
        required = ("kind", "metric", "dim", "count", "params", "id_type", "ids")
        missing = [key for key in (*required, "index_file", "sha256") if key not in meta]
        if missing:
            raise IndexFileError(f"{meta_path} lacks the field(s) {missing}")
        name = meta["index_file"]
        if not isinstance(name, str) or Path(name).name != name:
            raise IndexFileError(f"{meta_path}: index_file must be a file name, got {name!r}")
        index_file = folder / name
        if not index_file.is_file():
            raise IndexFileError(f"{index_file} (named in {meta_path}) is missing")
        digest = sha256_file(index_file)
        if digest != meta["sha256"]:
            raise IndexFileError(
                f"{index_file} is corrupt or incomplete: its sha256 {digest[:16]}… differs from "
                f"the {str(meta['sha256'])[:16]}… recorded in {meta_path}"
            )
        ids = meta["ids"]
        if not isinstance(ids, list) or len(ids) != meta["count"]:
            raise IndexFileError(
                f"{meta_path}: the id table does not hold count={meta['count']} ids"
            )
        params = dict(meta["params"])
        try:
            index = cls(meta["dim"], meta["kind"], meta["metric"], **params)
        except (TypeError, ValueError) as err:
            raise IndexFileError(f"{meta_path}: invalid settings: {err}") from err
        index.params.update(params)
        import faiss

        try:
            raw = faiss.read_index(str(index_file))
        except RuntimeError as err:
            raise IndexFileError(f"faiss cannot read {index_file}: {err}") from err
        if raw.d != index.dim or raw.ntotal != meta["count"]:
            raise IndexFileError(
                f"{index_file} holds {raw.ntotal} vectors of dim {raw.d}; {meta_path} says "
                f"{meta['count']} of dim {index.dim}"
            )
        if raw.metric_type != _metric_code(index.metric):
            raise IndexFileError(f"{index_file}'s metric differs from {meta_path}'s {index.metric}")
        index._index = raw
        if meta["count"]:
            index._id_type = meta["id_type"]
            if meta["id_type"] == "str":
                if not all(isinstance(v, str) for v in ids):
                    raise IndexFileError(f"{meta_path}: id_type is str but the table is not")
                index._str_ids = ids
            else:
                index._int_chunks = [np.asarray(ids, dtype=np.int64)]
            index._seen = set(ids)
        return index
