"""``afmrl init``: build the embedded default checkpoint offline.

EfficientNet-Lite0 (ImageNet, hash-pinned) + all-MiniLM-L6-v2 as the dual encoder, and a small
LLaVA extractor (the same EfficientNet-Lite0 + a small Qwen2 decoder + a tokenizer trained here).
With ``--data`` the tokenizer also learns the catalogue's train titles and teacher attributes.
The folder loads with ``AutoModel.from_pretrained(DIR, trust_remote_code=True)`` anywhere.
"""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, help="checkpoint folder to write")
    parser.add_argument(
        "--data",
        default=None,
        help="catalogue (datasets.save_to_disk folder) whose train titles and teacher "
        "attributes train the extractor's tokenizer",
    )
    parser.add_argument("--embed-dim", type=int, default=256, help="listing embedding size")
    parser.add_argument(
        "--image-size", type=int, default=128, help="encoder image side (multiple of 32)"
    )
    parser.add_argument(
        "--extractor-image-size",
        type=int,
        default=128,
        help="extractor image side (128 px: 8x8 = 64 image tokens at --feature-layer -2)",
    )
    parser.add_argument(
        "--feature-layer",
        type=int,
        default=-2,
        help="EfficientNet stage the extractor reads (-2: 112 ch at stride 16, the default; -1: 320 ch at 32)",
    )
    parser.add_argument("--vocab-size", type=int, default=2048, help="extractor tokenizer size")
    parser.add_argument(
        "--attribute-tokens",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="extractor tokenizer with one token per attribute key / value seen in --data's "
        "teacher attributes (and the prompt): shorter sequences, title words = answer tokens",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--overwrite", action="store_true", help="write into --out even if it is not empty"
    )


def run(args: argparse.Namespace) -> int:
    import sys
    import time
    from pathlib import Path

    out = Path(args.out)
    if out.exists() and any(out.iterdir()) and not args.overwrite:
        print(f"afmrl init: {out} exists and is not empty (use --overwrite)", file=sys.stderr)
        return 2
    if args.image_size % 32 or args.image_size < 32:
        print(f"afmrl init: --image-size must be a multiple of 32, got {args.image_size}",
              file=sys.stderr)  # fmt: skip
        return 2

    from afmrl.default_model import build_embedded_default, catalog_tokenizer_corpus

    start = time.perf_counter()
    corpus = None
    if args.data:
        corpus = catalog_tokenizer_corpus(args.data)
        print(f"[init] tokenizer corpus: {len(corpus)} strings from {args.data}", flush=True)

    def progress(line: str) -> None:
        print(f"{line} ({time.perf_counter() - start:.0f} s)", flush=True)

    build_embedded_default(
        out,
        corpus=corpus,
        embed_dim=args.embed_dim,
        image_size=args.image_size,
        extractor_image_size=args.extractor_image_size,
        feature_layer=args.feature_layer,
        vocab_size=args.vocab_size,
        attribute_tokens=args.attribute_tokens,
        progress=progress,
        seed=args.seed,
    )
    print(f"[init] done: {out} ({time.perf_counter() - start:.0f} s)", flush=True)
    return 0
