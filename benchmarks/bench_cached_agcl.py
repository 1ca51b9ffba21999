"""Peak memory of an AGCL training step, plain and with gradient caching, at 8x the batch.

Each configuration runs in a fresh process (``--worker``), which builds the trainer, takes the first
batch of its dataloader (same seed: the same listings in every configuration), records its peak RSS
(``resource.getrusage``) and then runs one training step (``AGCLTrainer.training_step`` -- forward,
loss, backward -- plus the AdamW step) and records the peak RSS again. The step's own memory is the
difference. Configurations:

* ``plain xB`` -- the plain loss at the batch that fits (``--pairs`` pairs, ``2 x pairs`` listings);
* ``plain 8xB`` -- the plain loss at 8x that batch;
* ``cached 8xB`` -- gradient caching at 8x, chunks of ``2 x pairs`` listings (what the plain ``xB``
  step embeds in one forward).

Then both 8x configurations run again under an address-space cap (``RLIMIT_AS``) set between the
virtual-memory peaks of ``cached 8xB`` and ``plain 8xB`` (or ``--cap-gib``): the plain step fails to
allocate, the cached one trains. The plain and cached 8x steps' losses and every parameter gradient
are compared (max abs difference). The load average is printed beside the figures.

The float32 comparison differs by float32 rounding (the 8x batch sums over 8x as many listings, in
another order). So that the equality is checked beyond that rounding, the same 8x batch runs once more,
plain and cached, with the model and inputs cast to float64 (``--float64-check``, on by default;
without the cap, which the plain 8x step does not fit by design), and their losses and gradients are
compared the same way.

The model is the embedded default (``afmrl init``: EfficientNet-Lite0 at 128 px + all-MiniLM-L6-v2)
with both towers trained whole (``train_vision_blocks = train_text_layers = -1``), so activations
dominate; dropout is switched off so the plain and cached gradients are comparable (chunks draw
their own dropout masks; the cached replay reuses them). Memory of the plain step grows with the
batch; with caching it grows only by the ``[2B, D]`` embeddings and the ``[B, B]`` loss terms.

    python benchmarks/bench_cached_agcl.py --model outputs/quickstart/base_model \\
        --data outputs/quickstart/catalog --pairs 8
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MULTIPLE = 8


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=None, help="AFMRL checkpoint (default: build one)")
    parser.add_argument("--data", default=None, help="catalogue (default: synthesise one)")
    parser.add_argument("--pairs", type=int, default=8, help="pairs per step that fit (B)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--cap-gib", type=float, default=None, help="address-space cap (default: derived)"
    )
    parser.add_argument("--workdir", default=None, help="keep gradients and inputs here")
    parser.add_argument(
        "--float64-check",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also compare plain and cached at 8x in float64 (uncapped; about 2x the plain 8x memory)",
    )
    # Worker mode (one configuration in this process).
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--chunk", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--save-grads", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--limit-bytes", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument(
        "--dtype", choices=["float32", "float64"], default="float32", help=argparse.SUPPRESS
    )
    return parser.parse_args(argv)


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def vm_peak_mib() -> float:
    """``VmPeak`` of this process (the address space ``RLIMIT_AS`` caps), in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmPeak:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def worker(args: argparse.Namespace) -> int:
    """One configuration: build, take the first batch, one training step; print a JSON line."""
    result: dict = {"pairs": args.pairs, "chunk": args.chunk, "dtype": args.dtype}
    if args.limit_bytes:
        resource.setrlimit(resource.RLIMIT_AS, (args.limit_bytes, args.limit_bytes))
    import torch

    from afmrl.data import load_catalog
    from afmrl.runtime import torch_settings
    from modeling_afmrl import AFMRLModel
    from trainers.agcl.config import AGCLConfig
    from trainers.agcl.trainer import AGCLTrainer

    with torch_settings(args.threads, flush_denormal=True), tempfile.TemporaryDirectory() as tmp:
        train = load_catalog(args.data, splits=["train"], check_images=False)["train"]
        model = AFMRLModel.from_pretrained(args.model)
        for module in model.modules():
            if isinstance(module, torch.nn.Dropout):
                module.p = 0.0
        config = AGCLConfig(
            output_dir=tmp,
            per_device_train_batch_size=args.pairs,
            gradient_cache_chunk_size=args.chunk,
            train_vision_blocks=-1,
            train_text_layers=-1,
            max_steps=1,
            save_strategy="no",
            disable_tqdm=True,
            use_cpu=True,
            seed=0,
        )
        trainer = AGCLTrainer(model, config, train_dataset=train)
        dtype = getattr(torch, args.dtype)
        trainer.model.to(dtype)  # in place: the trainer's parameters, before the optimiser
        trainer.create_optimizer_and_scheduler(num_training_steps=1)
        trainer.current_gradient_accumulation_steps = 1
        batch = next(iter(trainer.get_train_dataloader()))
        batch = {
            k: v.to(dtype) if torch.is_tensor(v) and v.is_floating_point() else v
            for k, v in batch.items()
        }
        result["listings"] = int(batch["input_ids"].shape[0])
        result["rss_before_mib"] = peak_rss_mib()
        start = time.perf_counter()
        try:
            loss = trainer.training_step(trainer.model, batch)
            if args.save_grads:
                from safetensors.torch import save_file

                grads = {
                    n: p.grad.detach().contiguous()
                    for n, p in trainer.model.named_parameters()
                    if p.grad is not None
                }
                save_file(grads, args.save_grads)
            trainer.optimizer.step()
        except (MemoryError, RuntimeError) as err:  # torch's allocator raises RuntimeError
            result.update(ok=False, error=str(err).splitlines()[0][:160])
        else:
            result.update(ok=True, loss=float(loss))
        result["step_s"] = time.perf_counter() - start
    result["rss_peak_mib"] = peak_rss_mib()
    result["vm_peak_mib"] = vm_peak_mib()
    print("RESULT " + json.dumps(result), flush=True)
    return 0


