"""RAR training: TRL's ``GRPOTrainer`` on the attribute extractor, rewarded by retrieval.

The policy is the AFMRL checkpoint's extractor, driven by TRL as a standard image-text-to-text
model: conversational prompts (:func:`modeling_afmrl.attributes.extractor_messages`, the prompt of
SFT and extraction, the title cut as extraction cuts it) with the listing photo in an ``image``
column, and the extractor's own processor as ``processing_class``. The encoder is frozen; the
reward (:class:`~trainers.rar.reward.RetrievalReward`) ranks with it.

:class:`RARTrainer` differs from ``GRPOTrainer`` in two ways:

* the reference model of the KL term (``beta > 0``) is a frozen copy of the policy it is given --
  the SFT extractor -- instead of a model reloaded from ``config._name_or_path`` (the extractor
  lives inside an AFMRL checkpoint, has no folder of its own, and the library never loads a
  checkpoint's remote code). With LoRA, TRL's own reference (adapters disabled) is used;
* generation time is logged (``rar/generation_seconds``) beside the reward's
  (``rar/reward_seconds``), for the step-time split of ``benchmarks/bench_rar.py``.

A frozen LLaVA-timm vision tower is served from the frozen-feature cache
(:mod:`trainers.feature_cache`) and shared with the reference copy, so each photo goes through the
CNN once. Checkpoints, ``resume_from_checkpoint`` and ``accelerate launch`` come from the
transformers ``Trainer``.
"""

from __future__ import annotations

import contextlib
import copy
import inspect
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from transformers import TrainerCallback
from transformers.trainer_callback import PrinterCallback
from trl import GRPOTrainer
from trl.trainer.utils import add_fused_lm_head, disable_dropout_in_model

from modeling_afmrl.attributes import extractor_messages
from modeling_afmrl.processing_afmrl import AFMRLProcessor, truncate_text

from ..extractor_sft.trainer import supports_feature_cache
from ..feature_cache import FrozenFeatureCache, last_stage_map, stage_map_output
from .arguments import LORA_AUTO_PARAMETERS
from .config import RARConfig
from .reward import PairRewardData, RetrievalReward, build_pair_reward

if TYPE_CHECKING:
    from datasets import Dataset

#: Titles are cut to the budget extraction uses (``AFMRLProcessor.extractor_inputs``).
TITLE_MAX_TOKENS: int = (
    inspect.signature(AFMRLProcessor.extractor_inputs).parameters["title_max_tokens"].default
)


def vision_tower(extractor: torch.nn.Module) -> torch.nn.Module | None:
    """The extractor's vision tower (LLaVA ``vision_tower``, Qwen2-VL ``visual``), if any."""
    inner = getattr(extractor, "model", extractor)
    for name in ("vision_tower", "visual"):
        if hasattr(inner, name):
            return getattr(inner, name)
    return None


def policy_parameters(extractor: torch.nn.Module) -> int:
    """Parameters of the extractor outside its vision tower (what RAR trains)."""
    vision = vision_tower(extractor)
    frozen = {id(p) for p in vision.parameters()} if vision is not None else set()
    return sum(p.numel() for p in extractor.parameters() if id(p) not in frozen)


def wants_lora(config: RARConfig, extractor: torch.nn.Module) -> bool:
    """``lora="auto"``: LoRA for a policy above :data:`LORA_AUTO_PARAMETERS` parameters."""
    if config.lora == "auto":
        return policy_parameters(extractor) > LORA_AUTO_PARAMETERS
    return config.lora == "on"


def rar_dataset(train: Dataset, rows: list[int], processor: AFMRLProcessor) -> Dataset:
    """TRL rows for ``train``'s ``rows``: ``prompt`` (the extractor's chat turn), ``image`` (the
    photo as extraction prepares it), ``title`` and ``listing_id`` (for the reward).

    Prompts are built on access (``with_transform``), so they are exactly
    :func:`~modeling_afmrl.attributes.extractor_messages` of the cut title.
    """
    from datasets import Image

    ds = train.select(rows).select_columns(["listing_id", "image", "title"])
    if not ds.features["image"].decode:
        ds = ds.cast_column("image", Image(decode=True))
    tokenizer = processor.extractor_processor.tokenizer

    def transform(batch: dict[str, list]) -> dict[str, list]:
        titles = ["" if t is None else str(t) for t in batch["title"]]
        return {
            "listing_id": batch["listing_id"],
            "image": processor.prepare_images(batch["image"]),
            "title": titles,
            "prompt": [
                extractor_messages(truncate_text(tokenizer, t, TITLE_MAX_TOKENS)) for t in titles
            ],
        }

    return ds.with_transform(transform)


