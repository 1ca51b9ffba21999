"""Encode throughput of the embedded default, and the wrapper's overhead over the bare towers.

    python benchmarks/bench_encode.py [--model DIR] [--threads 1] [--repeats 5]

For batch sizes 1 and 64 it times, on the same listings (128 px photos + titles):

- ``encode``: ``model.encode(images=PIL images, texts=titles, batch_size=B)`` — everything a user
  pays: image coercion, preprocessing, tokenisation, both towers, projections, fusion, L2 norm.
- ``bare towers``: the vision tower + text tower forward passes alone, on tensors preprocessed
  beforehand by the same processor (the floor any wrapper can reach).

Overhead = encode time / bare time - 1 (target: under 10%), from this process's CPU time (robust
when other processes share the cores; the ratio that matters at 1 thread) and from wall time.
Runs are interleaved and medians reported; items/s are wall-clock. Without ``--model`` the embedded default is built
first (``afmrl init``, about 10 s).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path


def make_listings(n: int, seed: int = 0):
    """``n`` listings: 128 px crops of scikit-image's real photos and product-like titles."""
    import numpy as np
    import skimage
    from PIL import Image

    folder = Path(skimage.data.__file__).parent
    photos = [
        Image.open(folder / name).convert("RGB")
        for name in ("coffee.png", "chelsea.png", "rocket.jpg", "motorcycle_left.png")
    ]
    rng = np.random.default_rng(seed)
    words = [
        "navy",
        "striped",
        "cotton",
        "t-shirt",
        "crew",
        "neck",
        "pack",
        "of",
        "2",
        "men",
        "women",
        "stainless",
        "steel",
        "bottle",
        "500ml",
        "ceramic",
        "mug",
        "red",
        "plaid",
        "scarf",
        "wool",
        "leather",
        "wallet",
        "black",
        "sneaker",
        "running",
        "size",
        "42",
        "sale",
        "new",
    ]
    images, titles = [], []
    for _ in range(n):
        photo = photos[rng.integers(len(photos))]
        side = int(rng.integers(128, min(photo.size)))
        x, y = rng.integers(0, photo.width - side + 1), rng.integers(0, photo.height - side + 1)
        images.append(photo.crop((x, y, x + side, y + side)).resize((128, 128)))
        titles.append(" ".join(rng.choice(words, size=int(rng.integers(6, 16)))))
    return images, titles


def bare_towers(model, inputs) -> None:
    """The two towers' forward passes, nothing else."""
    model.vision_model(pixel_values=inputs["pixel_values"])
    text = {k: inputs[k] for k in ("input_ids", "attention_mask", "token_type_ids") if k in inputs}
    model.text_model(**text)


def time_it(fn) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process) for one call."""
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def bench(model, images, titles, batch_size: int, repeats: int) -> dict[str, float]:
    """Seconds per item (median over ``repeats``; wall and CPU) for ``encode`` and bare towers."""
    import torch

    n = len(titles)
    batches = [(s, min(s + batch_size, n)) for s in range(0, n, batch_size)]
    processor = model.processor
    prepared = [
        processor(images=images[s:e], text=titles[s:e], return_tensors="pt") for s, e in batches
    ]

    def run_encode():
        for s, e in batches:
            model.encode(images=images[s:e], texts=titles[s:e], batch_size=batch_size)

    def run_bare():
        with torch.no_grad():
            for inputs in prepared:
                bare_towers(model, inputs)

    run_encode(), run_bare()  # warm-up
    times: dict[str, list[tuple[float, float]]] = {"encode": [], "bare": []}
    for _ in range(repeats):  # interleaved, so that load from other processes hits both
        times["encode"].append(time_it(run_encode))
        times["bare"].append(time_it(run_bare))
    out = {}
    for name, runs in times.items():
        out[f"{name}_wall"] = statistics.median(w for w, _ in runs) / n
        out[f"{name}_cpu"] = statistics.median(c for _, c in runs) / n
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=None, help="checkpoint folder (default: build one)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--items-batch-1", type=int, default=64, help="listings timed at batch 1")
    parser.add_argument("--items-batch-64", type=int, default=256, help="listings at batch 64")
    args = parser.parse_args(argv)

    import torch
    from transformers import AutoModel

    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    scratch = None
    model_dir = args.model
    if model_dir is None:
        from afmrl.defaults import build_embedded_default

        scratch = tempfile.TemporaryDirectory(prefix="afmrl-bench-")
        model_dir = build_embedded_default(Path(scratch.name) / "default", progress=lambda _: None)
    model = AutoModel.from_pretrained(model_dir, trust_remote_code=True).eval()
    rows = []
    for batch_size, n in ((1, args.items_batch_1), (64, args.items_batch_64)):
        images, titles = make_listings(n)
        t = bench(model, images, titles, batch_size, args.repeats)
        rows.append(
            (
                batch_size,
                1 / t["encode_wall"],
                1 / t["bare_wall"],
                t["encode_cpu"] / t["bare_cpu"] - 1,
                t["encode_wall"] / t["bare_wall"] - 1,
            )
        )

    print(
        f"embedded default encode throughput ({args.threads} thread(s), median of {args.repeats})"
    )
    print(
        "| batch | encode items/s | bare towers items/s | overhead (CPU time) | overhead (wall) |"
    )
    print("|---:|---:|---:|---:|---:|")
    for batch_size, enc, bare, cpu_overhead, wall_overhead in rows:
        print(
            f"| {batch_size} | {enc:.1f} | {bare:.1f} | {cpu_overhead:+.1%} | {wall_overhead:+.1%} |"
        )
    if scratch is not None:
        scratch.cleanup()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
