"""SFT warm-up of the attribute extractor: (image, title) -> teacher attribute string.

Built on the transformers :class:`~transformers.Trainer`, so checkpoints, ``resume_from_checkpoint``,
``accelerate launch`` and LoRA (PEFT) come with it. The loss is the usual next-token cross-entropy
on the answer only (prompt, image and padding positions are ``-100``).

Two input paths, one model:

- **cached image tokens** (the embedded LLaVA-timm extractor, :mod:`trainers.feature_cache`): the
  frozen CNN's flattened stage map is computed once; every step trains the projector + decoder on
  it. The extractor's inner model is temporarily given :class:`CachedTokensLlavaModel` as its
  class, whose ``get_image_features`` accepts ``[B, T, C]`` tokens in place of pixels, so the
  ``Trainer`` still trains (and checkpoints) the real ``PreTrainedModel``.
- **pixels** (any ``AutoModelForImageTextToText``, e.g. a Qwen2-VL from the Hub): the processor
  builds the batch; ``lora_r > 0`` wraps the language model's linear layers with LoRA and merges
  them back at the end.

The prompt is :func:`modeling_afmrl.attributes.extractor_messages` (the one used by extraction,
RAR and the demo); the answer is the normalised attribute string followed by the chat's end token.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.utils.data import Dataset as TorchDataset
from transformers import Trainer, TrainerCallback, TrainingArguments

from modeling_afmrl.attributes import extractor_messages, parse_attributes, render_attributes
from modeling_afmrl.modeling_timm_llava import AFMRLLlavaModel

from .feature_cache import cache_image_tokens, supports_feature_cache

IGNORE_INDEX = -100


@dataclass
class ExtractorSFTConfig(TrainingArguments):
    """``TrainingArguments`` plus the extractor-SFT options (CPU-friendly defaults).

    Args:
        target_column: the training split's attribute column (the teacher's output).
        use_pos_view: also train on the second view of each listing (``pos_image``,
            ``pos_title``) with the same target: twice the (image, title) pairs.
        cache_features: train on cached frozen-tower tokens (LLaVA-timm extractor only).
        feature_cache_dir: where the token cache is kept between runs (default: no file).
        max_title_tokens: titles are cut to this many tokens.
        max_target_tokens: targets are cut to this many tokens (then the end token).
        train_vision_tower: unfreeze the vision tower (pixel path only; slow on CPU).
        lora_r: LoRA rank for the language model (0: full fine-tuning of projector + decoder).
    """

    target_column: str = "teacher_attributes"
    use_pos_view: bool = True
    cache_features: bool = True
    feature_cache_dir: str | None = None
    max_title_tokens: int = 64
    max_target_tokens: int = 96
    train_vision_tower: bool = False
    lora_r: int = 0
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    lora_target_modules: list[str] = field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj"]
    )

    def __post_init__(self):
        # CPU-first defaults unless the caller chose otherwise.
        if self.report_to is None or self.report_to == "all":
            self.report_to = "none"
        # The collators read "image" / "title" / "target", which no model forward takes.
        self.remove_unused_columns = False
        super().__post_init__()
        if self.lora_r < 0:
            raise ValueError(f"lora_r must be >= 0, got {self.lora_r}")


# --------------------------------------------------------------------------------------------
# cached-token path
# --------------------------------------------------------------------------------------------


class CachedTokensLlavaModel(AFMRLLlavaModel):
    """``AFMRLLlavaModel`` that also accepts precomputed image tokens ``[B, T, C]`` as pixels."""

    def get_image_features(self, pixel_values: torch.Tensor, *args, return_dict=None, **kwargs):
        if pixel_values.ndim != 3:
            return super().get_image_features(
                pixel_values, *args, return_dict=return_dict, **kwargs
            )
        from transformers.modeling_outputs import BaseModelOutputWithPooling

        tokens = pixel_values
        projected = self.multi_modal_projector(tokens)
        out = BaseModelOutputWithPooling(last_hidden_state=tokens, pooler_output=list(projected))
        return out if return_dict is not False else out.to_tuple()


class cached_tokens_mode:
    """Context manager: the extractor reads ``pixel_values`` of shape ``[B, T, C]`` as tokens."""

    def __init__(self, extractor):
        self.inner = extractor.model
        self.original = type(self.inner)

    def __enter__(self):
        self.inner.__class__ = CachedTokensLlavaModel
        return self

    def __exit__(self, *exc):
        self.inner.__class__ = self.original
        return False


def _answer_ids(tokenizer, target: str, max_tokens: int) -> list[int]:
    ids = tokenizer(target, add_special_tokens=False)["input_ids"][:max_tokens]
    return [*ids, tokenizer.eos_token_id]


def normalise_target(text: str) -> str:
    """The SFT answer for a teacher string: its pairs re-rendered in canonical form and order."""
    parsed = parse_attributes(text)
    return render_attributes(parsed.attributes) if parsed.attributes else ""


class CachedTokensDataset(TorchDataset):
    """Pre-tokenised (prompt + answer) rows over a ``[N, T, C]`` image-token tensor."""

    def __init__(self, processor, titles, targets, tokens: torch.Tensor, config):
        tok = processor.tokenizer
        image_token = processor.image_token
        num_tokens = tokens.shape[1]
        self.tokens = tokens
        self.rows: list[tuple[list[int], list[int]]] = []
        for title, target in zip(titles, targets, strict=True):
            prompt = processor.apply_chat_template(
                extractor_messages(_truncate(tok, title, config.max_title_tokens)),
                add_generation_prompt=True,
                tokenize=False,
            ).replace(image_token, image_token * num_tokens)
            prompt_ids = tok(prompt, add_special_tokens=False)["input_ids"]
            answer = _answer_ids(tok, target, config.max_target_tokens)
            self.rows.append((prompt_ids + answer, [IGNORE_INDEX] * len(prompt_ids) + answer))

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict:
        ids, labels = self.rows[i]
        return {"input_ids": ids, "labels": labels, "pixel_values": self.tokens[i]}


def _truncate(tokenizer, text: str, max_tokens: int) -> str:
    ids = tokenizer(str(text or ""), add_special_tokens=False)["input_ids"]
    return text if len(ids) <= max_tokens else tokenizer.decode(ids[:max_tokens])


@dataclass
class CachedTokensCollator:
    """Right-pads ids/labels; stacks the cached image tokens as ``pixel_values`` ``[B, T, C]``."""

    pad_token_id: int

    def __call__(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        width = max(len(r["input_ids"]) for r in rows)
        ids = torch.full((len(rows), width), self.pad_token_id, dtype=torch.long)
        labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):
            n = len(r["input_ids"])
            ids[i, :n] = torch.tensor(r["input_ids"])
            labels[i, :n] = torch.tensor(r["labels"])
            mask[i, :n] = 1
        pixels = torch.stack([r["pixel_values"] for r in rows])
        return {"input_ids": ids, "attention_mask": mask, "labels": labels, "pixel_values": pixels}


# --------------------------------------------------------------------------------------------
# pixel path (any image-text-to-text model)
# --------------------------------------------------------------------------------------------


class PixelDataset(TorchDataset):
    def __init__(self, images, titles, targets):
        self.images, self.titles, self.targets = images, titles, targets

    def __len__(self) -> int:
        return len(self.titles)

    def __getitem__(self, i: int) -> dict:
        return {"image": self.images[i], "title": self.titles[i], "target": self.targets[i]}


@dataclass
class PixelCollator:
    """Runs the extractor's processor on prompt + answer; labels cover the answer tokens only."""

    processor: Any
    config: ExtractorSFTConfig

    def __call__(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        proc, tok = self.processor, self.processor.tokenizer
        answers = [_answer_ids(tok, r["target"], self.config.max_target_tokens) for r in rows]
        texts = [
            proc.apply_chat_template(
                extractor_messages(_truncate(tok, r["title"], self.config.max_title_tokens)),
                add_generation_prompt=True,
                tokenize=False,
            )
            + tok.decode(a, skip_special_tokens=False)
            for r, a in zip(rows, answers, strict=True)
        ]
        images = [r["image"].convert("RGB") for r in rows]
        batch = proc(
            text=texts, images=images, padding=True, padding_side="right", return_tensors="pt"
        )
        labels = torch.full_like(batch["input_ids"], IGNORE_INDEX)
        lengths = batch["attention_mask"].sum(1).tolist()
        for i, (n, a) in enumerate(zip(lengths, answers, strict=True)):
            labels[i, n - len(a) : n] = batch["input_ids"][i, n - len(a) : n]
        batch["labels"] = labels
        return dict(batch)


# --------------------------------------------------------------------------------------------
# training
# --------------------------------------------------------------------------------------------


class _LossLog(TrainerCallback):
    """Keeps (step, loss) pairs and prints one line per logging step."""

    def __init__(self, progress: Callable[[str], None] | None):
        self.history: list[tuple[int, float]] = []
        self.progress = progress
        self.t0 = time.perf_counter()

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "loss" in logs:
            self.history.append((state.global_step, float(logs["loss"])))
            if self.progress is not None:
                self.progress(
                    f"[sft] step {state.global_step}/{state.max_steps} loss {logs['loss']:.4f} "
                    f"lr {logs.get('learning_rate', 0):.2e} ({time.perf_counter() - self.t0:.0f}s)"
                )


@dataclass
class SFTResult:
    """What :func:`train_extractor` returns."""

    losses: list[tuple[int, float]]
    train_seconds: float
    cache_seconds: float
    num_examples: int
    global_step: int


def training_pairs(
    train_split, config: ExtractorSFTConfig
) -> tuple[list[Any], list[str], list[str], int]:
    """(images, titles, targets, skipped) from a training split; rows without a target are skipped."""
    if config.target_column not in train_split.column_names:
        raise ValueError(
            f"the training split has no {config.target_column!r} column (columns: "
            f"{train_split.column_names}); run `afmrl extract` with a teacher first or pass "
            "--target-column"
        )
    views = [("image", "title")]
    if config.use_pos_view and {"pos_image", "pos_title"} <= set(train_split.column_names):
        views.append(("pos_image", "pos_title"))
    targets = [normalise_target(t) for t in train_split[config.target_column]]
    keep = [i for i, t in enumerate(targets) if t]
    images: list[Any] = []
    titles: list[str] = []
    answers: list[str] = []
    for image_col, title_col in views:
        col_images, col_titles = train_split[image_col], train_split[title_col]
        images += [col_images[i] for i in keep]
        titles += [str(col_titles[i] or "") for i in keep]
        answers += [targets[i] for i in keep]
    return images, titles, answers, len(targets) - len(keep)


def train_extractor(
    extractor,
    processor,
    train_split,
    config: ExtractorSFTConfig,
    progress: Callable[[str], None] | None = print,
    resume_from_checkpoint: str | bool | None = None,
) -> SFTResult:
    """Fine-tune ``extractor`` in place on ``train_split`` (a ``datasets.Dataset``).

    ``processor`` is the extractor's own processor (``LlavaProcessor``, ``Qwen2VLProcessor``...).
    With ``config.cache_features`` and a LLaVA-timm extractor the frozen tower runs once.
    """
    images, titles, targets, skipped = training_pairs(train_split, config)
    if not titles:
        raise ValueError(f"no training row has a usable {config.target_column!r} value")
    if progress is not None:
        progress(f"[sft] {len(titles)} (image, title) -> attributes pairs ({skipped} rows skipped)")
    use_cache = config.cache_features and supports_feature_cache(extractor)
    if config.cache_features and not use_cache and progress is not None:
        progress(f"[sft] {type(extractor).__name__}: no cacheable tower, training on pixels")

    for p in extractor.parameters():
        p.requires_grad_(True)
    vision = _vision_tower(extractor)
    if vision is not None and (use_cache or not config.train_vision_tower):
        for p in vision.parameters():
            p.requires_grad_(False)

    t0 = time.perf_counter()
    if use_cache:
        tokens = cache_image_tokens(
            extractor,
            processor.image_processor,
            images,
            cache_dir=config.feature_cache_dir,
            key=f"{train_split._fingerprint}|{config.use_pos_view}",
        )
        dataset = CachedTokensDataset(processor, titles, targets, tokens, config)
        collator = CachedTokensCollator(processor.tokenizer.pad_token_id)
    else:
        dataset = PixelDataset(images, titles, targets)
        collator = PixelCollator(processor, config)
    cache_seconds = time.perf_counter() - t0
    if progress is not None and use_cache:
        progress(f"[sft] cached image tokens {tuple(tokens.shape)} in {cache_seconds:.0f}s")

    model = extractor
    if config.lora_r > 0:
        from peft import LoraConfig, get_peft_model

        lora = LoraConfig(
            r=config.lora_r,
            lora_alpha=config.lora_alpha,
            lora_dropout=config.lora_dropout,
            target_modules=list(config.lora_target_modules),
            exclude_modules=r".*(vision_tower|visual).*",
            task_type="CAUSAL_LM",
        )
        model = get_peft_model(extractor, lora)

    log = _LossLog(progress)
    trainer = Trainer(
        model=model,
        args=config,
        train_dataset=dataset,
        data_collator=collator,
        callbacks=[log],
    )
    t1 = time.perf_counter()
    if use_cache:
        with cached_tokens_mode(extractor):
            out = trainer.train(resume_from_checkpoint=resume_from_checkpoint)
    else:
        out = trainer.train(resume_from_checkpoint=resume_from_checkpoint)
    train_seconds = time.perf_counter() - t1
    if config.lora_r > 0:
        model.merge_and_unload()
    extractor.eval()
    for p in extractor.parameters():
        p.requires_grad_(False)
    return SFTResult(log.history, train_seconds, cache_seconds, len(dataset), out.global_step)


def _vision_tower(extractor) -> torch.nn.Module | None:
    inner = getattr(extractor, "model", extractor)
    for name in ("vision_tower", "visual"):
        if hasattr(inner, name):
            return getattr(inner, name)
    return None


def sft_loss(extractor, processor, images: Sequence[Any], titles, targets, config) -> float:
    """Mean answer-token cross-entropy of ``extractor`` on some pairs (pixel path; for checks)."""
    batch = PixelCollator(processor, config)(
        [
            {"image": im, "title": t, "target": normalise_target(y) or y}
            for im, t, y in zip(images, titles, targets, strict=True)
        ]
    )
    extractor.eval()
    with torch.no_grad():
        loss = extractor(**batch).loss
    return float(loss) if math.isfinite(float(loss)) else float("inf")
