"""Test-wide settings: everything offline, no telemetry, tiny thread pools."""

from __future__ import annotations

import os
import sys

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

try:  # property tests: no per-example deadline (CI machines are small and shared)
    from hypothesis import settings

    settings.register_profile("afmrl", deadline=None)
    settings.load_profile("afmrl")
except ImportError:  # pragma: no cover - hypothesis is in the dev extra
    pass


@pytest.fixture(autouse=True)
def _restore_float_state():
    """Commands run in-process may call ``torch.set_flush_denormal(True)`` (a CPU speed-up for
    training); it is process-wide, so undo it after each test: it changes float results in the
    last bits and breaks hypothesis' float strategies."""
    torch = sys.modules.get("torch")
    threads = torch.get_num_threads() if torch is not None else None
    yield
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_flush_denormal(False)
        if threads is not None:
            torch.set_num_threads(threads)
