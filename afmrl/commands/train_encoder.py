"""``afmrl train-encoder``: AGCL (or plain InfoNCE) training of an AFMRL encoder (stage 1).

Reads the ``train`` split of a catalogue (``load_catalog``), trains with ``AGCLTrainer`` and writes a
checkpoint folder that ``AutoModel.from_pretrained(..., trust_remote_code=True)`` and
``afmrl evaluate`` load. Works unchanged under ``torchrun`` / ``accelerate launch`` (the loss then
sees the global batch). ``--resume`` continues from the last checkpoint in ``--out``.
"""

from __future__ import annotations

import argparse

ATTRIBUTE_ALIASES = {"teacher": "teacher_attributes", "none": None}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="AFMRL checkpoint folder (or Hub id)")
    parser.add_argument(
        "--data", required=True, help="catalogue (save_to_disk folder, CSV/JSONL, Hub id)"
    )
    parser.add_argument("--out", required=True, help="output folder: checkpoints and final model")
    loss = parser.add_argument_group("loss")
    loss.add_argument("--loss", choices=("agcl", "infonce"), default="agcl")
    loss.add_argument(
        "--weighting", choices=("bm25", "none"), default=None, help="default: bm25 for agcl"
    )
    loss.add_argument(
        "--false-negatives",
        choices=("margin", "attributes", "both", "none"),
        default=None,
        help="false-negative filter (default: both for agcl)",
    )
    loss.add_argument("--delta", type=float, default=0.1, help="margin filter: s_ij > s_ii + delta")
    loss.add_argument(
        "--attribute-overlap",
        type=float,
        default=0.8,
        help="attribute filter: share of keys both listings must state (default: %(default)s)",
    )
    loss.add_argument("--bm25-statistics", choices=("batch", "corpus"), default="batch")
    data = parser.add_argument_group("data")
    data.add_argument(
        "--attributes",
        default="none",
        metavar="teacher|none|COLUMN",
        help="attributes appended to the listing text (default: none, titles only)",
    )
    data.add_argument(
        "--loss-attributes",
        default=None,
        metavar="teacher|COLUMN",
        help="attributes the AGCL loss reads (default: --attributes, else teacher_attributes)",
    )
    data.add_argument(
        "--column",
        action="append",
        default=None,
        metavar="CONTRACT=YOURS",
        help="map a column of your data to a contract name (repeatable)",
    )
    data.add_argument(
        "--augment",
        action="store_true",
        help="make the second view by augmentation even when pos_image exists",
    )
    data.add_argument("--batch-sampler", choices=("random", "attributes"), default="random")
    train = parser.add_argument_group("training")
    train.add_argument("--batch-size", type=int, default=64, help="per-device batch size")
    train.add_argument(
        "--max-steps",
        type=int,
        default=15,
        help="optimiser steps (default %(default)s: best on the default catalogue's validation "
        "split; longer runs overfit its same-seller view pairs)",
    )
    train.add_argument("--epochs", type=float, default=1.0, help="used when --max-steps <= 0")
    train.add_argument("--lr", type=float, default=5e-5, help="learning rate of tower layers")
    train.add_argument(
        "--head-lr", type=float, default=1e-3, help="learning rate of projections/fusion/scale"
    )
    train.add_argument("--warmup", type=float, default=0.1, help="warmup steps or ratio (< 1)")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument(
        "--train-vision-blocks", type=int, default=0, help="last vision blocks trained (-1: all)"
    )
    train.add_argument(
        "--train-text-layers",
        type=int,
        default=0,
        help="last text layers trained (-1: all; default %(default)s: projections, fusion and "
        "temperature only, best on the default catalogue's validation split)",
    )
    train.add_argument(
        "--lora",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="LoRA on the encoder's language model (default: on for vlm, off for dual)",
    )
    train.add_argument("--lora-r", type=int, default=16)
    train.add_argument("--save-steps", type=int, default=50, help="checkpoint every N steps")
    train.add_argument("--logging-steps", type=int, default=10)
    train.add_argument(
        "--resume", action="store_true", help="resume from the last checkpoint in --out"
    )
    train.add_argument(
        "--keep-checkpoints", action="store_true", help="keep checkpoint-* folders after training"
    )
    train.add_argument(
        "--overwrite", action="store_true", help="train into a non-empty --out (without --resume)"
    )
    train.add_argument(
        "--log-masked-pairs",
        action="store_true",
        help="write each step's batch and masked pairs to OUT/masked_pairs.jsonl",
    )
    train.add_argument(
        "--feature-cache",
        default=None,
        metavar="DIR",
        help="keep a frozen vision tower's features here, shared by runs (dual encoder)",
    )
    train.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    train.add_argument("--no-progress", action="store_true", help="no progress bar")


