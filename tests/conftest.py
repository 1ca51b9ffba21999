"""Test-wide settings: everything offline, no telemetry, tiny thread pools."""

from __future__ import annotations

import os

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


@pytest.fixture
def one_torch_thread():
    """torch on one thread for the test (restored after): small models, deterministic kernels."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
