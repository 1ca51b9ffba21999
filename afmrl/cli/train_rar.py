"""``afmrl train-rar``: stage 2, RAR -- GRPO on a checkpoint's attribute extractor, rewarded by
retrieval with its frozen encoder.

Reads the catalogue's ``train`` split (pairs of two sellers' listings of one product), builds the
reward (:mod:`trainers.rar.reward`: the row's partner is the positive, the partners of the train
rows carrying the SFT extractor's attributes are the reward gallery), runs TRL's ``GRPOTrainer``
with the extractor as the policy (:mod:`trainers.rar.trainer`) and saves the whole AFMRL
checkpoint (encoder unchanged, extractor tuned) to ``--out``, built beside it and swapped in when
complete, with ``rar_training.json`` (settings, the per-step reward, valid-format rate, attribute
count, KL and timings) and ``rar_reward.png``. Trainer checkpoints and the reward gallery's
attributes go to ``OUT.checkpoints``; ``--resume`` continues from the last checkpoint. Every
default comes from :class:`trainers.rar.arguments.RARArguments`; ``docs/rar.md`` gives the GPU
preset (Qwen2.5-VL-3B, LoRA, TRL's vLLM generation).
"""

from __future__ import annotations

import argparse

from afmrl.cli.arguments import (
    add_column_mapping,
    add_fields,
    add_run_arguments,
    training_output,
)
from trainers.agcl.arguments import SUMMARY_FILE as AGCL_FILE
from trainers.rar.arguments import RARArguments

SUMMARY_FILE = "rar_training.json"
CURVE_FILE = "rar_reward.png"
FLAGS = {
    "learning_rate": ["--lr"],
    "per_device_train_batch_size": ["--batch-size"],
    "num_generations": ["--group-size"],
    "max_completion_length": ["--completion-length"],
    "lr_scheduler_type": ["--scheduler"],
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="AFMRL checkpoint with an SFT extractor")
    parser.add_argument("--data", required=True, help="catalogue with a train split of pairs")
    parser.add_argument("--out", required=True, help="folder for the tuned checkpoint")
    add_column_mapping(parser)
    reward = parser.add_argument_group("reward")
    add_fields(reward, RARArguments, "reward_mode", "recall_k", "recall_k_fraction",
               "gain_metric", "format_penalty", "reward_depth", "reward_positives", "gallery_size",
               "gallery_attributes_column", "train_fraction")  # fmt: skip
    policy = parser.add_argument_group("policy (GRPO)")
    add_fields(
        policy,
        RARArguments,
        "num_generations",
        "per_device_train_batch_size",
        "max_completion_length",
        "temperature",
        "beta",
        "learning_rate",
        "loss_type",
        "scale_rewards",
        "max_steps",
        "warmup_steps",
        "lr_scheduler_type",
        "lora",
        "lora_r",
        "save_steps",
        flags=FLAGS,
    )
    policy.add_argument(
        "--use-vllm",
        action="store_true",
        help="generate with TRL's vLLM integration (GPU; pip install 'trl[vllm]')",
    )
    policy.add_argument(
        "--vllm-mode",
        choices=("colocate", "server"),
        default="colocate",
        help="vLLM in this process, or a `trl vllm-serve` server (default: %(default)s)",
    )
    add_run_arguments(parser.add_argument_group("run"))


def rar_config(args: argparse.Namespace, output_dir: str, gpu: bool):
    """The :class:`~trainers.rar.config.RARConfig` (TRL's ``GRPOConfig`` plus RAR's settings) that
    the parsed flags describe: bf16 on a GPU, the CPU otherwise, ``--use-vllm`` / ``--vllm-mode``
    passed to TRL. Settings that contradict each other are a :class:`UserError`."""
    from afmrl.cli.arguments import settings_from_args
    from afmrl.errors import UserError
    from trainers.rar.config import RARConfig

    try:
        return settings_from_args(
            RARConfig,
            args,
            output_dir=output_dir,
            save_strategy="steps",
            seed=args.seed,
            use_cpu=not gpu,
            bf16=gpu,
            use_vllm=args.use_vllm,
            vllm_mode=args.vllm_mode,
            dataloader_num_workers=0,
            disable_tqdm=True,
        )
    except ValueError as err:  # settings that contradict each other (e.g. group vs batch)
        raise UserError(str(err)) from err


def run(args: argparse.Namespace) -> int:
    import json
    import shutil
    import time
    from pathlib import Path

    from afmrl.errors import UserError

    out, checkpoints = training_output(args, args.checkpoint_dir)

    from afmrl.data import load_catalog, parse_column_mapping
    from afmrl.io import building, write_json_atomic
    from afmrl.models import load_model
    from afmrl.runtime import torch_settings
    from hub_cards.cards import write_model_card

    with torch_settings(args.threads, flush_denormal=True):
        import torch

        from trainers.rar.curve import curve_summary, plot_reward_curve
        from trainers.rar.trainer import train_rar

        gpu = torch.cuda.is_available()
        # settings are checked before any data or model is read
        config = rar_config(args, str(checkpoints), gpu=gpu)
        # Only the train split: every RAR choice is made on validation by `afmrl evaluate`, and
        # the test splits are for final numbers.
        data = load_catalog(args.data, columns=parse_column_mapping(args.column), splits=["train"])
        train = data["train"]
        model = load_model(args.model, need_extractor=True, what="--model")
        # TRL moves only the policy: the reward's encoder (and the SFT gallery's extraction) run
        # where the model is, so it goes to this process's device too (a no-op on a CPU).
        model.to(config.device)
        t0 = time.perf_counter()
        try:
            result = train_rar(
                model,
                train,
                config,
                cache_dir=str(checkpoints / "reward"),
                resume_from_checkpoint=True if args.resume else None,
                show_progress=not args.no_progress,
            )
        except ValueError as err:  # a train split without pairs
            raise UserError(str(err)) from err
        except ImportError as err:  # --use-vllm without vLLM installed
            raise UserError(str(err)) from err
        if not config.should_save:  # under a multi-process launch only the main process saves
            return 0
        summary = {
            "steps": result.global_step,
            "queries": result.num_queries,
            "reward_gallery": result.gallery_size,
            "recall_k": result.recall_k,
            "lora": result.lora,
            "sft_gallery_valid_format": result.sft_valid_format,
            "setup_seconds": round(result.setup_seconds, 1),
            "train_seconds": round(result.train_seconds, 1),
            "wall_seconds": round(time.perf_counter() - t0, 1),
            "threads": torch.get_num_threads(),
            "settings": result.settings,
            "curve": curve_summary(result.history),
            "history": result.history,
        }
    with building(out) as stage:
        model.save_pretrained(stage)
        if (Path(args.model) / AGCL_FILE).is_file():  # the encoder is unchanged: keep its record
            shutil.copy2(Path(args.model) / AGCL_FILE, stage / AGCL_FILE)
        write_json_atomic(stage / SUMMARY_FILE, summary)
        if result.history:
            plot_reward_curve(stage / CURVE_FILE, {"RAR": result.history})
        write_model_card(stage, repo_id=str(out))
    if not args.keep_checkpoints:
        shutil.rmtree(checkpoints, ignore_errors=True)
    brief = {k: summary[k] for k in ("steps", "queries", "reward_gallery", "recall_k", "lora")}
    print(f"[rar] saved {out} ({json.dumps(brief)})")
    for span in summary["curve"]:
        print(
            f"[rar] steps {span['first_step']}-{span['last_step']}: mean reward "
            f"{span['reward']:+.4f}, valid format {span['valid_format']:.3f}"
        )
    return 0