class RARTrainer(GRPOTrainer):
    """``GRPOTrainer`` whose reference model is a frozen copy of the given (SFT) policy.

    ``shared_modules``: frozen modules the copy shares with the policy instead of duplicating
    (the vision tower). See the module docstring.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        reward_funcs: Any,
        args: RARConfig,
        train_dataset: Dataset,
        processing_class: Any,
        callbacks: list[TrainerCallback] | None = None,
        peft_config: Any = None,
        shared_modules: tuple[torch.nn.Module, ...] = (),
    ):
        kwargs = dict(
            model=model,
            reward_funcs=reward_funcs,
            train_dataset=train_dataset,
            processing_class=processing_class,
            callbacks=callbacks,
            peft_config=peft_config,
        )
        if args.beta == 0.0 or peft_config is not None:
            super().__init__(args=args, **kwargs)
            return
        # Copied before GRPOTrainer patches the policy's forward (its fused LM head).
        reference = copy.deepcopy(model, memo={id(m): m for m in shared_modules}).eval()
        for p in reference.parameters():
            p.requires_grad_(False)
        beta, args.beta = args.beta, 0.0  # GRPOTrainer would reload the policy from its path
        try:
            super().__init__(args=args, **kwargs)
        finally:
            args.beta = beta
        self.beta = beta
        if args.disable_dropout:
            disable_dropout_in_model(reference)
        add_fused_lm_head(
            reference, temperature=self.temperature, cast_lm_head_to_fp32=args.cast_lm_head_to_fp32
        )
        self.ref_model = self.accelerator.prepare_model(reference, evaluation_mode=True)

    def _generate(self, prompts: list):
        start = time.perf_counter()
        out = super()._generate(prompts)
        mode = "train" if self.model.training else "eval"
        self._metrics[mode]["rar/generation_seconds"].append(time.perf_counter() - start)
        return out


#: The logged values :class:`RARLog` keeps per step (TRL's and the reward's).
LOGGED = (
    "reward", "reward_std", "frac_reward_zero_std", "kl", "entropy", "completions/mean_length",
    "rar/valid_format", "rar/attribute_count", "rar/reciprocal_rank", "rar/generation_seconds",
    "rar/reward_seconds", "learning_rate", "grad_norm",
)  # fmt: skip


class RARLog(TrainerCallback):
    """Per-step history (mean reward, valid format, attribute count, KL, timings) and a line of
    progress per logging step. ``step_seconds`` is each optimizer step's wall time."""

    def __init__(self, progress: Callable[[str], None] | None = print):
        self.history: list[dict[str, float]] = []
        self.progress = progress
        self._t0 = 0.0
        self._last_step_seconds = float("nan")

    def on_step_begin(self, args, state, control, **kwargs):
        self._t0 = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        self._last_step_seconds = time.perf_counter() - self._t0

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not logs or "reward" not in logs:
            return
        entry = {"step": state.global_step, "step_seconds": self._last_step_seconds}
        entry.update({k: float(v) for k, v in logs.items() if k in LOGGED or k.startswith("rar/")})
        self.history.append(entry)
        if self.progress is not None:
            self.progress(
                f"[rar] step {state.global_step}/{state.max_steps} reward {entry['reward']:+.3f} "
                f"valid {entry.get('rar/valid_format', float('nan')):.2f} "
                f"attrs {entry.get('rar/attribute_count', float('nan')):.1f} "
                f"kl {entry.get('kl', float('nan')):.4f} ({entry['step_seconds']:.1f}s/step)"
            )


