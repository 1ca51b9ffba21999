"""``afmrl cit``: one round of cyclic iterative training, then the evaluation.

Re-extracts the attributes of a seeded share (``--fraction``, 30% by default) of the train split
with the checkpoint's RAR-tuned extractor, continues AGCL on those rows with the new attributes
(the stage-1 settings recorded in ``agcl_training.json`` beside ``--model``, which ``afmrl
train-rar`` carries along; ``--max-steps`` defaults to the same share of stage 1's steps), saves the
checkpoint to ``--out`` (built beside it, swapped in when complete) with ``cit_training.json``, and
evaluates it as ``afmrl evaluate --attributes generated`` does on ``--split`` (validation by
default; ``test`` only for final numbers), writing ``OUT/cit_eval.json``.
"""

from __future__ import annotations

import argparse

from afmrl.cli.arguments import (
    add_column_mapping,
    add_run_arguments,
    non_negative_int,
    share,
    training_output,
)

SUMMARY_FILE = "cit_training.json"
EVAL_FILE = "cit_eval.json"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from trainers.rar.cit import DEFAULT_COLUMN, DEFAULT_FRACTION

    parser.add_argument("--model", required=True, help="AFMRL checkpoint with a RAR extractor")
    parser.add_argument("--data", required=True, help="catalogue with train and eval splits")
    parser.add_argument("--out", required=True, help="folder for the new checkpoint")
    add_column_mapping(parser)
    parser.add_argument(
        "--fraction",
        type=share,
        default=DEFAULT_FRACTION,
        help="share of the train rows the round trains on (default: %(default)s)",
    )
    parser.add_argument(
        "--max-steps",
        type=non_negative_int,
        default=0,
        help="AGCL steps (0: --fraction of the stage-1 steps, else AGCL's default)",
    )
    parser.add_argument(
        "--batch-size",
        type=non_negative_int,
        default=0,
        help="AGCL batch size (0: stage 1's, else AGCL's default)",
    )
    parser.add_argument(
        "--attributes-column",
        default=DEFAULT_COLUMN,
        help="name of the re-extracted attribute column (default: %(default)s)",
    )
    parser.add_argument(
        "--split",
        choices=("validation", "test", "none"),
        default="validation",
        help="evaluate on validation (choices), test (final numbers only) or not at all "
        "(default: %(default)s)",
    )
    add_run_arguments(parser)


def run(args: argparse.Namespace) -> int:
    import json
    import shutil
    from pathlib import Path

    from afmrl.errors import UserError

    out, checkpoints = training_output(args, args.checkpoint_dir)

    from afmrl.data import load_catalog, parse_column_mapping
    from afmrl.evaluation.runner import SPLIT_PAIRS
    from afmrl.io import building, write_json_atomic
    from afmrl.models import load_model
    from afmrl.runtime import torch_settings
    from hub_cards.cards import write_model_card

    wanted = ["train"] + (list(SPLIT_PAIRS[args.split]) if args.split != "none" else [])
    data = load_catalog(args.data, columns=parse_column_mapping(args.column), splits=wanted)
    model = load_model(args.model, need_extractor=True, what="--model")
    with torch_settings(args.threads, flush_denormal=True):
        import torch

        from trainers.agcl.arguments import SUMMARY_FILE as AGCL_FILE
        from trainers.rar.cit import agcl_overrides, cit_round, stage1_settings

        stage1 = stage1_settings(args.model) if Path(args.model).is_dir() else {}
        kwargs = agcl_overrides(stage1, args.fraction)
        if args.max_steps > 0:
            kwargs["max_steps"] = args.max_steps
        if args.batch_size > 0:
            kwargs["per_device_train_batch_size"] = args.batch_size
        rows = max(1, round(args.fraction * len(data["train"])))
        from trainers.agcl.arguments import AGCLArguments

        batch = kwargs.get("per_device_train_batch_size", AGCLArguments.per_device_train_batch_size)
        if rows < batch:
            raise UserError(
                f"--fraction {args.fraction} keeps {rows} train rows, fewer than one batch "
                f"({batch}); raise --fraction or lower --batch-size"
            )
        kwargs.update(
            output_dir=str(checkpoints),
            use_cpu=not torch.cuda.is_available(),
            disable_tqdm=args.no_progress,
        )
        try:
            result = cit_round(
                model,
                data["train"],
                kwargs,
                fraction=args.fraction,
                column=args.attributes_column,
                seed=args.seed,
                work_dir=checkpoints,
                show_progress=not args.no_progress,
                resume_from_checkpoint=True if args.resume else None,
            )
        except ValueError as err:  # settings that contradict each other, a split without pairs
            raise UserError(str(err)) from err
        trainer = result.trainer
        if not trainer.is_world_process_zero():  # a multi-process launch: the main process saves
            trainer.save_final_model(out)  # writes nothing here; waits for the main process
            return 0
        summary = {
            "rows": len(result.rows),
            "train_rows": len(data["train"]),
            "fraction": args.fraction,
            "attributes_column": result.column,
            "malformed_attributes": result.invalid_attributes,
            "steps": result.global_step,
            "extract_seconds": round(result.extract_seconds, 1),
            "train_seconds": round(result.train_seconds, 1),
            "stage1_settings_found": bool(stage1),
            "agcl_settings": {k: v for k, v in kwargs.items() if k != "output_dir"},
        }
        with building(out) as stage:
            # Saved first: the other processes of a launch wait for it, not for the evaluation.
            trainer.save_final_model(stage)
            metrics = None
            if args.split != "none":
                from afmrl.evaluation.runner import evaluate_model

                model.eval()
                q_name, g_name = SPLIT_PAIRS[args.split]
                run_ = evaluate_model(
                    model,
                    data[q_name],
                    data[g_name],
                    attributes="generated",
                    name=out.name,
                    cache_dir=checkpoints / "eval_cache",
                    show_progress=not args.no_progress,
                    split_names=(q_name, g_name),
                )
                metrics = {"split": args.split, "attributes": "generated", **run_.metrics}
            write_json_atomic(stage / SUMMARY_FILE, summary)
            if (Path(args.model) / AGCL_FILE).is_file() and not (stage / AGCL_FILE).is_file():
                shutil.copy2(Path(args.model) / AGCL_FILE, stage / AGCL_FILE)
            if metrics is not None:
                write_json_atomic(stage / EVAL_FILE, metrics)
            write_model_card(stage, repo_id=str(out))
    if not args.keep_checkpoints:
        shutil.rmtree(checkpoints, ignore_errors=True)
    print(f"[cit] saved {out} ({json.dumps({k: summary[k] for k in ('rows', 'steps')})})")
    if metrics is not None:
        shown = {k: round(metrics[k], 4) for k in ("recall@1", "recall@5", "recall@10", "mrr")}
        print(f"[cit] {args.split} (attributes generated): {json.dumps(shown)}")
    return 0
