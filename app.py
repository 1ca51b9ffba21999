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

``space.json`` beside this file (written by ``afmrl push --space-repo``) gives defaults for these
variables. Command-line flags override the environment: ``python app.py --model my/ckpt --port
7861``.
"""

import json
import os
import sys
from pathlib import Path

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
# `afmrl push --space-repo` writes space.json beside this file: the model and catalogue to serve.
_config = Path(__file__).with_name("space.json")
if _config.is_file():
    for _key, _value in json.loads(_config.read_text()).items():
        os.environ.setdefault(_key, str(_value))

if __name__ == "__main__":
    from afmrl.cli import main

    sys.exit(main(["demo", *sys.argv[1:]]))
