"""``afmrl init``: build the embedded default checkpoint offline.

EfficientNet-Lite0 (ImageNet, hash-pinned) + all-MiniLM-L6-v2 as the dual encoder, and a small
LLaVA extractor (the same EfficientNet-Lite0 + a small Qwen2 decoder + a tokenizer trained here).
With ``--data`` the tokenizer also learns the catalogue's train titles and teacher attributes.
The folder loads with ``AutoModel.from_pretrained(DIR, trust_remote_code=True)`` anywhere.
"""

from __future__ import annotations

import argparse

from afmrl.cli.arguments import add_column_mapping, add_fields, check_out, settings_from_args
from afmrl.defaults.config import EmbeddedDefaultConfig
from afmrl.models import is_checkpoint_folder


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, help="checkpoint folder to write")
    parser.add_argument(
        "--data",
        default=None,
        help="catalogue whose train titles and teacher attributes train the extractor's tokenizer",
    )
    add_column_mapping(parser)
    add_fields(parser, EmbeddedDefaultConfig, *EmbeddedDefaultConfig.__dataclass_fields__)
    parser.add_argument(
        "--overwrite", action="store_true", help="replace a checkpoint already in --out"
    )


def run(args: argparse.Namespace) -> int:
    import time

    from afmrl.data import parse_column_mapping

    config = settings_from_args(EmbeddedDefaultConfig, args)
    out = check_out(
        args.out, inputs=[args.data], ours=is_checkpoint_folder, overwrite=args.overwrite
    )
    mapping = parse_column_mapping(args.column)
    from afmrl.defaults.embedded import build_embedded_default, catalog_tokenizer_corpus

    start = time.perf_counter()
    corpus = None
    if args.data:
        corpus = catalog_tokenizer_corpus(args.data, columns=mapping)
        print(f"[init] tokenizer corpus: {len(corpus)} strings from {args.data}", flush=True)

    def progress(line: str) -> None:
        print(f"{line} ({time.perf_counter() - start:.0f} s)", flush=True)

    build_embedded_default(out, config, corpus=corpus, progress=progress)
    print(f"[init] done: {out} ({time.perf_counter() - start:.0f} s)", flush=True)
    return 0
