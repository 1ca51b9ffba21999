"""Progress display for long loops: a tqdm bar on a terminal, a few plain lines in a log.

When stderr is not a terminal (a log file, CI), a carriage-return progress bar writes hundreds of
frames into the log; :func:`progress_bar` then prints one plain line per quarter of the work
instead (and at the end), each with the elapsed time.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator
from typing import Any


class _LogProgress:
    """The log-friendly stand-in for a tqdm bar: same ``update`` / ``close`` / iteration API."""

    def __init__(self, iterable, total: int | None, desc: str, unit: str, initial: int):
        self.iterable = iterable
        self.total = total
        self.desc = desc
        self.unit = unit
        self.n = initial
        self.start = time.perf_counter()
        self._next_quarter = 1
        self._closed = False
        if total:
            while self._next_quarter <= 4 and self.n * 4 >= self._next_quarter * total:
                self._next_quarter += 1
            if initial:
                self._line(f"resuming at {initial}/{total} {unit}")

    def _line(self, text: str) -> None:
        print(f"{self.desc}: {text} ({time.perf_counter() - self.start:.0f} s)", file=sys.stderr,
              flush=True)  # fmt: skip

    def update(self, n: int = 1) -> None:
        self.n += n
        if not self.total:
            return
        while self._next_quarter <= 4 and self.n * 4 >= self._next_quarter * self.total:
            self._line(f"{25 * self._next_quarter}% ({self.n}/{self.total} {self.unit})")
            self._next_quarter += 1

    def close(self) -> None:
        if not self._closed and not self.total:
            self._line(f"done ({self.n} {self.unit})")
        self._closed = True

    def __iter__(self) -> Iterator[Any]:
        for item in self.iterable:
            yield item
            self.update(1)
        self.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class _NoProgress(_LogProgress):
    def _line(self, text: str) -> None:
        pass


def progress_bar(
    iterable: Iterable | None = None,
    *,
    total: int | None = None,
    desc: str = "",
    unit: str = "it",
    initial: int = 0,
    enabled: bool = True,
) -> Any:
    """A progress display over ``iterable`` (or updated by hand with ``update(n)``).

    A tqdm bar when stderr is a terminal, plain quarter lines otherwise, nothing when not
    ``enabled``. Use it as an iterable or as a context manager.
    """
    if total is None and iterable is not None and hasattr(iterable, "__len__"):
        total = len(iterable)
    if not enabled:
        return _NoProgress(iterable, total, desc, unit, initial)
    if sys.stderr.isatty():
        from tqdm.auto import tqdm

        return tqdm(iterable, total=total, desc=desc, unit=unit, initial=initial, leave=False)
    return _LogProgress(iterable, total, desc, unit, initial)


__all__ = ["progress_bar"]
