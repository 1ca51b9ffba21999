"""Shared by the retrieval tests."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True, scope="module")
def _one_faiss_thread():
    """Tiny indexes gain nothing from threads, and OpenMP spin-waits stall on a busy machine."""
    import faiss

    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    yield
    faiss.omp_set_num_threads(before)


@pytest.fixture(scope="session")
def checkpoint() -> str:
    """A saved tiny dual-encoder checkpoint (no extractor)."""
    from tiny_models import saved_tiny_checkpoint

    return saved_tiny_checkpoint("dual")