@dataclass
class RARResult:
    """What :func:`train_rar` returns."""

    history: list[dict[str, float]]
    global_step: int
    train_seconds: float
    num_queries: int
    gallery_size: int
    recall_k: int
    lora: bool
    sft_valid_format: float = float("nan")
    setup_seconds: float = 0.0
    gallery_encodes: int = 0
    settings: dict[str, Any] = field(default_factory=dict)


def query_rows(rows: list[int], fraction: float, seed: int) -> list[int]:
    """A seeded ``fraction`` of ``rows`` (all of them at 1)."""
    if fraction >= 1:
        return list(rows)
    rng = random.Random(f"afmrl-rar-queries:{seed}")
    return sorted(rng.sample(list(rows), max(1, round(fraction * len(rows)))))


def prepare_policy(
    extractor: torch.nn.Module, config: RARConfig
) -> tuple[torch.nn.Module | None, Any, FrozenFeatureCache | None]:
    """Make the extractor trainable for RAR: ``(frozen vision tower or None, peft LoraConfig or
    None, frozen-feature cache or None)``.

    Everything but a frozen vision tower trains (or LoRA adapters on the language model, see
    :func:`wants_lora`); a frozen LLaVA-timm tower is served from the feature cache.
    """
    vision = vision_tower(extractor)
    frozen = vision if vision is not None and not config.train_vision_tower else None
    for p in extractor.parameters():
        p.requires_grad_(True)
    if frozen is not None:
        for p in frozen.parameters():
            p.requires_grad_(False)
    peft_config = None
    if wants_lora(config, extractor):
        from peft import LoraConfig

        peft_config = LoraConfig(
            r=config.lora_r,
            lora_alpha=config.lora_alpha,
            lora_dropout=0.0,
            target_modules=list(config.lora_target_modules),
            exclude_modules=r".*(vision_tower|visual).*",
            task_type="CAUSAL_LM",
        )
    cache = None
    if frozen is not None and supports_feature_cache(extractor):
        cache = FrozenFeatureCache(
            frozen,
            keep=last_stage_map,
            rebuild=stage_map_output,
            tag=f"stage{extractor.config.vision_feature_layer}",
        )
    return frozen, peft_config, cache


def run_settings(config: RARConfig, reward: RetrievalReward, lora: bool) -> dict[str, Any]:
    """The settings a RAR run records beside its checkpoint."""
    return {
        "reward_mode": reward.mode,
        "recall_k": reward.k,
        "gain_metric": reward.gain_metric,
        "reward_positives": config.reward_positives,
        "format_penalty": reward.format_penalty,
        "num_generations": config.num_generations,
        "per_device_train_batch_size": config.per_device_train_batch_size,
        "max_completion_length": config.max_completion_length,
        "temperature": config.temperature,
        "beta": config.beta,
        "learning_rate": config.learning_rate,
        "loss_type": config.loss_type,
        "scale_rewards": config.scale_rewards,
        "max_steps": config.max_steps,
        "lora": lora,
        "seed": config.seed,
    }


def reward_from_config(
    model: Any,
    train: Dataset,
    config: RARConfig,
    cache_dir: str | None = None,
    show_progress: bool = False,
) -> tuple[RetrievalReward, PairRewardData]:
    """:func:`~trainers.rar.reward.build_pair_reward` with ``config``'s reward settings."""
    return build_pair_reward(
        model,
        train,
        mode=config.reward_mode,
        k=config.recall_k,
        recall_k_fraction=config.recall_k_fraction,
        gain_metric=config.gain_metric,
        format_penalty=config.format_penalty,
        depth=config.reward_depth,
        gallery_size=config.gallery_size,
        gallery_attributes_column=config.gallery_attributes_column,
        positives=config.reward_positives,
        batch_size=config.reward_batch_size,
        max_new_tokens=config.max_completion_length,
        cache_dir=cache_dir,
        seed=config.seed,
        show_progress=show_progress,
    )


