"""File I/O that survives crashes, in one place: atomic writes, folder swaps, hashes, resumable shards.

* **Atomic files** (:func:`atomic_path`, :func:`write_text_atomic`, :func:`write_json_atomic`): the
  bytes go to a temporary file in the same folder, are fsynced, then ``os.replace`` puts them in
  place, so a crash leaves the previous complete file or none, never half of one.
* **Folder outputs** (:func:`building`): a command that produces a folder builds it beside its
  destination and swaps it in only when complete; an interrupted build leaves the old folder intact.
* **Identity** (:func:`sha256_file`, :class:`Fingerprint`, :func:`fingerprint`): what decides
  whether a cache, a checkpoint shard or a dataset may be reused.
* **Resumable work** (:class:`ShardFolder`): numbered shards plus a manifest of the settings that
  produced them; a killed job rerun with the same settings reuses every finished shard, and a folder
  made with other settings is refused rather than mixed in.

Standard library (and numpy for array shards, imported on use) only: cheap to import anywhere.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import struct
import uuid
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from .errors import UserError

#: Prefix of in-flight temporary files (readers skip them, :class:`ShardFolder` removes them).
TMP_PREFIX = ".tmp-"


# --------------------------------------------------------------------------------- atomic files


def fsync_dir(folder: str | os.PathLike) -> None:
    """Make renames in ``folder`` durable (no-op where directories cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; when the block succeeds, fsync it and rename it over
    ``path``. For writers that want a file name (``np.save``, ``faiss.write_index``, ``savefig``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{TMP_PREFIX}{uuid.uuid4().hex}{path.suffix}")
    try:
        yield tmp
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    fsync_dir(path.parent)


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: str | os.PathLike, obj: Any, indent: int | None = 2) -> None:
    """Write ``obj`` as JSON (with a final newline when indented) to ``path`` atomically."""
    text = json.dumps(obj, indent=indent, ensure_ascii=False)
    write_text_atomic(path, text + ("\n" if indent is not None else ""))


# ------------------------------------------------------------------------------- folder outputs


def staging_folder(out: str | os.PathLike) -> Path:
    """Where :func:`building` builds ``out`` (a hidden sibling)."""
    out = Path(out)
    return out.parent / f".{out.name}.building"


@contextlib.contextmanager
def building(out: str | os.PathLike) -> Iterator[Path]:
    """Build a folder output beside ``out`` and swap it in only when the block succeeds.

    Yields an empty staging folder next to ``out``. On success an existing ``out`` is renamed away,
    the staging folder takes its name, and the old one is deleted; on an exception the staging
    folder is deleted and ``out`` is untouched. A stale staging folder (a killed build) is removed
    first, and an ``out`` left renamed away by a kill between the two renames is put back.
    Deciding whether ``out`` may be replaced at all is the caller's job.
    """
    out = Path(out)
    staging = staging_folder(out)
    old = out.parent / f".{out.name}.old"
    if old.exists() and not out.exists():
        old.rename(out)
    shutil.rmtree(staging, ignore_errors=True)
    shutil.rmtree(old, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if out.exists():
        out.rename(old)
    staging.rename(out)
    fsync_dir(out.parent)
    shutil.rmtree(old, ignore_errors=True)


def looks_like_local_path(name: str, suffixes: tuple[str, ...] = ()) -> bool:
    """True for a name that cannot be a Hub id (``org/name`` or ``name``): it starts with ``.``,
    ``/``, ``~`` or ``\\``, has more than one ``/``, or ends with one of ``suffixes``. Such a
    name that does not exist is reported as a missing path, not looked up on the Hub."""
    return (
        name.startswith((".", "/", "~", "\\"))
        or name.count("/") > 1
        or "\\" in name
        or (bool(suffixes) and name.lower().endswith(suffixes))
    )


# ------------------------------------------------------------------------------------ identity


def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of a file's bytes (streamed)."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


class Fingerprint:
    """A sha256 over a sequence of typed values: ``Fingerprint().update("a", 1, array).hexdigest()``.

    Every value is written with its type and length, so ``("ab", "c")`` and ``("a", "bc")`` differ.
    Accepts ``None``, ``str``, ``bytes``, ``bool``/``int``/``float``, numpy arrays, torch tensors
    (any dtype, raw bytes), and JSON-able containers (canonical JSON).
    """

    def __init__(self) -> None:
        self._hash = hashlib.sha256()

    def update(self, *values: Any) -> Fingerprint:
        for value in values:
            self._put(value)
        return self

    def _raw(self, tag: bytes, data: bytes) -> None:
        self._hash.update(tag + struct.pack("<Q", len(data)) + data)

    def _put(self, value: Any) -> None:
        if value is None:
            self._hash.update(b"N")
        elif isinstance(value, str):
            self._raw(b"S", value.encode("utf-8"))
        elif isinstance(value, bytes | bytearray | memoryview):
            self._raw(b"B", bytes(value))
        elif isinstance(value, bool | int | float):
            self._raw(b"V", repr(value).encode())
        elif hasattr(value, "detach") and hasattr(value, "dtype"):  # a torch tensor
            t = value.detach().to("cpu").contiguous()
            self._raw(b"T", f"{t.dtype}{tuple(t.shape)}".encode())
            self._raw(b"D", _tensor_bytes(t))
        elif hasattr(value, "dtype") and hasattr(value, "tobytes"):  # a numpy array
            import numpy as np

            arr = np.ascontiguousarray(value)
            self._raw(b"A", f"{arr.dtype.str}{arr.shape}".encode())
            self._raw(b"D", arr.tobytes())
        else:
            self._raw(b"J", json.dumps(value, sort_keys=True, default=str).encode("utf-8"))

    def hexdigest(self) -> str:
        return self._hash.hexdigest()


def _tensor_bytes(t: Any) -> bytes:
    """Raw bytes of a contiguous CPU tensor of any dtype (bf16 included: numpy has no bf16)."""
    import torch

    return t.reshape(-1).view(torch.uint8).numpy().tobytes()


def fingerprint(*values: Any) -> str:
    """Hex sha256 of ``values`` (see :class:`Fingerprint`)."""
    return Fingerprint().update(*values).hexdigest()


def ids_fingerprint(ids: Sequence[Any]) -> str:
    """Identifies which rows, in which order: the sha256 of the ids as strings."""
    h = Fingerprint()
    for i in ids:
        h.update(str(i))
    return h.hexdigest()


def state_dict_fingerprint(state_dict: Mapping[str, Any]) -> str:
    """Identifies a module's weights: names, dtypes, shapes and values, in name order."""
    h = Fingerprint()
    for name in sorted(state_dict):
        h.update(name, state_dict[name])
    return h.hexdigest()


# ------------------------------------------------------------------------------ resumable shards

SHARDS_FORMAT = "afmrl-shards-v1"


class ShardFolder:
    """Numbered shards written one at a time, so that a killed job resumes where it stopped.

    Layout of ``folder``::

        manifest.json            {"format": ..., "manifest": {what produced the shards}}
        shard-000000.<name>.npy  optional arrays of shard 0 (written first)
        shard-000000.json        shard 0's rows, written last: its presence marks the shard done

    :meth:`open` creates the folder, or checks that the manifest on disk equals the one given (a
    folder made with other settings raises :class:`~afmrl.errors.UserError` naming what differs)
    and returns how many leading shards are complete; a damaged shard and everything after it are
    redone. Every file is written atomically.

    Args:
        folder: the work folder.
        manifest: JSON-able description of everything that must match for shards to be reused
            (fingerprints of the model and the rows, the settings); paths that may move do not
            belong in it.
        restart_hint: how the user starts over, for the error message (e.g. ``"use --overwrite"``).
    """

    MANIFEST_FILE = "manifest.json"

    def __init__(
        self,
        folder: str | os.PathLike,
        manifest: Mapping[str, Any],
        restart_hint: str = "delete that folder to start over",
    ):
        self.folder = Path(folder)
        self.manifest = json.loads(json.dumps(dict(manifest), sort_keys=True, default=str))
        self.restart_hint = restart_hint

    def open(self, num_shards: int) -> int:
        """Prepare the folder; returns how many leading shards of ``num_shards`` are complete."""
        path = self.folder / self.MANIFEST_FILE
        if path.is_file():
            try:
                stored = json.loads(path.read_text(encoding="utf-8"))
                stored_manifest = stored["manifest"]
                if stored.get("format") != SHARDS_FORMAT:
                    raise ValueError(f"format {stored.get('format')!r}")
            except (OSError, ValueError, KeyError, TypeError) as err:
                raise UserError(f"{path} is unreadable ({err}); {self.restart_hint}") from err
            if stored_manifest != self.manifest:
                keys = sorted(
                    k
                    for k in set(stored_manifest) | set(self.manifest)
                    if stored_manifest.get(k) != self.manifest.get(k)
                )
                raise UserError(
                    f"{self.folder} holds unfinished work made with other settings (differs in: "
                    f"{', '.join(keys)}); rerun with the same settings to resume, or "
                    f"{self.restart_hint}"
                )
        else:
            self.folder.mkdir(parents=True, exist_ok=True)
            write_json_atomic(path, {"format": SHARDS_FORMAT, "manifest": self.manifest})
        for stale in self.folder.glob(f"{TMP_PREFIX}*"):
            stale.unlink(missing_ok=True)
        done = 0
        while done < num_shards and self.complete(done):
            done += 1
        return done

    def _rows_path(self, index: int) -> Path:
        return self.folder / f"shard-{index:06d}.json"

    def _array_path(self, index: int, name: str) -> Path:
        return self.folder / f"shard-{index:06d}.{name}.npy"

    def write(
        self,
        index: int,
        rows: Mapping[str, Sequence[Any]],
        arrays: Mapping[str, Any] | None = None,
    ) -> None:
        """Write shard ``index``: ``rows`` (column -> values, JSON-able, equal lengths) and
        ``arrays`` (name -> ``[n, ...]`` numpy array), arrays first, rows last."""
        import numpy as np

        lengths = {len(v) for v in rows.values()} | {len(a) for a in (arrays or {}).values()}
        if len(lengths) > 1:
            raise ValueError(f"shard {index}: columns and arrays have different lengths {lengths}")
        for name, array in (arrays or {}).items():
            with atomic_path(self._array_path(index, name)) as tmp, open(tmp, "wb") as f:
                np.save(f, np.ascontiguousarray(array), allow_pickle=False)
        payload = {
            "num_rows": lengths.pop() if lengths else 0,
            "rows": {k: list(v) for k, v in rows.items()},
            "arrays": sorted(arrays or {}),
        }
        write_json_atomic(self._rows_path(index), payload, indent=None)

    def read(self, index: int, mmap: bool = False) -> tuple[dict[str, list], dict[str, Any]]:
        """``(rows, arrays)`` of a complete shard (arrays memory-mapped with ``mmap``)."""
        import numpy as np

        payload = json.loads(self._rows_path(index).read_text(encoding="utf-8"))
        arrays = {
            name: np.load(
                self._array_path(index, name), mmap_mode="r" if mmap else None, allow_pickle=False
            )
            for name in payload["arrays"]
        }
        return payload["rows"], arrays

    def complete(self, index: int) -> bool:
        """True when shard ``index`` was written completely and reads back consistently."""
        try:
            rows, arrays = self.read(index, mmap=True)
            payload_rows = {len(v) for v in rows.values()} | {len(a) for a in arrays.values()}
        except (OSError, ValueError, KeyError, TypeError):
            return False
        return len(payload_rows) <= 1

    def remove(self) -> None:
        """Delete the folder and its shards."""
        shutil.rmtree(self.folder, ignore_errors=True)


__all__ = [
    "TMP_PREFIX",
    "Fingerprint",
    "ShardFolder",
    "atomic_path",
    "building",
    "fingerprint",
    "fsync_dir",
    "ids_fingerprint",
    "looks_like_local_path",
    "sha256_file",
    "staging_folder",
    "state_dict_fingerprint",
    "write_bytes_atomic",
    "write_json_atomic",
    "write_text_atomic",
]
