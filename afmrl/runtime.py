"""Process-wide torch settings for a command's run, restored when it ends.

``torch.set_num_threads`` and ``torch.set_flush_denormal`` change the whole process. Commands run
inside :func:`torch_settings`, so a command called in-process (a test, a notebook, the pipeline)
leaves torch as it found it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator


@contextlib.contextmanager
def torch_settings(threads: int | None = None, flush_denormal: bool = False) -> Iterator[None]:
    """Run the block with ``threads`` torch CPU threads (``None``/0: unchanged) and, with
    ``flush_denormal``, denormal floats flushed to zero (it removed multi-second stalls in CPU
    training here). Both are restored afterwards (flush-denormal to off, torch's default: torch
    offers no way to read the current mode)."""
    import torch

    old_threads = torch.get_num_threads()
    if threads:
        torch.set_num_threads(int(threads))
    if flush_denormal:
        torch.set_flush_denormal(True)
    try:
        yield
    finally:
        if flush_denormal:
            torch.set_flush_denormal(False)
        if torch.get_num_threads() != old_threads:
            torch.set_num_threads(old_threads)


__all__ = ["torch_settings"]