def run_config(
    args, pairs: int, chunk: int | None, grads: Path | None = None, limit=None, dtype="float32"
):
    cmd = [sys.executable, __file__, "--worker", "--model", args.model, "--data", args.data]
    cmd += ["--pairs", str(pairs), "--threads", str(args.threads), "--dtype", dtype]
    if chunk is not None:
        cmd += ["--chunk", str(chunk)]
    if grads is not None:
        cmd += ["--save-grads", str(grads)]
    if limit is not None:
        cmd += ["--limit-bytes", str(limit)]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    load = os.getloadavg()[0]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if not lines:  # killed before it could report (e.g. the cap hit while importing)
        tail = (proc.stderr or "").strip().splitlines()[-1:] or [f"exit {proc.returncode}"]
        return {"pairs": pairs, "chunk": chunk, "ok": False, "error": tail[0][:160], "load": load}
    return {**json.loads(lines[-1][len("RESULT ") :]), "load": load}


def compare_grads(a: Path, b: Path) -> tuple[int, float, float, float]:
    """``(tensors, max |a - b|, max |a|, ||a - b|| / ||a||)`` over every parameter's gradient."""
    from safetensors.torch import load_file

    ga, gb = load_file(a), load_file(b)
    if ga.keys() != gb.keys():
        raise SystemExit(f"gradients of different parameters: {sorted(ga.keys() ^ gb.keys())[:5]}")
    diff = max((ga[k] - gb[k]).abs().max().item() for k in ga)
    largest = max(ga[k].abs().max().item() for k in ga)
    err = sum(((ga[k] - gb[k]).double() ** 2).sum().item() for k in ga)
    norm = sum((ga[k].double() ** 2).sum().item() for k in ga)
    return len(ga), diff, largest, (err / norm) ** 0.5


