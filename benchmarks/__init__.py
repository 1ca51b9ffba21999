"""Speed and memory benchmarks (scripts; the product code lives in ``afmrl``, ``trainers`` and
``modeling_afmrl``)."""
