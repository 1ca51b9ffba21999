"""``afmrl train-extractor``: SFT warm-up of a checkpoint's attribute extractor on teacher attributes.

Reads the catalogue's ``train`` split ((image, title) -> ``teacher_attributes``, both listings of a
row), fine-tunes the extractor with the transformers ``Trainer`` (the frozen vision tower served from
the feature cache for the embedded LLaVA-timm extractor; LoRA with ``--lora-r`` for Hub VLMs), and
saves the whole AFMRL checkpoint (encoder unchanged) to ``--out``, built beside it and swapped in
when complete. Trainer checkpoints go to ``--checkpoint-dir`` (default ``OUT.checkpoints``);
``--resume`` continues from the last one. ``--eval`` then scores the extractor on the validation
splits against ``gold_attributes`` and writes ``OUT/extractor_eval.json``.
"""

from __future__ import annotations

import argparse

from afmrl.cli.arguments import (
    add_column_mapping,
    add_fields,
    add_run_arguments,
    non_negative_int,
    settings_from_args,
    training_output,
)
from trainers.extractor_sft.arguments import ExtractorSFTArguments


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="AFMRL checkpoint with an extractor")
    parser.add_argument("--data", required=True, help="catalogue with a train split")
    parser.add_argument("--out", required=True, help="folder for the fine-tuned checkpoint")
    add_column_mapping(parser)
    add_fields(
        parser,
        ExtractorSFTArguments,
        "num_train_epochs",
        "learning_rate",
        "per_device_train_batch_size",
        "warmup_steps",
        "weight_decay",
        "lr_scheduler_type",
        "target_column",
        "use_pos_view",
        "cache_features",
        "feature_cache_dir",
        "lora_r",
        flags={
            "num_train_epochs": ["--epochs"],
            "learning_rate": ["--lr"],
            "per_device_train_batch_size": ["--batch-size"],
            "lr_scheduler_type": ["--scheduler"],
        },
    )
    parser.add_argument(
        "--max-steps", type=non_negative_int, default=0, help="overrides --epochs when > 0"
    )
    parser.add_argument(
        "--save-steps", type=non_negative_int, default=0, help="checkpoint every N steps (0: never)"
    )
    parser.add_argument(
        "--eval", action="store_true", help="score on validation_query + validation_gallery"
    )
    add_run_arguments(parser, keep_checkpoints=False)


def run(args: argparse.Namespace) -> int:
    import json
    import shutil
    import time

    out, checkpoints = training_output(args, args.checkpoint_dir)

    from afmrl.data import load_catalog, parse_column_mapping
    from afmrl.io import building, write_json_atomic
    from afmrl.models import load_model
    from afmrl.runtime import torch_settings
    from hub_cards.cards import write_model_card

    # Only what this command uses: train, plus the validation splits for --eval (never the test
    # splits, which are reserved for final numbers).
    wanted = ["train"] + (["validation_query", "validation_gallery"] if args.eval else [])
    data = load_catalog(args.data, columns=parse_column_mapping(args.column), splits=wanted)
    model = load_model(args.model, need_extractor=True, what="--model")
    with torch_settings(args.threads, flush_denormal=True):
        import torch

        from trainers.extractor_sft.config import ExtractorSFTConfig
        from trainers.extractor_sft.trainer import train_extractor

        config = settings_from_args(
            ExtractorSFTConfig,
            args,
            output_dir=str(checkpoints),
            max_steps=args.max_steps if args.max_steps > 0 else -1,
            save_strategy="steps" if args.save_steps > 0 else "no",
            save_steps=args.save_steps if args.save_steps > 0 else 500,
            seed=args.seed,
            use_cpu=not torch.cuda.is_available(),
            bf16=False,
            dataloader_num_workers=0,
            disable_tqdm=True,
        )
        cpu0, t0 = time.process_time(), time.perf_counter()
        result = train_extractor(
            model.extractor,
            model.processor.extractor_processor,
            data["train"],
            config,
            resume_from_checkpoint=True if args.resume else None,
        )
        if not config.should_save:  # under a multi-process launch only the main process saves
            return 0
        summary = _summary(result, time.perf_counter() - t0, time.process_time() - cpu0)
        metrics = None
        if args.eval:
            from afmrl.evaluation.attributes import evaluate_attributes, format_attribute_table

            model.eval()
            metrics = evaluate_attributes(model, data, show_progress=not args.no_progress)
    with building(out) as stage:
        model.save_pretrained(stage)
        write_json_atomic(stage / "extractor_sft.json", summary)
        if metrics is not None:
            write_json_atomic(stage / "extractor_eval.json", metrics)
        write_model_card(stage, repo_id=str(out))
    if args.checkpoint_dir is None:
        shutil.rmtree(checkpoints, ignore_errors=True)
    print(f"[sft] saved {out} ({json.dumps(summary)})")
    if metrics is not None:
        print(format_attribute_table({"sft": metrics}))
    return 0


def _summary(result, wall: float, cpu: float) -> dict:
    """What ``extractor_sft.json`` records about a run."""
    import torch

    return {
        "examples": result.num_examples,
        "steps": result.global_step,
        "first_loss": result.losses[0][1] if result.losses else None,
        "last_loss": result.losses[-1][1] if result.losses else None,
        "feature_cache_hits": result.cache_hits,
        "train_seconds": round(result.train_seconds, 1),
        "wall_seconds": round(wall, 1),
        "cpu_seconds": round(cpu, 1),
        "threads": torch.get_num_threads(),
    }
