"""Process-wide settings for a command's run, restored when it ends.

``torch.set_num_threads`` and ``torch.set_flush_denormal`` change the whole process, and so do the
libraries' progress-bar and logging switches. Commands run inside :func:`torch_settings` and
:func:`quiet_libraries`, so a command called in-process (a test, a notebook, the pipeline) leaves
the process as it found it.
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


#: Environment switches read by libraries at import time, and the value a command wants.
_QUIET_ENV = {
    "HF_DATASETS_DISABLE_PROGRESS_BARS": "1",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    "TRANSFORMERS_VERBOSITY": "error",
}


@contextlib.contextmanager
def quiet_libraries() -> Iterator[None]:
    """Third-party progress bars and advisory warnings off inside the block, restored after.

    Commands show their own progress (:mod:`afmrl.progress`) and report problems as one line, so
    the libraries' bars and advice would only bury that line. Libraries not imported yet read the
    environment; those already imported are switched through their own API.
    """
    import os
    import sys

    saved_env = {k: os.environ.get(k) for k in _QUIET_ENV}
    for key, value in _QUIET_ENV.items():
        os.environ.setdefault(key, value)
    undo = []
    if "datasets" in sys.modules:
        import datasets.utils as ds_utils
        from datasets.utils import logging as ds_logging

        if not ds_utils.are_progress_bars_disabled():
            ds_utils.disable_progress_bars()
            undo.append(ds_utils.enable_progress_bars)
        level = ds_logging.get_verbosity()
        ds_logging.set_verbosity_error()
        undo.append(lambda: ds_logging.set_verbosity(level))
    if "transformers" in sys.modules:
        from transformers.utils import logging as tf_logging

        if tf_logging.is_progress_bar_enabled():
            tf_logging.disable_progress_bar()
            undo.append(tf_logging.enable_progress_bar)
        level = tf_logging.get_verbosity()
        tf_logging.set_verbosity_error()
        undo.append(lambda: tf_logging.set_verbosity(level))
    try:
        yield
    finally:
        for restore in reversed(undo):
            restore()
        for key, value in saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


__all__ = ["quiet_libraries", "torch_settings"]
