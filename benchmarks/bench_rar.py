"""Seconds per RAR (GRPO) step, split into generation, reward and update (target: reward < 1/3).

Runs ``trainers.rar.trainer.train_rar`` for a few steps on a checkpoint (an SFT extractor and a
trained encoder, e.g. ``afmrl train-encoder``'s output; the embedded default unless ``--model``
says otherwise) and reads the per-step log:

* generation: TRL's sampling of the group's completions (``RARTrainer._generate``:
  ``rar/generation_seconds``);
* reward: parsing, encoding the query listings with their attributes and the exact gallery search
  (``RetrievalReward``: ``rar/reward_seconds``);
* update: the rest of the optimizer step -- the policy's and the reference's log-probabilities,
  the loss, backward and the optimiser (wall time of the step minus the two above).

The first ``--warmup`` steps are not counted (first-call costs). The reward gallery is built before
timing (the SFT extractor's attributes and the gallery embeddings, computed once per run). Medians
are reported with the load average of the machine beside them.

    python benchmarks/bench_rar.py --model /tmp/rar/agcl --data /tmp/rar/cat --steps 12

Without ``--model`` an embedded default is built (``afmrl init``, about 10 s; its extractor is
untrained, so nearly every completion is malformed and the reward is cheap: give a trained one);
without ``--data`` a 300-product synthetic catalogue is written to a temporary folder.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path

TARGET_REWARD_SHARE = 1 / 3


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=None, help="AFMRL checkpoint (default: build one)")
    parser.add_argument("--data", default=None, help="catalogue (default: synthesise one)")
    parser.add_argument("--steps", type=int, default=12, help="timed GRPO steps")
    parser.add_argument("--warmup", type=int, default=2, help="untimed first steps")
    parser.add_argument("--group-size", type=int, default=8, help="completions per prompt")
    parser.add_argument("--batch-size", type=int, default=32, help="completions per step")
    parser.add_argument("--completion-length", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    return parser.parse_args(argv)


def split_steps(history: list[dict[str, float]]) -> list[dict[str, float]]:
    """Per step: ``step``, ``generation``, ``reward``, ``update`` seconds and their ``total``."""
    rows = []
    for h in history:
        total = h["step_seconds"]
        generation = h.get("rar/generation_seconds", 0.0)
        reward = h.get("rar/reward_seconds", 0.0)
        rows.append(
            {
                "step": h["step"],
                "generation": generation,
                "reward": reward,
                "update": total - generation - reward,
                "total": total,
            }
        )
    return rows


def main(argv=None) -> int:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from benchmarks import build_inputs

    args = parse_args(argv)
    import torch

    from afmrl.data import load_catalog
    from afmrl.models import load_model
    from afmrl.runtime import torch_settings
    from trainers.rar.config import RARConfig
    from trainers.rar.trainer import train_rar

    with (
        tempfile.TemporaryDirectory(prefix="afmrl-bench-rar-") as tmp,
        torch_settings(args.threads, flush_denormal=True),
    ):
        workdir = Path(tmp)
        model_path, data = build_inputs(args.model, args.data, workdir)
        model = load_model(model_path, need_extractor=True)
        train = load_catalog(data, splits=["train"])["train"]
        config = RARConfig(
            output_dir=str(workdir / "rar"),
            max_steps=args.warmup + args.steps,
            num_generations=args.group_size,
            per_device_train_batch_size=args.batch_size,
            max_completion_length=args.completion_length,
            use_cpu=not torch.cuda.is_available(),
            bf16=torch.cuda.is_available(),
            save_strategy="no",
            disable_tqdm=True,
        )
        result = train_rar(model, train, config, cache_dir=str(workdir / "reward"), progress=None)
    rows = split_steps(result.history)[args.warmup :]
    median = {k: statistics.median(r[k] for r in rows) for k in ("generation", "reward",
                                                                   "update", "total")}  # fmt: skip
    share = median["reward"] / median["total"]
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    print(
        f"RAR step ({len(rows)} timed steps, {args.batch_size} completions = "
        f"{args.batch_size // args.group_size} prompts x {args.group_size}, "
        f"gallery {result.gallery_size}, {args.threads} threads, load average {load}):"
    )
    for part in ("generation", "reward", "update", "total"):
        print(f"  {part:<10} {median[part]:6.2f} s  ({median[part] / median['total']:5.1%})")
    print(
        f"  setup      {result.setup_seconds:6.1f} s  (SFT gallery attributes + embeddings, once)"
    )
    ok = share < TARGET_REWARD_SHARE
    print(f"reward share {share:.1%} ({'under' if ok else 'OVER'} the 33% target)")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