def train_rar(
    model: Any,
    train: Dataset,
    config: RARConfig,
    *,
    reward: RetrievalReward | None = None,
    cache_dir: str | None = None,
    progress: Callable[[str], None] | None = print,
    resume_from_checkpoint: str | bool | None = None,
    show_progress: bool = False,
    callbacks: list[TrainerCallback] | None = None,
) -> RARResult:
    """Tune ``model.extractor`` in place with GRPO; the encoder stays as it is.

    ``model`` is an ``AFMRLModel`` with an extractor (the SFT warm-up's). ``reward`` defaults to
    :func:`~trainers.rar.reward.build_pair_reward` on ``train`` (the SFT attributes of its gallery
    cached in ``cache_dir``). ``callbacks`` are added to the Trainer's. Returns the per-step history
    (mean reward, valid format...).
    """
    t0 = time.perf_counter()
    extractor = model.extractor
    if extractor is None:
        raise ValueError("the model has no attribute extractor to tune")
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    info: PairRewardData | None = None
    if reward is None:
        # Under a multi-process launch the main process generates the SFT gallery attributes into
        # ``cache_dir``; the others then read them from there.
        with config.main_process_first(local=True, desc="the reward gallery"):
            reward, info = reward_from_config(model, train, config, cache_dir, show_progress)
        rows = info.query_rows
    else:
        ids = train["listing_id"]
        rows = [i for i, lid in enumerate(ids) if lid in reward.queries]
    rows = query_rows(rows, config.train_fraction, config.seed)
    reward.refresh()
    dataset = rar_dataset(train, rows, model.processor)
    if progress is not None:
        progress(
            f"[rar] {len(rows)} query listings, reward gallery {len(reward.gallery.ids)}, "
            f"mode {reward.mode} (k={reward.k}), setup {time.perf_counter() - t0:.0f}s"
        )

    frozen_vision, peft_config, cache = prepare_policy(extractor, config)
    lora = peft_config is not None
    if config.use_vllm:
        # TRL's vLLM engine builds the policy's architecture from its ``name_or_path`` and then
        # receives the current weights every step; the extractor inside an AFMRL checkpoint has
        # no folder of its own, so it gets one.
        policy_dir = Path(config.output_dir) / "vllm_policy"
        with config.main_process_first(local=True, desc="the vLLM policy folder"):
            if config.local_process_index == 0:  # one writer per machine
                extractor.save_pretrained(policy_dir)
                model.processor.extractor_processor.save_pretrained(policy_dir)
        extractor.config._name_or_path = str(policy_dir)
    log = RARLog(progress)
    extractor.train()
    trainer = RARTrainer(
        model=extractor,
        reward_funcs=[reward],
        args=config,
        train_dataset=dataset,
        processing_class=model.processor.extractor_processor,
        callbacks=[log, *(callbacks or [])],
        peft_config=peft_config,
        shared_modules=(frozen_vision,) if frozen_vision is not None else (),
    )
    if progress is not None:  # RARLog's line per step replaces the Trainer's printed log dicts
        trainer.remove_callback(PrinterCallback)
    setup = time.perf_counter() - t0
    t1 = time.perf_counter()
    with cache.attach() if cache is not None else contextlib.nullcontext():
        out = trainer.train(resume_from_checkpoint=resume_from_checkpoint)
    seconds = time.perf_counter() - t1
    if lora:
        trainer.model.merge_and_unload()
    extractor.eval()
    for p in extractor.parameters():
        p.requires_grad_(False)
    return RARResult(
        history=log.history,
        global_step=out.global_step,
        train_seconds=seconds,
        num_queries=len(rows),
        gallery_size=len(reward.gallery.ids),
        recall_k=reward.k,
        lora=lora,
        sft_valid_format=info.sft_valid_format if info is not None else float("nan"),
        setup_seconds=setup,
        gallery_encodes=reward.gallery_encodes,
        settings=run_settings(config, reward, lora),
    )


__all__ = [
    "LOGGED",
    "TITLE_MAX_TOKENS",
    "RARLog",
    "RARResult",
    "RARTrainer",
    "policy_parameters",
    "prepare_policy",
    "query_rows",
    "rar_dataset",
    "reward_from_config",
    "run_settings",
    "train_rar",
    "vision_tower",
    "wants_lora",
]