def main(argv=None) -> int:
    args = parse_args(argv)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    if args.worker:
        return worker(args)
    from benchmarks import build_inputs

    with tempfile.TemporaryDirectory(prefix="bench-cached-agcl-") as tmp:
        workdir = Path(args.workdir or tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        args.model, args.data = build_inputs(args.model, args.data, workdir)
        small, big, chunk = args.pairs, MULTIPLE * args.pairs, 2 * args.pairs
        runs = {
            f"plain {small} pairs": run_config(args, small, None),
            f"plain {big} pairs": run_config(args, big, None, grads=workdir / "plain.safetensors"),
            f"cached {big} pairs, chunks of {chunk}": run_config(
                args, big, chunk, grads=workdir / "cached.safetensors"
            ),
        }
        plain_big = runs[f"plain {big} pairs"]
        cached_big = runs[f"cached {big} pairs, chunks of {chunk}"]
        equality = None
        if plain_big.get("ok") and cached_big.get("ok"):
            equality = compare_grads(workdir / "plain.safetensors", workdir / "cached.safetensors")
        if args.cap_gib is not None:
            cap_mib = args.cap_gib * 1024
        else:  # between the two 8x virtual-memory peaks
            cap_mib = (cached_big["vm_peak_mib"] + plain_big["vm_peak_mib"]) / 2
        limit = int(cap_mib * 1024 * 1024)
        capped = {
            f"plain {big} pairs, capped": run_config(args, big, None, limit=limit),
            f"cached {big} pairs, chunks of {chunk}, capped": run_config(
                args, big, chunk, limit=limit
            ),
        }
        double = {}
        if args.float64_check:
            double = {
                "plain": run_config(
                    args, big, None, grads=workdir / "plain64.safetensors", dtype="float64"
                ),
                "cached": run_config(
                    args, big, chunk, grads=workdir / "cached64.safetensors", dtype="float64"
                ),
            }
            if all(r.get("ok") for r in double.values()):
                double["equality"] = compare_grads(
                    workdir / "plain64.safetensors", workdir / "cached64.safetensors"
                )

    import torch

    base = runs[f"plain {small} pairs"]
    print(f"# Peak memory of one AGCL step: plain vs gradient caching at {MULTIPLE}x the batch")
    print(f"- model {args.model} (both towers trained whole, dropout off); data {args.data}")
    print(f"- torch {torch.__version__}, {args.threads} threads, {os.cpu_count()} CPUs")
    print()
    print("| config | listings | peak RSS MiB | before step | step's own | VM peak MiB | step s "
          "| load (1 min) |")  # fmt: skip
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for name, r in {**runs, **capped}.items():
        if "rss_peak_mib" not in r:
            print(f"| {name} | - | failed: {r.get('error')} | | | | | {r['load']:.2f} |")
            continue
        own = r["rss_peak_mib"] - r["rss_before_mib"]
        error = str(r.get("error", "")).split("DefaultCPUAllocator: ")[-1][:40]
        status = "" if r.get("ok") else f" (failed: {error})"
        print(
            f"| {name}{status} | {r['listings']} | {r['rss_peak_mib']:.0f} | "
            f"{r['rss_before_mib']:.0f} | {own:.0f} | {r['vm_peak_mib']:.0f} | {r['step_s']:.1f} | "
            f"{r['load']:.2f} |"
        )
    print()

    def own(r):
        return r["rss_peak_mib"] - r["rss_before_mib"]

    print(
        f"peak RSS ratio cached {MULTIPLE}x / plain 1x: "
        f"{cached_big['rss_peak_mib'] / base['rss_peak_mib']:.2f} "
        f"(step's own memory {own(cached_big) / own(base):.2f}); plain {MULTIPLE}x / plain 1x: "
        f"{plain_big['rss_peak_mib'] / base['rss_peak_mib']:.2f} "
        f"(step's own {own(plain_big) / own(base):.2f}); plain {MULTIPLE}x / cached {MULTIPLE}x: "
        f"{plain_big['rss_peak_mib'] / cached_big['rss_peak_mib']:.2f}"
    )
    print(
        f"step time cached {MULTIPLE}x / plain {MULTIPLE}x: "
        f"{cached_big['step_s'] / plain_big['step_s']:.2f}"
    )
    if equality is not None:
        n, diff, largest, relative = equality
        print(
            f"plain vs cached at {MULTIPLE}x: |loss diff| "
            f"{abs(plain_big['loss'] - cached_big['loss']):.2e}, max |grad diff| {diff:.2e} over "
            f"{n} parameter tensors (largest |grad| {largest:.2e}; relative L2 error of the whole "
            f"gradient {relative:.1e}: float32 sums over {MULTIPLE}x as many listings in another "
            "order)"
        )
    if double:
        for name in ("plain", "cached"):
            r = double[name]
            status = "ok" if r.get("ok") else f"failed: {r.get('error')}"
            print(
                f"float64 {name} {big} pairs{'' if name == 'plain' else f', chunks of {chunk}'} "
                f"(uncapped): {status}; loss {r.get('loss', float('nan')):.12f}, peak RSS "
                f"{r.get('rss_peak_mib', float('nan')):.0f} MiB, step "
                f"{r.get('step_s', float('nan')):.1f} s, load {r['load']:.2f}"
            )
        if "equality" in double:
            n, diff, largest, relative = double["equality"]
            loss_diff = abs(double["plain"]["loss"] - double["cached"]["loss"])
            print(
                f"plain vs cached at {MULTIPLE}x in float64 (same batch): |loss diff| "
                f"{loss_diff:.2e}, max |grad diff| {diff:.2e} over {n} parameter tensors "
                f"(largest |grad| {largest:.2e}; relative L2 error of the whole gradient "
                f"{relative:.1e})"
            )
    verdict = [r.get("ok") for r in capped.values()]
    print(
        f"under RLIMIT_AS = {cap_mib:.0f} MiB: plain {MULTIPLE}x "
        f"{'trains' if verdict[0] else 'fails'}, cached {MULTIPLE}x "
        f"{'trains' if verdict[1] else 'fails'}"
    )
    print(f"load average now: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
