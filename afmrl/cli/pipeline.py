"""``afmrl pipeline``: the main job, end to end on the embedded default.

Stages so far: (1) build the synthetic catalogue with a preview sheet, (2) build the embedded
default checkpoint (its extractor tokenizer trained on the catalogue's train split), (3) evaluate it
on the test split beside the zero-shot baselines (metrics.json, report.md, recall_at_k.png).
Extractor SFT, extraction, AGCL and RAR are inserted before the evaluation as they land. A stage
whose output already exists is skipped, so a rerun continues where a stopped one ended.
"""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="outputs/quickstart", help="output folder")
    parser.add_argument(
        "--products", type=int, default=None, help="catalogue size (default: synth's)"
    )
    parser.add_argument("--seed", type=int, default=0)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from afmrl.cli import main

    out = Path(args.out)
    catalog, model_dir = out / "catalog", out / "base_model"
    stages: list[tuple[str, Path, list[str]]] = []
    synth = ["synth", "--out", str(catalog), "--seed", str(args.seed)]
    synth += ["--preview", str(out / "catalog_preview.png")]
    if args.products is not None:
        synth += ["--products", str(args.products)]
    stages.append(("catalogue", catalog / "dataset_dict.json", synth))
    init = ["init", "--out", str(model_dir), "--data", str(catalog), "--seed", str(args.seed)]
    stages.append(("embedded default", model_dir / "model.safetensors", [*init, "--overwrite"]))

    evaluate = ["evaluate", "--model", str(model_dir), "--data", str(catalog)]
    evaluate += [
        "--out",
        str(out / "evaluation"),
        "--baselines",
        "--baseline-model",
        str(model_dir),
    ]
    stages.append(("evaluation", out / "evaluation" / "report.md", evaluate))

    for i, (name, done_marker, argv) in enumerate(stages, 1):
        if done_marker.exists():
            print(f"[pipeline] {i}/{len(stages)} {name}: found {done_marker}, skipped")
            continue
        print(f"[pipeline] {i}/{len(stages)} {name}: afmrl {' '.join(argv)}", flush=True)
        rc = main(argv)
        if rc:
            return rc
    report = out / "evaluation" / "report.md"
    print(f"[pipeline] done; report: {report}\n")
    print(report.read_text())
    return 0