def _column(value: str | None) -> str | None:
    if value is None:
        return None
    return ATTRIBUTE_ALIASES.get(value, value)


def _has_accelerator(torch) -> bool:
    xpu = getattr(torch, "xpu", None)
    return (
        torch.cuda.is_available()
        or (xpu is not None and xpu.is_available())
        or torch.backends.mps.is_available()
    )


def run(args: argparse.Namespace) -> int:
    import shutil
    import sys
    import time
    from pathlib import Path

    def fail(message: str) -> int:
        print(f"afmrl train-encoder: error: {message}", file=sys.stderr)
        return 2

    out = Path(args.out)
    if args.batch_size < 1:
        return fail(f"--batch-size must be >= 1, got {args.batch_size}")
    checkpoints = sorted(out.glob("checkpoint-*")) if out.is_dir() else []
    if args.resume and not checkpoints:
        return fail(f"--resume: no checkpoint-* folder in {out}")
    if not args.resume and out.is_dir() and any(out.iterdir()) and not args.overwrite:
        return fail(f"{out} exists and is not empty (use --resume or --overwrite)")

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)

    from afmrl.catalog import load_catalog, parse_column_mapping
    from modeling_afmrl import AFMRLModel
    from trainers.agcl_trainer import AGCLConfig, AGCLTrainer

    try:
        mapping = parse_column_mapping(args.column)
        data = load_catalog(args.data, columns=mapping, splits=["train"])
    except (ValueError, FileNotFoundError) as err:
        return fail(str(err))
    train = data["train"]
    try:
        config = AGCLConfig(
            output_dir=str(out),
            loss=args.loss,
            weighting=args.weighting,
            false_negatives=args.false_negatives,
            delta=args.delta,
            attribute_overlap=args.attribute_overlap,
            bm25_statistics=args.bm25_statistics,
            text_attributes_column=_column(args.attributes),
            loss_attributes_column=_column(args.loss_attributes),
            augment_second_view=True if args.augment else None,
            batch_sampler=args.batch_sampler,
            per_device_train_batch_size=args.batch_size,
            max_steps=args.max_steps if args.max_steps > 0 else -1,
            num_train_epochs=args.epochs,
            learning_rate=args.lr,
            head_learning_rate=args.head_lr,
            warmup_steps=args.warmup,
            seed=args.seed,
            train_vision_blocks=args.train_vision_blocks,
            train_text_layers=args.train_text_layers,
            use_lora=args.lora,
            lora_r=args.lora_r,
            save_steps=args.save_steps,
            logging_steps=args.logging_steps,
            log_masked_pairs=args.log_masked_pairs,
            feature_cache_dir=args.feature_cache,
            disable_tqdm=args.no_progress,
            use_cpu=not _has_accelerator(torch),
        )
    except ValueError as err:
        return fail(str(err))
    per_step = args.batch_size * config.world_size
    if len(train) < per_step:
        return fail(
            f"the train split has {len(train)} rows, fewer than one global batch ({per_step}); "
            "lower --batch-size"
        )
    try:
        model = AFMRLModel.from_pretrained(args.model)
        trainer = AGCLTrainer(model, config, train_dataset=train)
    except (OSError, ValueError) as err:
        return fail(str(err))
    main_process = trainer.is_world_process_zero()
    if main_process:
        print(
            f"[train-encoder] {len(train)} listings, global batch {per_step}, "
            f"{trainer.loss_fn!r}, sampler {args.batch_sampler}",
            flush=True,
        )
    start = time.perf_counter()
    trainer.train(resume_from_checkpoint=True if args.resume else None)
    trainer.save_final_model(out)
    seconds = time.perf_counter() - start
    if not main_process:
        return 0
    if not args.keep_checkpoints:
        for folder in out.glob("checkpoint-*"):
            shutil.rmtree(folder, ignore_errors=True)
    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    last = f", last logged loss {losses[-1]:.4f}" if losses else ""
    print(
        f"[train-encoder] done: {out} ({trainer.state.global_step} steps, {seconds:.0f} s{last})",
        flush=True,
    )
    return 0
