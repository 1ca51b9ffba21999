"""``afmrl train-encoder``: AGCL (or plain InfoNCE) training of an AFMRL encoder (stage 1).

Reads the ``train`` split of a catalogue (``load_catalog``), trains with ``AGCLTrainer`` and writes a
checkpoint folder that ``AutoModel.from_pretrained(..., trust_remote_code=True)`` and
``afmrl evaluate`` load, built beside ``--out`` and swapped in when complete. Trainer checkpoints go
to ``OUT.checkpoints``; ``--resume`` continues from the last one. Works unchanged under
``torchrun`` / ``accelerate launch`` (the loss then sees the global batch). Every default comes from
:class:`trainers.agcl.arguments.AGCLArguments`.
"""

from __future__ import annotations

import argparse

from afmrl.cli.arguments import (
    add_column_mapping,
    add_fields,
    add_run_arguments,
    training_output,
)
from afmrl.errors import UserError
from trainers.agcl.arguments import AGCLArguments

ATTRIBUTE_ALIASES = {"teacher": "teacher_attributes", "none": None}
#: Flag aliases (short names users know from other trainers).
FLAGS = {
    "per_device_train_batch_size": ["--batch-size"],
    "learning_rate": ["--lr"],
    "head_learning_rate": ["--head-lr"],
    "warmup_steps": ["--warmup"],
    "use_lora": ["--lora"],
    "feature_cache_dir": ["--feature-cache"],
    "augment_second_view": ["--augment"],
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="AFMRL checkpoint folder (or Hub id)")
    parser.add_argument(
        "--data", required=True, help="catalogue (save_to_disk folder, CSV/JSONL, Hub id)"
    )
    parser.add_argument("--out", required=True, help="folder for the trained checkpoint")
    loss = parser.add_argument_group("loss")
    add_fields(loss, AGCLArguments, "loss", "weighting", "false_negatives", "delta",
               "attribute_overlap", "bm25_statistics", "bm25_normalization", "bm25_scale",
               "weight_strength", "false_negative_handling")  # fmt: skip
    loss.add_argument(
        "--attribute-keys",
        nargs="+",
        default=None,
        metavar="KEY",
        help="attribute keys the weighting and the attribute filters read (default: all)",
    )
    data = parser.add_argument_group("data")
    data.add_argument(
        "--attributes",
        default="none",
        metavar="teacher|none|COLUMN",
        help="attributes appended to the listing text (default: none, titles only)",
    )
    data.add_argument(
        "--pos-attributes",
        default=None,
        metavar="COLUMN",
        dest="pos_text_attributes_column",
        help="attributes appended to the second view's text (default: pos_<column> of "
        "--attributes when the data has it, e.g. pos_teacher_attributes)",
    )
    data.add_argument(
        "--loss-attributes",
        default=None,
        metavar="teacher|COLUMN",
        help="attributes the AGCL loss reads (default: --attributes, else teacher_attributes)",
    )
    add_column_mapping(data)
    add_fields(data, AGCLArguments, "augment_second_view", "batch_sampler", "hard_fraction",
               "sampler_group_size", flags=FLAGS)  # fmt: skip
    train = parser.add_argument_group("training")
    add_fields(
        train,
        AGCLArguments,
        "per_device_train_batch_size",
        "gradient_cache_chunk_size",
        "max_steps",
        "learning_rate",
        "head_learning_rate",
        "warmup_steps",
        "train_vision_blocks",
        "train_text_layers",
        "use_lora",
        "lora_r",
        "save_steps",
        "logging_steps",
        "log_masked_pairs",
        "feature_cache_dir",
        flags=FLAGS,
    )
    add_run_arguments(train, checkpoint_dir=False)


def _column(value: str | None) -> str | None:
    return None if value is None else ATTRIBUTE_ALIASES.get(value, value)


def _has_accelerator(torch) -> bool:
    xpu = getattr(torch, "xpu", None)
    return (
        torch.cuda.is_available()
        or (xpu is not None and xpu.is_available())
        or torch.backends.mps.is_available()
    )


def run(args: argparse.Namespace) -> int:
    import shutil
    import time

    out, checkpoints = training_output(args)

    from afmrl.cli.arguments import settings_from_args
    from afmrl.data import load_catalog, parse_column_mapping
    from afmrl.io import building
    from afmrl.models import load_model
    from afmrl.runtime import torch_settings
    from hub_cards.cards import write_model_card

    train = load_catalog(args.data, columns=parse_column_mapping(args.column), splits=["train"])
    train = train["train"]
    model = load_model(args.model, what="--model")
    with torch_settings(args.threads, flush_denormal=True):
        import torch

        from trainers.agcl.config import AGCLConfig
        from trainers.agcl.trainer import MASKED_PAIRS_FILE, AGCLTrainer

        try:
            config = settings_from_args(
                AGCLConfig,
                args,
                output_dir=str(checkpoints),
                text_attributes_column=_column(args.attributes),
                loss_attributes_column=_column(args.loss_attributes),
                disable_tqdm=args.no_progress,
                use_cpu=not _has_accelerator(torch),
            )
        except ValueError as err:  # settings that contradict each other
            raise UserError(str(err)) from err
        per_step = args.per_device_train_batch_size * config.world_size
        if len(train) < per_step:
            raise UserError(
                f"the train split has {len(train)} rows, fewer than one global batch ({per_step}); "
                "lower --batch-size"
            )
        trainer = AGCLTrainer(model, config, train_dataset=train)
        main_process = trainer.is_world_process_zero()
        if main_process:
            print(
                f"[train-encoder] {len(train)} listings, global batch {per_step}, "
                f"{trainer.loss_fn!r}, sampler {trainer.batch_sampler}",
                flush=True,
            )
        start = time.perf_counter()
        trainer.train(resume_from_checkpoint=True if args.resume else None)
        seconds = time.perf_counter() - start
        if not main_process:
            trainer.save_final_model(out)  # writes nothing here; waits for the main process
            return 0
        with building(out) as stage:
            trainer.save_final_model(stage)
            log = checkpoints / MASKED_PAIRS_FILE
            if log.is_file():
                shutil.copy2(log, stage / MASKED_PAIRS_FILE)
            write_model_card(stage, repo_id=str(out))
    if not args.keep_checkpoints:
        shutil.rmtree(checkpoints, ignore_errors=True)
    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    last = f", last logged loss {losses[-1]:.4f}" if losses else ""
    print(
        f"[train-encoder] done: {out} ({trainer.state.global_step} steps, {seconds:.0f} s{last})",
        flush=True,
    )
    return 0
