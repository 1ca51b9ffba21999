"""AGCL step time over InfoNCE step time, measured in the same process (target: at most 1.15).

Three losses train the same model (the embedded default unless ``--model`` says otherwise) with
the same trainer settings on the same pre-collated batches of the catalogue's train split; only the
loss differs: ``infonce`` (plain CLIP loss, the baseline), ``agcl`` (the defaults: attribute
false-negative filter with attraction) and ``agcl-paper`` (BM25 weights + both filters, flagged
pairs removed). A timed step is ``AGCLTrainer.training_step`` (forward of both views, loss,
backward) plus the optimiser step, with each trainer's frozen-feature cache attached as in
``train()``. The three are interleaved (A B C A B C ...) so load changes on a shared machine hit all
of them, and the median is reported. Each batch is seen once untimed first, so a frozen vision
tower's features come from the cache as in a run's later epochs (the steady state). The loss alone
(forward + backward on fixed embeddings) is timed too. The load average is printed beside the
figures.

    python benchmarks/bench_agcl.py --model /tmp/model --data /tmp/catalog --batch-size 64

Without ``--model`` an embedded default is built (``afmrl init``, about 10 s); without ``--data`` a
300-product synthetic catalogue is written to a temporary folder.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

TARGET_RATIO = 1.15


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=None, help="AFMRL checkpoint (default: build one)")
    parser.add_argument("--data", default=None, help="catalogue (default: synthesise one)")
    parser.add_argument("--batch-size", type=int, default=64, help="listings per step")
    parser.add_argument("--steps", type=int, default=6, help="timed steps per loss")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--batch-sampler", choices=("random", "attributes", "mixed"), default="mixed"
    )
    return parser.parse_args(argv)


FORMS = ("infonce", "agcl", "agcl-paper")


def loss_options(form: str) -> dict[str, str]:
    """AGCLConfig/AGCLLoss keyword arguments of one benchmarked form."""
    from trainers.agcl.arguments import PAPER_FORM

    if form == "agcl-paper":
        return {"loss": "agcl", **PAPER_FORM}
    return {"loss": form}


def make_trainer(model_path: str, train, form: str, batch_size: int, sampler: str, out: Path):
    from modeling_afmrl import AFMRLModel
    from trainers.agcl.config import AGCLConfig
    from trainers.agcl.trainer import AGCLTrainer

    config = AGCLConfig(
        output_dir=str(out / form),
        **loss_options(form),
        per_device_train_batch_size=batch_size,
        batch_sampler=sampler,
        max_steps=1000,
        save_strategy="no",
        disable_tqdm=True,
        seed=0,
    )
    trainer = AGCLTrainer(AFMRLModel.from_pretrained(model_path), config, train_dataset=train)
    trainer.create_optimizer_and_scheduler(num_training_steps=1000)
    trainer.current_gradient_accumulation_steps = 1  # set by train() otherwise
    return trainer


def timed_step(trainer, batch) -> float:
    model = trainer.model
    start = time.perf_counter()
    trainer.training_step(model, dict(batch))
    trainer.optimizer.step()
    trainer.optimizer.zero_grad(set_to_none=True)
    return time.perf_counter() - start


def time_loss_only(batch_size: int, attributes: list[str], repeats: int = 20) -> dict[str, float]:
    import torch

    from trainers.agcl.loss import AGCLLoss

    torch.manual_seed(0)
    q = torch.nn.functional.normalize(torch.randn(batch_size, 256), dim=-1).requires_grad_()
    c = torch.nn.functional.normalize(torch.randn(batch_size, 256), dim=-1).requires_grad_()
    out = {}
    for form in FORMS:
        options = loss_options(form)
        fn = AGCLLoss(options.pop("loss"), **options)
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            result = fn(q, c, attributes, logit_scale=14.3, matryoshka_dims=[256, 128, 64, 32])
            result.loss.backward()
            times.append(time.perf_counter() - start)
        out[form] = statistics.median(times)
    return out


def main(argv=None) -> int:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from benchmarks import build_inputs

    args = parse_args(argv)
    import contextlib
    import os

    import torch

    from afmrl.data import load_catalog
    from afmrl.runtime import torch_settings

    with torch_settings(args.threads, flush_denormal=True), contextlib.ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-agcl-")))
        model_path, data_path = build_inputs(args.model, args.data, workdir)
        train = load_catalog(data_path, splits=["train"], check_images=False)["train"]
        trainers = {
            form: make_trainer(
                model_path, train, form, args.batch_size, args.batch_sampler, workdir
            )
            for form in FORMS
        }
        for trainer in trainers.values():  # the frozen-feature cache, as train() attaches it
            if trainer._feature_cache is not None:
                stack.enter_context(trainer._feature_cache())
        loader = trainers["agcl"].get_train_dataloader()
        batches = []
        for batch in loader:
            batches.append(batch)
            if len(batches) == args.steps + 1:
                break
        # Warm-up pass (fills each trainer's frozen-feature cache, as after a training run's first
        # epoch), then the timed pass, interleaved.
        for batch in batches:
            for trainer in trainers.values():
                timed_step(trainer, batch)
        load_before = os.getloadavg()
        times: dict[str, list[float]] = {form: [] for form in FORMS}
        for batch in batches[1:]:
            for form, trainer in trainers.items():
                times[form].append(timed_step(trainer, batch))
        load_after = os.getloadavg()
        attributes = list(batches[0]["attribute_texts"])
        loss_only = time_loss_only(args.batch_size, attributes)
        threads = torch.get_num_threads()

    med = {form: statistics.median(t) for form, t in times.items()}
    print(f"# AGCL vs InfoNCE step time ({args.batch_size} listings x 2 views per step)")
    print(f"- torch {torch.__version__}, {threads} threads, sampler {args.batch_sampler}")
    print(f"- model {model_path}; {len(batches) - 1} timed steps per loss, interleaved; median")
    print(
        f"- load average (1 min) {load_before[0]:.2f} before, {load_after[0]:.2f} after the timed "
        f"steps, on {os.cpu_count()} CPUs"
    )
    print()
    print("| loss | step s (median) | min | max | ratio to infonce |")
    print("|---|---:|---:|---:|---:|")
    for form, t in times.items():
        ratio = med[form] / med["infonce"]
        print(f"| {form} | {med[form]:.3f} | {min(t):.3f} | {max(t):.3f} | {ratio:.3f} |")
    print()
    print(
        f"loss alone (forward + backward, {args.batch_size}x256, 4 Matryoshka dims): "
        + ", ".join(f"{form} {loss_only[form] * 1e3:.1f} ms" for form in FORMS)
    )
    worst = max(med["agcl"], med["agcl-paper"]) / med["infonce"]
    verdict = "ok" if worst <= TARGET_RATIO else "ABOVE TARGET"
    print(
        f"AGCL / InfoNCE step time ratio (worst form): {worst:.3f} "
        f"(target <= {TARGET_RATIO}: {verdict})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
