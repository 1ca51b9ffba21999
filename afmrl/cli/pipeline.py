"""``afmrl pipeline``: the main job, end to end on the embedded default.

Stages so far: (1) the synthetic catalogue with a preview sheet, (2) the embedded default checkpoint
(its extractor tokenizer trained on the catalogue's train split), (3) its evaluation on the test
split beside the peers (metrics.json, report.md, recall_at_k.png), (4) the calibration of
"identical" on the validation split, stored with the checkpoint for the demo. Each stage is an ``afmrl``
command. A stage is recognised as finished by its *fingerprint* -- its command line and the
fingerprints of the stages it reads -- recorded in ``OUT/pipeline.json`` when it succeeds: a rerun
with the same settings skips it, a rerun with other settings (or after an upstream stage changed)
runs it again and everything after it.
"""

from __future__ import annotations

import argparse

from afmrl.cli.arguments import positive_int
from afmrl.data.synthetic.config import CatalogConfig

STATE_FILE = "pipeline.json"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="outputs/quickstart", help="output folder")
    parser.add_argument(
        "--products",
        type=positive_int,
        default=CatalogConfig.products,
        help="catalogue size (default: %(default)s)",
    )
    parser.add_argument("--seed", type=int, default=0, help="(default: %(default)s)")


def stages(args: argparse.Namespace) -> list[tuple[str, list[str], list[str], str]]:
    """``(name, afmrl argv, names of the stages it reads, output path)`` in order."""
    from pathlib import Path

    out = Path(args.out)
    catalog, model = str(out / "catalog"), str(out / "base_model")
    evaluation = str(out / "evaluation")
    return [
        (
            "catalogue",
            ["synth", "--out", catalog, "--seed", str(args.seed), "--products",
             str(args.products), "--preview", str(out / "catalog_preview.png")],
            [],
            catalog,
        ),
        (
            "embedded default",
            ["init", "--out", model, "--data", catalog, "--seed", str(args.seed), "--overwrite"],
            ["catalogue"],
            model,
        ),
        (
            "evaluation",
            ["evaluate", "--model", model, "--data", catalog, "--out", evaluation, "--baselines",
             "--baseline-model", model],
            ["catalogue", "embedded default"],
            evaluation,
        ),
        (
            "calibration",
            ["calibrate", "--model", model, "--data", catalog, "--test", "--no-progress"],
            ["catalogue", "embedded default"],
            str(out / "base_model" / "calibration.json"),
        ),
    ]  # fmt: skip


def run(args: argparse.Namespace) -> int:
    import json
    import time
    from pathlib import Path

    from afmrl.cli import main
    from afmrl.cli.arguments import check_out
    from afmrl.io import fingerprint, write_json_atomic

    plan = stages(args)
    outputs = {Path(output).name for *_, output in plan} | {STATE_FILE, "catalog_preview.png"}

    def ours(folder: Path) -> bool:
        """Only this pipeline's outputs (and their in-progress hidden siblings) live here."""
        return all(
            p.name in outputs or any(p.name.startswith(f".{name}.") for name in outputs)
            for p in folder.iterdir()
        )

    out = check_out(args.out, ours=ours, overwrite=True)
    state_path = out / STATE_FILE
    try:
        state = json.loads(state_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        state = {}
    fingerprints: dict[str, str] = {}
    for i, (name, argv, reads, output) in enumerate(plan, 1):
        fingerprints[name] = fingerprint(argv, [fingerprints[r] for r in reads])
        done = state.get(name, {})
        if done.get("fingerprint") == fingerprints[name] and Path(output).exists():
            print(f"[pipeline] {i}/{len(plan)} {name}: unchanged since the last run, skipped")
            continue
        print(f"[pipeline] {i}/{len(plan)} {name}: afmrl {' '.join(argv)}", flush=True)
        start = time.perf_counter()
        rc = main(argv)
        if rc:
            return rc
        state[name] = {
            "fingerprint": fingerprints[name],
            "seconds": round(time.perf_counter() - start, 1),
        }
        write_json_atomic(state_path, state)
    report = out / "evaluation" / "report.md"
    print(f"[pipeline] done; report: {report}\n")
    print(report.read_text())
    return 0
