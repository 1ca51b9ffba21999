"""The demo (the Hugging Face Space): find the identical product, see why, fix an attribute, decide.

- :mod:`~afmrl.demo.loading`: the checkpoint loaded as a Space loads it (``AutoModel`` /
  ``AutoProcessor`` with ``trust_remote_code``) and its stored calibration.
- :mod:`~afmrl.demo.gallery`: the gallery index, built once with progress and cached on disk.
- :mod:`~afmrl.demo.images`: upload checks (type, size, pixels) and downscaling.
- :mod:`~afmrl.demo.service`: :class:`DemoService` -- search with the attribute diff, compare.
- :mod:`~afmrl.demo.ui`: the Gradio app over the service (``afmrl demo``, ``app.py``).

Everything but ``ui`` is independent of Gradio. Submodules are imported on use.
"""

from afmrl.lazy import lazy_exports

__getattr__ = lazy_exports(
    __name__,
    {
        "DemoService": "service",
        "Listing": "service",
        "attribute_diff": "service",
        "open_gallery": "gallery",
        "read_photo": "images",
        "load_space_model": "loading",
        "load_calibration": "loading",
    },
)
