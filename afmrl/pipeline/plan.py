"""The pipeline's stages, in order: the whole paper on one catalogue.

catalogue -> embedded default -> extractor SFT -> SFT attributes of every split -> per training
seed: InfoNCE encoder, AGCL encoder (the same budget), AGCL encoder on the SFT attributes, RAR on
its extractor, one CIT round -> the evaluations (test split: the peers and the two plain encoders;
the three attribute-enhanced models with their own generated attributes; the extractors' attribute
accuracy) -> the choice of the published model on the validation split -> the Hub-ready model
folder with its card -> its calibration -> the ablation report.

Each stage is an ``afmrl`` command (or, for the last three, a function of this package), so every
stage can be rerun by hand with the command the log prints.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .settings import PipelineSettings

#: Top-level entries of a pipeline output folder (anything else there is not ours).
OUTPUT_NAMES: frozenset[str] = frozenset({
    "catalog", "catalog_preview.png", "base_model", "sft_extractor", "catalog_sft", "models",
    "evaluation", "afmrl-model", "report.md", "ablation.png", "rar_reward.png", "stage_times.png",
    "pipeline.json",
})  # fmt: skip
MODELS_DIR = "models"
FINAL_MODEL = "afmrl-model"
#: The trained variants of one seed: (folder prefix, report row).
VARIANTS: dict[str, str] = {
    "infonce": "InfoNCE",
    "agcl": "AGCL",
    "agcl_sft": "AGCL + SFT attributes",
    "afmrl": "AGCL + RAR attributes (AFMRL)",
    "afmrl_cit": "AFMRL + CIT",
}
#: Variants evaluated without attributes / with their own extractor's generated attributes.
PLAIN_VARIANTS: tuple[str, ...] = ("infonce", "agcl")
ATTRIBUTE_VARIANTS: tuple[str, ...] = ("agcl_sft", "afmrl", "afmrl_cit")
#: The column ``afmrl extract`` writes the SFT attributes to (what ``train-encoder`` reads).
ATTRIBUTE_COLUMN = "attributes"


@dataclass(frozen=True)
class Stage:
    """One step of the pipeline.

    ``argv`` is the ``afmrl`` command it runs, or, for a ``run`` function stage, the settings that
    identify its result (both go into the stage's fingerprint with those of the stages it
    ``reads``). ``output`` is complete only when the stage finished. ``trains`` marks a training
    command: Trainer checkpoints in ``OUTPUT.checkpoints`` let a killed run resume mid-stage.
    """

    name: str
    output: str
    reads: tuple[str, ...]
    argv: tuple[str, ...]
    group: str
    trains: bool = False
    run: Callable[[], None] | None = None


def variant_folder(out: Path, variant: str, seed: int) -> Path:
    return out / MODELS_DIR / f"{variant}-s{seed}"


def _opt(flag: str, value) -> list[str]:
    return [] if value is None else [flag, str(value)]


def build_plan(settings: PipelineSettings, out: Path, *, progress: bool = True) -> list[Stage]:
    """The stages of ``afmrl pipeline`` for ``settings`` with outputs under ``out``."""
    from . import final, report

    s = settings
    catalog, base = str(out / "catalog"), str(out / "base_model")
    sft, catalog_sft = str(out / "sft_extractor"), str(out / "catalog_sft")
    common = [*_opt("--threads", s.threads), *([] if progress else ["--no-progress"])]
    saves = ["--save-steps", str(s.checkpoint_steps)]
    encoder = [
        *_opt("--max-steps", s.encoder_steps), *_opt("--batch-size", s.encoder_batch_size), *saves,
    ]  # fmt: skip
    plan = [
        Stage(
            "catalogue", catalog, (),
            ("synth", "--out", catalog, "--seed", str(s.seed), "--products", str(s.products),
             "--preview", str(out / "catalog_preview.png")),
            "data",
        ),
        Stage(
            "embedded default", base, ("catalogue",),
            ("init", "--out", base, "--data", catalog, "--seed", str(s.seed), "--overwrite"),
            "data",
        ),
        Stage(
            "extractor SFT", sft, ("embedded default",),
            ("train-extractor", "--model", base, "--data", catalog, "--out", sft, "--seed",
             str(s.seed), *_opt("--max-steps", s.extractor_steps), *saves, "--overwrite", *common),
            "extractor SFT", trains=True,
        ),
        Stage(
            "SFT attributes", catalog_sft, ("extractor SFT",),
            ("extract", "--model", sft, "--data", catalog, "--out", catalog_sft, "--splits",
             "train", "--attributes-column", ATTRIBUTE_COLUMN, "--overwrite", *common),
            "attribute extraction",
        ),
    ]  # fmt: skip
    folders: dict[str, list[str]] = {v: [] for v in VARIANTS}  # variant -> its folder per seed
    trained: dict[str, list[str]] = {v: [] for v in VARIANTS}  # variant -> its stage per seed
    for seed in s.training_seeds:
        f = {v: str(variant_folder(out, v, seed)) for v in VARIANTS}
        tag = f" (seed {seed})"
        train = ("--seed", str(seed), "--overwrite", *common)
        plan += [
            Stage(
                f"InfoNCE encoder{tag}", f["infonce"], ("extractor SFT",),
                ("train-encoder", "--model", sft, "--data", catalog, "--out", f["infonce"],
                 "--loss", "infonce", *encoder, *train),
                "stage 1 (InfoNCE)", trains=True,
            ),
            Stage(
                f"AGCL encoder{tag}", f["agcl"], ("extractor SFT",),
                ("train-encoder", "--model", sft, "--data", catalog, "--out", f["agcl"],
                 "--loss", "agcl", *encoder, *train),
                "stage 1 (AGCL)", trains=True,
            ),
            Stage(
                f"AGCL encoder on SFT attributes{tag}", f["agcl_sft"], ("SFT attributes",),
                ("train-encoder", "--model", sft, "--data", catalog_sft, "--out", f["agcl_sft"],
                 "--loss", "agcl", "--attributes", ATTRIBUTE_COLUMN, "--loss-attributes",
                 "teacher", *encoder, *train),
                "stage 1 (AGCL + attributes)", trains=True,
            ),
            Stage(
                f"RAR{tag}", f["afmrl"], (f"AGCL encoder on SFT attributes{tag}", "SFT attributes"),
                ("train-rar", "--model", f["agcl_sft"], "--data", catalog_sft, "--out", f["afmrl"],
                 "--gallery-attributes-column", f"pos_{ATTRIBUTE_COLUMN}",
                 *_opt("--max-steps", s.rar_steps), *_opt("--batch-size", s.rar_batch_size),
                 *_opt("--group-size", s.rar_group_size),
                 *_opt("--gallery-size", s.rar_gallery_size), *saves, *train),
                "stage 2 (RAR)", trains=True,
            ),
            Stage(
                f"CIT round{tag}", f["afmrl_cit"], (f"RAR{tag}",),
                ("cit", "--model", f["afmrl"], "--data", catalog, "--out", f["afmrl_cit"],
                 "--split", "none", *_opt("--max-steps", s.cit_steps), *train),
                "CIT", trains=True,
            ),
        ]  # fmt: skip
        for stage in plan[-len(VARIANTS) :]:
            variant = next(v for v in VARIANTS if stage.output == f[v])
            folders[variant].append(stage.output)
            trained[variant].append(stage.name)
    evaluation = out / "evaluation"
    plain = [m for v in PLAIN_VARIANTS for m in folders[v]]
    enhanced = [m for v in ATTRIBUTE_VARIANTS for m in folders[v]]
    first = s.training_seeds[0]
    candidates = [str(variant_folder(out, v, first)) for v in ("afmrl", "afmrl_cit")]
    plan += [
        Stage(
            "evaluation: peers and plain encoders", str(evaluation / "plain"),
            tuple(n for v in PLAIN_VARIANTS for n in trained[v]),
            ("evaluate", "--model", plain[0], "--compare", *plain[1:], "--data", catalog,
             "--out", str(evaluation / "plain"), "--split", "test", "--baselines",
             "--baseline-model", base, *common),
            "evaluation",
        ),
        Stage(
            "evaluation: attribute-enhanced", str(evaluation / "attributes"),
            tuple(n for v in ATTRIBUTE_VARIANTS for n in trained[v]),
            ("evaluate", "--model", enhanced[0], "--compare", *enhanced[1:], "--data", catalog,
             "--out", str(evaluation / "attributes"), "--split", "test", "--attributes",
             "generated", *common),
            "evaluation",
        ),
        Stage(
            "evaluation: extractor attributes", str(evaluation / "extractors"),
            ("extractor SFT", *trained["afmrl"]),
            ("evaluate", "--task", "attributes", "--model", sft, "--compare", *folders["afmrl"],
             "--data", catalog, "--out", str(evaluation / "extractors"), "--split", "test",
             *common),
            "evaluation",
        ),
        Stage(
            "choice of the published model (validation)", str(evaluation / "choice"),
            (trained["afmrl"][0], trained["afmrl_cit"][0]),
            ("evaluate", "--model", *candidates[:1], "--compare", *candidates[1:], "--data",
             catalog, "--out", str(evaluation / "choice"), "--split", "validation",
             "--attributes", "generated", "--no-plot", *common),
            "evaluation",
        ),
    ]  # fmt: skip
    final_out = out / FINAL_MODEL
    plan += [
        Stage(
            "Hub-ready model", str(final_out),
            ("choice of the published model (validation)", "evaluation: attribute-enhanced"),
            ("final-model", str(final_out)),
            "report",
            run=lambda: final.build_final_model(out, candidates),
        ),
        Stage(
            "calibration", str(final_out / "calibration.json"), ("Hub-ready model",),
            ("calibrate", "--model", str(final_out), "--data", catalog, "--test", *common),
            "report",
        ),
        Stage(
            "report", str(out / "report.md"),
            ("evaluation: peers and plain encoders", "evaluation: attribute-enhanced",
             "evaluation: extractor attributes", "calibration"),
            ("report", str(out), *map(str, s.training_seeds)),
            "report",
            run=lambda: report.write_pipeline_report(out, s.training_seeds),
        ),
    ]  # fmt: skip
    return plan
