"""``afmrl pipeline``: the whole paper, end to end, on one catalogue (the README's first command).

catalogue -> embedded default -> extractor SFT -> attribute extraction -> stage-1 encoders
(InfoNCE and AGCL with the same budget, AGCL on the SFT attributes) -> RAR -> one CIT round
(which re-extracts with the RAR extractor) -> evaluation of every variant beside the peers -> the
published model, chosen on validation, as a Hub-ready folder with its card and calibration -> the
ablation report (``OUT/report.md`` and plots). :mod:`afmrl.pipeline` has the stages and how a rerun
skips finished stages and resumes a killed one; ``--smoke`` runs the same stages at tiny sizes.
"""

from __future__ import annotations

import argparse

from afmrl.cli.arguments import add_fields, add_no_progress
from afmrl.pipeline.settings import PIPELINE_FLAGS, PipelineSettings

DEFAULT_OUT = "outputs/quickstart"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default=DEFAULT_OUT, help="output folder (default: %(default)s)")
    add_fields(parser, PipelineSettings, *PIPELINE_FLAGS)
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="the same stages at tiny sizes (a 40-product catalogue, a few steps each): checks "
        "that everything runs, says nothing about quality",
    )
    add_no_progress(parser)


def run(args: argparse.Namespace) -> int:
    import shlex
    import sys
    import time
    from pathlib import Path

    from afmrl.cli import main
    from afmrl.cli.arguments import check_out, settings_from_args
    from afmrl.pipeline.plan import FINAL_MODEL, OUTPUT_NAMES, build_plan
    from afmrl.pipeline.runner import run_plan
    from afmrl.pipeline.settings import smoke_settings

    settings = settings_from_args(PipelineSettings, args)
    if args.smoke:
        settings = smoke_settings(settings)

    def ours(folder: Path) -> bool:
        """Only this pipeline's outputs (and their in-progress hidden siblings) live here."""
        return all(
            p.name in OUTPUT_NAMES or any(p.name.startswith(f".{n}.") for n in OUTPUT_NAMES)
            for p in folder.iterdir()
        )

    out = check_out(args.out, ours=ours, overwrite=True)
    out.mkdir(parents=True, exist_ok=True)
    plan = build_plan(settings, out, progress=not args.no_progress)
    start = time.perf_counter()
    rerun = (
        shlex.join(["afmrl", *sys.argv[1:]])
        if sys.argv[1:2] == ["pipeline"]
        else "the same command"
    )
    rc = run_plan(plan, out, main, rerun)
    if rc:
        return rc
    report = (out / "report.md").read_text(encoding="utf-8")
    table = report.split("## Retrieval (test split)\n\n", 1)[-1].split("\n\n", 1)[0]
    print(
        f"\n[pipeline] done ({time.perf_counter() - start:.0f} s this run). In {out}:\n"
        "  report.md, ablation.png, rar_reward.png, stage_times.png  the ablation report\n"
        f"  {FINAL_MODEL}/   the published model: card (README.md), metrics.json, "
        "calibration.json\n"
        "  models/         every trained variant, per seed\n"
        "  evaluation/     metrics.json + report.md of each evaluation\n"
        "  catalog/        the catalogue (catalog_preview.png: a contact sheet)\n"
        f"Open the demo:  afmrl demo --model {out / FINAL_MODEL} --data {out / 'catalog'}\n"
        f"Publish:        afmrl push --checkpoint {out / FINAL_MODEL} --metrics "
        f"{out / FINAL_MODEL / 'metrics.json'} --repo-id ORG/NAME [--data {out / 'catalog'} "
        "--dataset-repo ORG/DATA] [--space-repo ORG/SPACE]\n"
    )
    print(table)
    return 0
