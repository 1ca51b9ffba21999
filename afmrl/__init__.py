"""AFMRL: attribute-enhanced fine-grained multimodal product representation.

The importable pieces live in sibling packages: ``modeling_afmrl`` (what a checkpoint needs),
``trainers`` (AGCL, extractor SFT, RAR), ``benchmarks`` (catalogue, metrics, retrieval) and
``hub_cards``. This package holds the command line and catalogue loading.
"""

__version__ = "0.1.0.dev0"
