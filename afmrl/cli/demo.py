"""``afmrl demo``: the Gradio demo -- the same app the Hugging Face Space (``app.py``) runs.

Loads the checkpoint as a Space does (``AutoModel`` / ``AutoProcessor``, ``trust_remote_code``),
indexes the gallery once (cached under ``--cache``, reused on the next start), reads the
checkpoint's ``calibration.json`` (``afmrl calibrate``) and serves the Search and Compare tabs. See
:mod:`afmrl.demo`.

Defaults come from the environment where a Space sets them: ``MODEL_ID``, ``DATA_ID``,
``DATA_SPLIT``, ``DEMO_ATTRIBUTES``, ``AFMRL_DEMO_CACHE``, ``GRADIO_SERVER_NAME``,
``GRADIO_SERVER_PORT``; otherwise the quickstart's model and catalogue on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import os

from afmrl.cli.arguments import (
    add_batch_arguments,
    add_column_mapping,
    add_no_progress,
    non_negative_int,
    positive_float,
    positive_int,
)
from afmrl.demo.loading import DEFAULT_DATA, DEFAULT_MODEL
from afmrl.retrieval.attributes import ATTRIBUTE_SOURCES
from afmrl.retrieval.encoding import DEFAULT_ENCODE_BATCH_SIZE


def _port(text: str) -> int:
    value = positive_int(text)
    if value > 65535:
        raise argparse.ArgumentTypeError(f"expected a port number, got {text!r}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    env = os.environ.get
    parser.add_argument(
        "--model",
        default=env("MODEL_ID", DEFAULT_MODEL),
        help="checkpoint: Hub id or local folder (env MODEL_ID; default: %(default)s)",
    )
    parser.add_argument(
        "--data",
        default=env("DATA_ID", DEFAULT_DATA),
        help="catalogue whose split is the gallery (env DATA_ID; default: %(default)s)",
    )
    parser.add_argument(
        "--split",
        default=env("DATA_SPLIT", "gallery"),
        help="the gallery split (env DATA_SPLIT; default: %(default)s)",
    )
    parser.add_argument(
        "--attributes",
        choices=("auto", *ATTRIBUTE_SOURCES),
        default=env("DEMO_ATTRIBUTES", "auto"),
        help="attributes in the gallery's embeddings: auto = those the checkpoint's calibration "
        "used, else generated with an extractor, else none (env DEMO_ATTRIBUTES; "
        "default: %(default)s)",
    )
    parser.add_argument(
        "--cache",
        default=None,
        help="gallery cache folder (env AFMRL_DEMO_CACHE; default: ~/.cache/afmrl/demo)",
    )
    parser.add_argument(
        "--host",
        default=env("GRADIO_SERVER_NAME", "127.0.0.1"),
        help="address to bind (env GRADIO_SERVER_NAME; default: %(default)s, this machine only)",
    )
    parser.add_argument(
        "--port",
        type=_port,
        default=int(env("GRADIO_SERVER_PORT", "0")) or None,
        help="port (env GRADIO_SERVER_PORT; default: the first free one from 7860)",
    )
    parser.add_argument(
        "--concurrency",
        type=positive_int,
        default=1,
        help="requests computed at once; the others wait in the queue (default: %(default)s)",
    )
    parser.add_argument(
        "--queue-size",
        type=positive_int,
        default=64,
        help="requests that may wait; more are refused with a message (default: %(default)s)",
    )
    parser.add_argument(
        "--max-file-mb",
        type=positive_float,
        default=10.0,
        help="largest upload in MB (default: %(default)s)",
    )
    parser.add_argument(
        "--examples",
        type=non_negative_int,
        default=6,
        help="gallery photos offered as examples (default: %(default)s)",
    )
    add_batch_arguments(parser, DEFAULT_ENCODE_BATCH_SIZE, "listings per batch while indexing")
    add_column_mapping(parser)
    parser.add_argument(
        "--build-only",
        action="store_true",
        help="build (or check) the gallery cache and exit without serving",
    )
    parser.add_argument("--threads", type=positive_int, default=None, help="torch CPU threads")
    add_no_progress(parser)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    from afmrl.data import load_catalog, parse_column_mapping
    from afmrl.demo.gallery import default_cache_root, open_gallery
    from afmrl.demo.loading import load_calibration, load_space_model
    from afmrl.demo.service import DemoService
    from afmrl.errors import UserError
    from afmrl.runtime import torch_settings

    if args.max_file_mb > 1024:
        raise UserError("--max-file-mb: at most 1024")
    cache = Path(args.cache) if args.cache else default_cache_root()
    if cache.exists() and not cache.is_dir():
        raise UserError(f"--cache {cache} exists and is not a folder")
    split = load_catalog(args.data, columns=parse_column_mapping(args.column), splits=[args.split])
    model = load_space_model(args.model)
    calibration, note = load_calibration(model)
    attributes = args.attributes
    if attributes == "auto":
        used = (calibration.meta.get("encoding") or {}).get("attributes") if calibration else None
        attributes = used or ("generated" if model.extractor is not None else "none")
    if attributes == "generated" and model.extractor is None:
        raise UserError(f"--attributes generated: {args.model} has no attribute extractor")
    print(
        f"[demo] model {args.model}; gallery {args.data} [{args.split}], {len(split[args.split])} "
        f"listings, {attributes} attributes; calibration: "
        f"{'yes' if calibration else 'none'}"
    )
    with torch_settings(args.threads):
        gallery = open_gallery(
            model,
            split[args.split],
            cache,
            attributes=attributes,
            batch_size=args.batch_size,
            max_new_tokens=args.max_new_tokens,
            examples=args.examples,
            describe={
                "model": os.path.abspath(args.model) if Path(args.model).exists() else args.model,
                "data": os.path.abspath(args.data) if Path(args.data).exists() else args.data,
                "split": args.split,
            },
            show_progress=not args.no_progress,
        )
        if gallery.reused:
            print(f"[demo] gallery index reused from {gallery.folder}")
        if args.build_only:
            print(f"[demo] gallery cache ready: {gallery.folder}")
            return 0
        from afmrl.demo.ui import build_app, launch

        service = DemoService(model, gallery, calibration, note, max_new_tokens=args.max_new_tokens)
        app = build_app(service)
        try:
            launch(
                app,
                host=args.host,
                port=args.port,
                concurrency=args.concurrency,
                queue_size=args.queue_size,
                max_file_mb=args.max_file_mb,
                allowed_paths=[gallery.folder],
            )
        except KeyboardInterrupt:
            print("[demo] stopped")
        except OSError as err:  # the port is taken, the address is not this machine's...
            raise UserError(f"cannot serve on {args.host}:{args.port or 'auto'} ({err})") from err
        finally:
            app.close()
    return 0
