"""The pipeline's settings: every default and its help, defined once (read by ``afmrl pipeline``).

A size left at ``None`` means "the stage command's own default", which is defined beside that
stage's config (``trainers/*/arguments.py``); the pipeline passes a flag only for what it changes.
``--smoke`` swaps in :data:`SMOKE`: the same stages at tiny sizes, for CI (a few minutes on two
cores), not for numbers.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from afmrl.data.synthetic.config import CatalogConfig


@dataclass(frozen=True)
class PipelineSettings:
    """What ``afmrl pipeline`` runs (see :func:`afmrl.pipeline.plan.build_plan`)."""

    products: int = field(
        default=CatalogConfig.products,
        metadata={"help": "catalogue size in products", "check": "positive"},
    )
    seed: int = field(default=0, metadata={"help": "catalogue seed, and the first training seed"})
    seeds: int = field(
        default=1,
        metadata={
            "help": "training seeds (seed, seed+1, ...): every encoder, RAR and CIT stage runs "
            "once per seed and the report gives mean ± std",
            "check": "positive",
        },
    )
    encoder_steps: int | None = field(
        default=None,
        metadata={
            "help": "optimiser steps of each stage-1 encoder, InfoNCE and AGCL alike (default: "
            "afmrl train-encoder's)",
            "check": "positive",
        },
    )
    encoder_batch_size: int | None = field(
        default=None,
        metadata={
            "help": "stage-1 batch size; None: afmrl train-encoder's",
            "check": "positive",
        },
    )
    extractor_steps: int | None = field(
        default=None,
        metadata={
            "help": "extractor SFT steps; None: afmrl train-extractor's epochs",
            "check": "positive",
        },
    )
    rar_steps: int | None = field(
        default=50,
        metadata={
            "help": "RAR (GRPO) steps; 50 (afmrl train-rar's default is 100) keeps the whole "
            "quickstart under 20 minutes on two CPU cores",
            "check": "positive",
        },
    )
    rar_batch_size: int | None = field(
        default=None,
        metadata={
            "help": "RAR completions per step; None: afmrl train-rar's",
            "check": "positive",
        },
    )
    rar_group_size: int | None = field(
        default=None,
        metadata={
            "help": "RAR completions per prompt; None: afmrl train-rar's",
            "check": "positive",
        },
    )
    rar_gallery_size: int | None = field(
        default=None,
        metadata={
            "help": "RAR reward gallery size; None: afmrl train-rar's, all train pairs",
            "check": "positive",
        },
    )
    cit_steps: int | None = field(
        default=30,
        metadata={
            "help": "CIT round's AGCL steps; 30 (afmrl cit's default is 30%% of stage 1's, 60) "
            "for the same 20-minute budget",
            "check": "positive",
        },
    )
    checkpoint_steps: int = field(
        default=50,
        metadata={
            "help": "Trainer checkpoint every N steps in the extractor SFT, encoder and RAR "
            "stages: a killed run resumes from the last one",
            "check": "positive",
        },
    )
    threads: int | None = field(
        default=None, metadata={"help": "torch CPU threads per stage", "check": "positive"}
    )

    @property
    def training_seeds(self) -> list[int]:
        return [self.seed + i for i in range(self.seeds)]


#: ``--smoke``: every stage at tiny sizes (CI checks that the whole paper runs, not its numbers).
SMOKE = {
    "products": 40,
    "encoder_steps": 3,
    "encoder_batch_size": 16,
    "extractor_steps": 3,
    "rar_steps": 2,
    "rar_batch_size": 8,
    "rar_group_size": 4,
    "rar_gallery_size": 24,
    "cit_steps": 2,
    "checkpoint_steps": 1,
}


def smoke_settings(settings: PipelineSettings) -> PipelineSettings:
    """``settings`` with the :data:`SMOKE` sizes where they are still at their defaults (a value
    given explicitly wins: ``--smoke --rar-steps 3``)."""
    defaults = PipelineSettings()
    tiny = {k: v for k, v in SMOKE.items() if getattr(settings, k) == getattr(defaults, k)}
    return replace(settings, **tiny)


#: Flags of :class:`PipelineSettings` read by the CLI, in ``--help`` order.
PIPELINE_FLAGS: tuple[str, ...] = (
    "products", "seed", "seeds", "encoder_steps", "encoder_batch_size", "extractor_steps",
    "rar_steps", "rar_batch_size", "rar_group_size", "rar_gallery_size", "cit_steps",
    "checkpoint_steps", "threads",
)  # fmt: skip
