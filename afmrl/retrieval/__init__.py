"""Retrieval: encode a catalogue, index it with faiss, search it, and generate attributes.

- :mod:`~afmrl.retrieval.encoding`: a split's embeddings in a modality (listing, image, text).
- :mod:`~afmrl.retrieval.attributes`: :func:`generate_attributes`, the one way a split gets its
  extractor attributes (one policy for malformed output; resumable).
- :mod:`~afmrl.retrieval.index`: :class:`RetrievalIndex`, a faiss index with the gallery ids kept.
- :mod:`~afmrl.retrieval.indexing`: :func:`build_index`, a resumable index folder (``afmrl index``).
- :mod:`~afmrl.retrieval.search`: :func:`search_index` over such a folder (``afmrl search``).
- :mod:`~afmrl.retrieval.ranking`: :func:`rank_by_scores`, the exact top-K with stable ties.

Submodules are imported on use (faiss and torch are heavy).
"""
