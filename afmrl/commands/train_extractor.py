"""``afmrl train-extractor``: SFT warm-up of a checkpoint's attribute extractor on teacher attributes.

Reads the catalogue's ``train`` split ((image, title) -> ``teacher_attributes``, both listing views),
fine-tunes the extractor with the transformers ``Trainer`` (cached frozen-tower tokens for the
embedded LLaVA-timm extractor; LoRA with ``--lora-r`` for Hub VLMs), and saves the whole AFMRL
checkpoint (encoder unchanged) to ``--out``. ``--eval`` then scores the extractor on the validation
splits against ``gold_attributes`` and writes ``OUT/extractor_eval.json``.
"""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="AFMRL checkpoint with an extractor")
    parser.add_argument("--data", required=True, help="catalogue with a train split")
    parser.add_argument("--out", required=True, help="folder for the fine-tuned checkpoint")
    parser.add_argument("--epochs", type=float, default=3.0, help="(default: %(default)s)")
    parser.add_argument("--max-steps", type=int, default=-1, help="overrides --epochs when > 0")
    parser.add_argument(
        "--lr", type=float, default=2e-3, help="peak learning rate (default: %(default)s)"
    )
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--warmup-ratio", type=float, default=0.05)
    parser.add_argument("--weight-decay", type=float, default=0.01)
    parser.add_argument(
        "--scheduler", default="cosine", help="transformers lr scheduler (default: %(default)s)"
    )
    parser.add_argument("--target-column", default="teacher_attributes")
    parser.add_argument(
        "--no-pos-view", action="store_true", help="train on the first listing view only"
    )
    parser.add_argument(
        "--no-cache-features",
        action="store_true",
        help="run the vision tower every step instead of caching its tokens",
    )
    parser.add_argument("--feature-cache-dir", default=None, help="keep the token cache here")
    parser.add_argument("--lora-r", type=int, default=0, help="LoRA rank (0: full fine-tuning)")
    parser.add_argument(
        "--checkpoint-dir",
        default=None,
        help="Trainer checkpoints (default: OUT/.sft); --resume continues from the last one",
    )
    parser.add_argument("--save-steps", type=int, default=0, help="checkpoint every N steps")
    parser.add_argument("--resume", action="store_true", help="resume from the last checkpoint")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument(
        "--eval", action="store_true", help="score on validation_query + validation_gallery"
    )
    parser.add_argument(
        "--column",
        action="append",
        default=[],
        metavar="CONTRACT=YOURS",
        help="map a catalogue column to a contract name (repeatable)",
    )


def run(args: argparse.Namespace) -> int:
    import json
    import time
    from pathlib import Path

    import torch

    from afmrl.catalog import load_catalog, parse_column_mapping
    from modeling_afmrl.modeling_afmrl import AFMRLModel
    from trainers.extractor_sft import ExtractorSFTConfig, train_extractor

    if args.threads > 0:
        torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    out = Path(args.out)
    data = load_catalog(args.data, columns=parse_column_mapping(args.column), splits=None)
    if "train" not in data:
        print(f"error: {args.data} has no train split (splits: {list(data)})")
        return 2
    model = AFMRLModel.from_pretrained(args.model)
    if model.extractor is None:
        print(f"error: {args.model} has no attribute extractor")
        return 2
    processor = model.processor
    ckpt_dir = args.checkpoint_dir or str(out / ".sft")
    config = ExtractorSFTConfig(
        output_dir=ckpt_dir,
        num_train_epochs=args.epochs,
        max_steps=args.max_steps,
        learning_rate=args.lr,
        per_device_train_batch_size=args.batch_size,
        warmup_steps=args.warmup_ratio,
        weight_decay=args.weight_decay,
        lr_scheduler_type=args.scheduler,
        logging_steps=10,
        save_strategy="steps" if args.save_steps > 0 else "no",
        save_steps=args.save_steps if args.save_steps > 0 else 500,
        seed=args.seed,
        use_cpu=not torch.cuda.is_available(),
        bf16=False,
        dataloader_num_workers=0,
        disable_tqdm=True,
        target_column=args.target_column,
        use_pos_view=not args.no_pos_view,
        cache_features=not args.no_cache_features,
        feature_cache_dir=args.feature_cache_dir,
        lora_r=args.lora_r,
    )
    cpu0, t0 = time.process_time(), time.perf_counter()
    result = train_extractor(
        model.extractor,
        processor.extractor_processor,
        data["train"],
        config,
        resume_from_checkpoint=True if args.resume else None,
    )
    wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    model.save_pretrained(out)
    summary = {
        "examples": result.num_examples,
        "steps": result.global_step,
        "first_loss": result.losses[0][1] if result.losses else None,
        "last_loss": result.losses[-1][1] if result.losses else None,
        "cache_seconds": round(result.cache_seconds, 1),
        "train_seconds": round(result.train_seconds, 1),
        "wall_seconds": round(wall, 1),
        "cpu_seconds": round(cpu, 1),
        "threads": torch.get_num_threads(),
    }
    (out / "extractor_sft.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"[sft] saved {out} ({json.dumps(summary)})")
    if args.eval:
        from benchmarks.attribute_eval import evaluate_attributes, format_attribute_table

        model.eval()
        metrics = evaluate_attributes(model, data, batch_size=64)
        (out / "extractor_eval.json").write_text(json.dumps(metrics, indent=2) + "\n")
        print(format_attribute_table({"sft": metrics}))
    return 0
