"""The AFMRL Hugging Face Space: find the identical product, see why, fix an attribute, decide.

Runs ``afmrl demo`` -- the same command as locally -- configured by the environment a Space sets:

* ``MODEL_ID``: the checkpoint, a Hub id or a local folder (loaded with ``AutoModel`` /
  ``AutoProcessor`` and ``trust_remote_code``; its ``calibration.json`` gives the "identical"
  probability);
* ``DATA_ID`` / ``DATA_SPLIT``: the catalogue and the split searched (default: ``gallery``);
* ``DEMO_ATTRIBUTES``: ``auto`` (default), ``generated``, ``teacher`` or ``none``;
* ``AFMRL_DEMO_CACHE``: where the gallery index is cached (``/data/...`` on persistent storage);
* ``GRADIO_SERVER_NAME`` / ``GRADIO_SERVER_PORT``: the address (Spaces set ``0.0.0.0``; locally the
  default is 127.0.0.1).

Command-line flags override the environment: ``python app.py --model my/ckpt --port 7861``.
"""

import os
import sys

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

from afmrl.cli import main

if __name__ == "__main__":
    sys.exit(main(["demo", *sys.argv[1:]]))
