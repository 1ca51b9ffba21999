"""AGCL training (AFMRL stage 1): ``AGCLConfig`` + ``AGCLTrainer``, a ``transformers.Trainer``.

Each training row is one listing seen twice: ``image``/``title`` and ``pos_image``/``pos_title`` (two
photos and titles of the same listing), or -- for bring-your-own data without ``pos_*`` columns -- a
second view made by augmentation (random resized crop + colour jitter; same title). The collator
runs both views through ``AFMRLProcessor`` as one batch of ``2B`` listings, so the model is called
once per step (DDP needs one forward per backward); rows ``:B`` are the queries, ``B:`` the
candidates. Attributes can be appended to the listing text (``text_attributes_column``) and, separately,
feed the loss (``loss_attributes_column``): BM25 hard-negative weights and the false-negative filter
(:mod:`trainers.agcl_loss`). Under ``torchrun`` / ``accelerate launch`` the loss sees the global batch
(:mod:`trainers.distributed`).

What is trained (see :func:`configure_trainable`): dual encoder -- the projections, fusion and logit
scale always, plus the last ``train_text_layers`` text layers and ``train_vision_blocks`` vision blocks
(optionally LoRA on the text tower); a fully frozen vision tower's pooled features are memoised by
image content (:class:`FrozenTowerCache`), so each training image goes through it once. VLM encoder
-- LoRA (``peft``) on its language model, plus the projection and logit scale. The extractor is
always frozen. BatchNorm layers stay in eval mode (a frozen tower's statistics never move, and small
contrastive batches make poor statistics).

The final model is saved with ``save_pretrained`` (LoRA merged) into ``output_dir``: a checkpoint
``AutoModel.from_pretrained(..., trust_remote_code=True)`` and ``afmrl evaluate`` load directly.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import Trainer, TrainingArguments
from transformers.modeling_outputs import BaseModelOutputWithPooling
from transformers.utils import logging

from modeling_afmrl.attributes import BM25Statistics, attribute_terms, bm25_statistics

from .agcl_loss import (
    FALSE_NEGATIVE_FILTERS,
    LOSSES,
    WEIGHTINGS,
    AGCLLoss,
    AGCLLossOutput,
    attribute_dict,
    masked_pairs,
)
from .batch_sampler import BATCH_SAMPLERS, ListingBatchSampler
from .distributed import gather_embeddings_and_attributes, gather_objects, is_distributed

logger = logging.get_logger(__name__)

BM25_STATISTICS = ("batch", "corpus")
#: File (in ``output_dir``) where ``log_masked_pairs`` writes each step's batch and masked pairs.
MASKED_PAIRS_FILE = "masked_pairs.jsonl"
#: Parameters trained at ``head_learning_rate``: freshly initialised layers on top of the towers.
HEAD_PARAMETERS = (
    "vision_projection",
    "text_projection",
    "vlm_projection",
    "fusion",
    "logit_scale",
)


# --------------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------------


@dataclass
class AGCLConfig(TrainingArguments):
    r"""Configuration of [`AGCLTrainer`]: `TrainingArguments` plus the AGCL settings.

    Loss:
        loss (`str`, defaults to `"agcl"`): `"agcl"` or `"infonce"` (plain CLIP loss).
        weighting (`str`, *optional*): `"bm25"` or `"none"`; defaults to `"bm25"` for agcl.
        false_negatives (`str`, *optional*): `"margin"`, `"attributes"`, `"both"` or `"none"`;
            defaults to `"both"` for agcl.
        delta (`float`): margin of the margin filter (cosine similarity).
        attribute_overlap (`float`): share of keys two listings must both state for the
            attribute filter.
        bm25_statistics (`str`): `"batch"` or `"corpus"` (the training column's statistics).

    Data:
        text_attributes_column (`str`, *optional*): column whose attributes are appended to the
            listing text (`None`: titles only).
        loss_attributes_column (`str`, *optional*): column the loss reads attributes from;
            defaults to `text_attributes_column`, else `teacher_attributes` when the data has it.
        image_column, title_column, pos_image_column, pos_title_column (`str`): column names.
        augment_second_view (`bool`, *optional*): make the second view by augmentation; defaults
            to True exactly when the data has no `pos_image_column`.
        batch_sampler (`str`): `"random"` or `"attributes"` (see `trainers.batch_sampler`).

    Model:
        train_vision_blocks / train_text_layers (`int`): how many of the last vision blocks / text
            layers of a dual encoder are trained (`-1`: the whole tower, `0`: frozen).
        head_learning_rate (`float`, *optional*): learning rate of the projections, fusion and logit
            scale (default: `learning_rate`).
        use_lora (`bool`, *optional*): LoRA on the encoder's language model; defaults to True for
            the vlm encoder, False for the dual one (whose text tower it then adapts).
        lora_r, lora_alpha, lora_dropout: LoRA settings.
        cache_frozen_features (`bool`): memoise a fully frozen vision tower by image content.
        feature_cache_dir (`str`, *optional*): keep those features on disk here, shared by runs.
        matryoshka (`bool`): average the loss over the model's Matryoshka dims (as `forward` does).
        log_masked_pairs (`bool`): write each step's listing ids and masked pairs to
            `output_dir/masked_pairs.jsonl` (for an offline audit of the filter).
    """

    loss: str = field(default="agcl", metadata={"help": f"one of {LOSSES}"})
    weighting: str | None = field(default=None, metadata={"help": f"one of {WEIGHTINGS}"})
    false_negatives: str | None = field(
        default=None, metadata={"help": f"one of {FALSE_NEGATIVE_FILTERS}"}
    )
    delta: float = field(default=0.1, metadata={"help": "margin filter: s_ij > s_ii + delta"})
    attribute_overlap: float = field(
        default=0.8, metadata={"help": "attribute filter: share of keys both listings state"}
    )
    bm25_statistics: str = field(default="batch", metadata={"help": f"one of {BM25_STATISTICS}"})
    text_attributes_column: str | None = None
    loss_attributes_column: str | None = None
    image_column: str = "image"
    title_column: str = "title"
    pos_image_column: str = "pos_image"
    pos_title_column: str = "pos_title"
    augment_second_view: bool | None = None
    batch_sampler: str = field(default="random", metadata={"help": f"one of {BATCH_SAMPLERS}"})
    train_vision_blocks: int = 0
    train_text_layers: int = 0
    head_learning_rate: float | None = 1e-3
    use_lora: bool | None = None
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    cache_frozen_features: bool = True
    feature_cache_dir: str | None = None
    matryoshka: bool = True
    log_masked_pairs: bool = False

    # TrainingArguments defaults that suit contrastive training.
    learning_rate: float = 5e-5
    per_device_train_batch_size: int = 64
    remove_unused_columns: bool = False
    dataloader_drop_last: bool = True
    ddp_find_unused_parameters: bool | None = False
    logging_steps: float = 10
    save_steps: float = 50
    save_total_limit: int | None = 2
    warmup_steps: float = 0.1
    weight_decay: float = 0.01
    report_to: str | list[str] | None = "none"

    def __post_init__(self):
        super().__post_init__()
        _check_choice("loss", self.loss, LOSSES)
        if self.weighting is not None:
            _check_choice("weighting", self.weighting, WEIGHTINGS)
        if self.false_negatives is not None:
            _check_choice("false_negatives", self.false_negatives, FALSE_NEGATIVE_FILTERS)
        _check_choice("bm25_statistics", self.bm25_statistics, BM25_STATISTICS)
        _check_choice("batch_sampler", self.batch_sampler, BATCH_SAMPLERS)
        if not 0.0 <= self.attribute_overlap <= 1.0:
            raise ValueError(f"attribute_overlap must be in [0, 1], got {self.attribute_overlap}")
        for name in ("train_vision_blocks", "train_text_layers"):
            if getattr(self, name) < -1:
                raise ValueError(f"{name} must be -1 (all), 0 (frozen) or a positive count")
        if not self.dataloader_drop_last:
            raise ValueError(
                "AGCL needs dataloader_drop_last=True: every process must hold a full batch"
            )
        launched = int(os.environ.get("WORLD_SIZE", "1"))
        if launched > 1 and self.world_size != launched:
            # transformers treats a GPU-less torchrun launch as N independent runs unless use_cpu.
            raise ValueError(
                f"launched with WORLD_SIZE={launched} but the Trainer sees {self.world_size} "
                "process(es): on CPU set use_cpu=True so that the processes train together"
            )

    def build_loss(self, statistics: BM25Statistics | None = None) -> AGCLLoss:
        """The :class:`AGCLLoss` these settings describe."""
        return AGCLLoss(
            self.loss,
            weighting=self.weighting,
            false_negatives=self.false_negatives,
            delta=self.delta,
            attribute_overlap=self.attribute_overlap,
            bm25_statistics=statistics,
        )


def _check_choice(name: str, value: Any, choices: Sequence[str]) -> None:
    if value not in choices:
        raise ValueError(f"AGCLConfig.{name} must be one of {tuple(choices)}, got {value!r}")


# --------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------


class SecondViewAugmentation:
    """Random resized crop (same output size) + colour jitter: the second view of a listing whose
    data has only one photo. Draws from torch's global RNG, which the Trainer checkpoints."""

    def __init__(self, scale: tuple[float, float] = (0.6, 1.0), jitter: float = 0.3):
        from torchvision.transforms import v2

        self.scale = scale
        self.jitter = v2.ColorJitter(jitter, jitter, jitter, hue=0.05)
        self._v2 = v2

    def __call__(self, image):
        crop = self._v2.RandomResizedCrop((image.height, image.width), scale=self.scale)
        return self.jitter(crop(image))


class AGCLCollator:
    """Rows -> processor inputs for ``2B`` listings (query views then candidate views), plus
    ``attribute_texts`` (for the loss; ``None`` without a loss attribute column) and ``listing_ids``.

    Args:
        processor: the model's ``AFMRLProcessor``.
        text_attributes_column: attributes appended to both views' text (``None``: titles only).
        loss_attributes_column: attributes handed to the loss.
        augment: make the second view by augmentation instead of reading the ``pos_*`` columns.
    """

    def __init__(
        self,
        processor,
        text_attributes_column: str | None = None,
        loss_attributes_column: str | None = None,
        image_column: str = "image",
        title_column: str = "title",
        pos_image_column: str = "pos_image",
        pos_title_column: str = "pos_title",
        augment: bool = False,
        augmentation: SecondViewAugmentation | None = None,
    ):
        self.processor = processor
        self.text_attributes_column = text_attributes_column
        self.loss_attributes_column = loss_attributes_column
        self.image_column, self.title_column = image_column, title_column
        self.pos_image_column, self.pos_title_column = pos_image_column, pos_title_column
        self.augment = augment
        self.augmentation = augmentation or (SecondViewAugmentation() if augment else None)

    def __call__(self, rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        if not rows:
            raise ValueError("AGCLCollator got an empty batch")
        images = [self._get(r, self.image_column) for r in rows]
        titles = [self._get(r, self.title_column) or "" for r in rows]
        if self.augment:
            pos_images = [
                self.augmentation(self.processor.prepare_images([im])[0]) for im in images
            ]
            pos_titles = titles
        else:
            pos_images = [self._get(r, self.pos_image_column) for r in rows]
            pos_titles = [
                r.get(self.pos_title_column) or t for r, t in zip(rows, titles, strict=True)
            ]
        attributes = None
        if self.text_attributes_column is not None:
            attributes = [_as_text(self._get(r, self.text_attributes_column)) for r in rows] * 2
        batch = dict(
            self.processor(
                images=images + pos_images,
                text=titles + pos_titles,
                attributes=attributes,
                return_tensors="pt",
            )
        )
        batch["attribute_texts"] = (
            [_as_text(self._get(r, self.loss_attributes_column)) for r in rows]
            if self.loss_attributes_column is not None
            else None
        )
        batch["listing_ids"] = [str(r.get("listing_id", "")) for r in rows]
        return batch

    @staticmethod
    def _get(row: Mapping[str, Any], column: str) -> Any:
        if column not in row:
            raise KeyError(
                f"training row has no column {column!r} (columns: {sorted(row)}); map yours with "
                "the AGCLConfig *_column settings"
            )
        return row[column]


def _as_text(value: Any) -> str:
    """An attribute cell (string, dict or None) as an attribute string."""
    if value is None:
        return ""
    if isinstance(value, Mapping):
        from modeling_afmrl.attributes import render_attributes

        return render_attributes(value)
    return str(value)


def resolve_columns(config: AGCLConfig, column_names: Sequence[str]) -> dict[str, Any]:
    """Check the training columns against the config; returns the columns to keep and the resolved
    ``loss_attributes_column`` / ``augment`` settings. Errors name the missing column."""
    names = set(column_names)
    for name in (config.image_column, config.title_column):
        if name not in names:
            raise ValueError(f"training data has no {name!r} column (columns: {sorted(names)})")
    augment = config.augment_second_view
    if augment is None:
        augment = config.pos_image_column not in names
    if not augment and config.pos_image_column not in names:
        raise ValueError(
            f"training data has no {config.pos_image_column!r} column for the second view "
            f"(columns: {sorted(names)}); set augment_second_view=True to make it by augmentation"
        )
    text_col = config.text_attributes_column
    if text_col is not None and text_col not in names:
        raise ValueError(
            f"attribute column {text_col!r} (text_attributes_column) is not in the training data "
            f"(columns: {sorted(names)})"
        )
    loss_col = config.loss_attributes_column
    if loss_col is None:
        loss_col = text_col or ("teacher_attributes" if "teacher_attributes" in names else None)
    elif loss_col not in names:
        raise ValueError(
            f"attribute column {loss_col!r} (loss_attributes_column) is not in the training data "
            f"(columns: {sorted(names)})"
        )
    loss = config.build_loss()
    if loss.needs_attributes and loss_col is None:
        raise ValueError(
            f"loss={config.loss!r} with weighting={loss.weighting!r} and false_negatives="
            f"{loss.false_negatives!r} needs attributes, and the training data has no "
            "teacher_attributes column: set loss_attributes_column, or use weighting='none' "
            "with false_negatives='margin' or 'none'"
        )
    if config.batch_sampler == "attributes" and loss_col is None:
        raise ValueError("batch_sampler='attributes' needs an attribute column")
    keep = [config.image_column, config.title_column, text_col, loss_col, "listing_id"]
    if not augment:
        keep += [config.pos_image_column, config.pos_title_column]
    return {
        "keep": [c for c in dict.fromkeys(keep) if c is not None and c in names],
        "loss_attributes_column": loss_col,
        "augment": augment,
    }


# --------------------------------------------------------------------------------------------
# What is trained
# --------------------------------------------------------------------------------------------


def tower_units(tower: nn.Module) -> list[nn.Module]:
    """A tower's blocks from input to output, the granularity ``train_*`` counts in.

    timm CNNs: stem, every block of every stage, then the head conv; transformers encoders:
    embeddings, every layer, then the final norm. Empty when the layout is unknown (the tower is
    then trained whole or not at all)."""
    timm_model = getattr(tower, "timm_model", None)
    if timm_model is not None and hasattr(timm_model, "blocks"):
        stem = [m for m in (getattr(timm_model, n, None) for n in ("conv_stem", "bn1")) if m]
        head = [m for m in (getattr(timm_model, n, None) for n in ("conv_head", "bn2")) if m]
        blocks = [
            block
            for stage in timm_model.blocks
            for block in (stage if isinstance(stage, nn.Sequential) else [stage])
        ]
        return [nn.ModuleList(stem), *blocks, nn.ModuleList(head)]
    for owner in (tower, getattr(tower, "vision_model", None), getattr(tower, "text_model", None)):
        if owner is None:
            continue
        encoder = getattr(owner, "encoder", None)
        layers = getattr(encoder, "layer", None) or getattr(encoder, "layers", None)
        if layers is not None:
            first = [owner.embeddings] if hasattr(owner, "embeddings") else []
            last = [
                m
                for m in (getattr(owner, n, None) for n in ("post_layernorm", "final_layer_norm"))
                if m is not None
            ]
            return [*first, *layers, *last]
    return []


def _set_trainable_tail(tower: nn.Module, count: int) -> list[nn.Module]:
    """Train the last ``count`` units of ``tower`` (-1: every unit); returns the frozen modules."""
    if count == 0:
        tower.requires_grad_(False)
        return [tower]
    units = tower_units(tower)
    if count < 0 and not units:
        tower.requires_grad_(True)
        return []
    if not units:
        logger.warning("unknown tower layout (%s): training it whole", type(tower).__name__)
        tower.requires_grad_(True)
        return []
    # Only the units: parameters outside them (a BERT pooler, a classifier) are unused by the
    # encoder and would get no gradient (DDP refuses that with find_unused_parameters=False).
    tower.requires_grad_(False)
    frozen = units[: max(0, len(units) - count)] if count > 0 else []
    for unit in units[len(frozen) :]:
        unit.requires_grad_(True)
    return frozen


def configure_trainable(model, config: AGCLConfig):
    """Freeze / unfreeze / LoRA-wrap ``model`` as ``config`` says.

    Returns ``(model, frozen_modules)``: the model to train (a ``PeftModel`` when LoRA is used) and
    the modules kept in eval mode during training (frozen towers and units, the extractor)."""
    model.requires_grad_(False)
    frozen: list[nn.Module] = []
    if getattr(model, "extractor", None) is not None:
        frozen.append(model.extractor)
    is_vlm = model.config.encoder_type == "vlm"
    use_lora = config.use_lora if config.use_lora is not None else is_vlm
    if is_vlm:
        if not use_lora:
            model.vlm.requires_grad_(True)
    else:
        frozen += _set_trainable_tail(model.vision_model, config.train_vision_blocks)
        if not use_lora:
            frozen += _set_trainable_tail(model.text_model, config.train_text_layers)
    for name in HEAD_PARAMETERS:
        part = getattr(model, name, None)
        if isinstance(part, (nn.Parameter, nn.Module)):
            part.requires_grad_(True)
    if use_lora:
        from peft import LoraConfig, get_peft_model

        heads = [n for n, p in model.named_parameters() if p.requires_grad]
        pattern = re.compile(model.encoder_lora_target_modules())
        # Not the text tower's pooler: unused by the encoder's pooling, it would get no gradient.
        targets = [
            n for n, _ in model.named_modules() if pattern.fullmatch(n) and ".pooler." not in n
        ]
        lora = LoraConfig(
            r=config.lora_r,
            lora_alpha=config.lora_alpha,
            lora_dropout=config.lora_dropout,
            target_modules=targets,
        )
        model = get_peft_model(model, lora)
        base = model.get_base_model()
        for name, param in base.named_parameters():
            if name in heads:
                param.requires_grad_(True)
    return model, frozen


class FrozenTowerCache:
    """Memoise a frozen tower's pooled output by the content of its input pixels.

    Installed as the tower's ``forward`` (an instance attribute: the module tree and state dict are
    unchanged, and DDP still sees one forward); :meth:`remove` restores it. Valid only while the
    tower is frozen and in eval mode, which is how :class:`AGCLTrainer` uses it. With ``directory``
    the features persist in ``directory/<tower fingerprint>.safetensors`` (loaded here, written by
    :meth:`save`), so runs that share a frozen tower (seeds, losses, evaluation) compute each image
    once; the fingerprint covers the tower's weights, the key the exact pixel values.
    """

    def __init__(self, tower: nn.Module, directory: str | os.PathLike | None = None):
        self.tower = tower
        self.store: dict[bytes, torch.Tensor] = {}
        self.hits = self.misses = 0
        self.path = None
        self._saved = 0
        if directory is not None:
            self.path = Path(directory) / f"{module_fingerprint(tower)[:32]}.safetensors"
            if self.path.is_file():
                from safetensors.torch import load_file

                self.store = {bytes.fromhex(k): v for k, v in load_file(self.path).items()}
                self._saved = len(self.store)
        tower.forward = self

    def __call__(self, pixel_values: torch.Tensor, **kwargs) -> BaseModelOutputWithPooling:
        rows = pixel_values.detach().to("cpu", torch.float32).contiguous()
        keys = [hashlib.blake2b(r.numpy().tobytes(), digest_size=16).digest() for r in rows]
        missing = list(dict.fromkeys(k for k in keys if k not in self.store))
        self.misses += len(missing)
        self.hits += len(keys) - len(missing)
        if missing:
            first = {k: keys.index(k) for k in missing}
            index = torch.tensor([first[k] for k in missing], device=pixel_values.device)
            with torch.no_grad():
                out = type(self.tower).forward(
                    self.tower, pixel_values=pixel_values.index_select(0, index), **kwargs
                )
            pooled = out.pooler_output
            if pooled is None:
                hidden = out.last_hidden_state
                pooled = hidden.flatten(2).mean(-1) if hidden.ndim == 4 else hidden.mean(dim=1)
            for k, p in zip(missing, pooled.detach(), strict=True):
                self.store[k] = p.clone()
        pooled = torch.stack([self.store[k] for k in keys]).to(pixel_values.device)
        return BaseModelOutputWithPooling(last_hidden_state=None, pooler_output=pooled)

    def save(self) -> None:
        """Write the features to ``directory`` (no-op without one, or when nothing is new)."""
        if self.path is None or len(self.store) == self._saved:
            return
        from safetensors.torch import save_file

        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(f".{os.getpid()}.tmp")
        save_file({k.hex(): v.contiguous() for k, v in self.store.items()}, str(tmp))
        os.replace(tmp, self.path)
        self._saved = len(self.store)

    def remove(self, save: bool = True) -> None:
        """Restore the tower's own ``forward`` (saving first) and drop the in-memory features."""
        if save:
            self.save()
        if self.tower.__dict__.get("forward") is self:
            del self.tower.forward
        self.store.clear()


def module_fingerprint(module: nn.Module) -> str:
    """sha256 over a module's state dict (names, dtypes, shapes, values)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        t = tensor.detach().to("cpu").contiguous()
        digest.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


# --------------------------------------------------------------------------------------------
# The loss step
# --------------------------------------------------------------------------------------------


def base_afmrl_model(model: nn.Module) -> nn.Module:
    """The ``AFMRLModel`` under DDP / ``torch.compile`` / ``PeftModel`` wrappers."""
    while True:
        if hasattr(model, "module") and isinstance(model.module, nn.Module):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        elif hasattr(model, "get_base_model"):
            model = model.get_base_model()
        else:
            return model


def contrastive_step(
    model: nn.Module,
    inputs: Mapping[str, Any],
    loss_fn: AGCLLoss,
    matryoshka: bool = True,
) -> tuple[AGCLLossOutput, list[str] | None]:
    """One forward of ``2B`` listings and the loss of the global batch.

    ``model`` may be wrapped (DDP, PEFT). Returns the loss output and, in distributed runs too, the
    global batch's listing ids (``None`` when the inputs carry none)."""
    inputs = dict(inputs)
    attributes = inputs.pop("attribute_texts", None)
    listing_ids = inputs.pop("listing_ids", None)
    out = model(**inputs, return_loss=False)
    emb = out.embeddings
    half = emb.shape[0] // 2
    if emb.shape[0] != 2 * half:
        raise ValueError(f"expected 2B listings (two views), got {emb.shape[0]}")
    payload = list(zip(attributes or [None] * half, listing_ids or [None] * half, strict=True))
    query, candidate, payload = gather_embeddings_and_attributes(emb[:half], emb[half:], payload)
    base = base_afmrl_model(model)
    scale = base.logit_scale.exp().clamp(max=100.0)
    dims = base.config.matryoshka_dims if matryoshka else None
    global_attributes = [a for a, _ in payload] if attributes is not None else None
    result = loss_fn(query, candidate, global_attributes, logit_scale=scale, matryoshka_dims=dims)
    ids = [i for _, i in payload] if listing_ids is not None else None
    return result, ids


# --------------------------------------------------------------------------------------------
# The trainer
# --------------------------------------------------------------------------------------------


class AGCLTrainer(Trainer):
    """``transformers.Trainer`` for AGCL / InfoNCE training of an ``AFMRLModel``.

    Args:
        model: an ``AFMRLModel`` (with ``model.processor``).
        args: an :class:`AGCLConfig`.
        train_dataset: a ``datasets.Dataset`` in the AFMRL data contract (``train`` split).
        processing_class: the ``AFMRLProcessor`` (default: ``model.processor``).
        data_collator: default :class:`AGCLCollator` built from ``args``.
        loss_fn: default ``args.build_loss(...)``.
    """

    def __init__(
        self,
        model,
        args: AGCLConfig,
        train_dataset=None,
        processing_class=None,
        data_collator=None,
        loss_fn: AGCLLoss | None = None,
        callbacks=None,
        **kwargs,
    ):
        if not isinstance(args, AGCLConfig):
            raise TypeError(f"args must be an AGCLConfig, got {type(args).__name__}")
        if train_dataset is None:
            raise ValueError("AGCLTrainer needs a train_dataset")
        processor = processing_class if processing_class is not None else model.processor
        columns = resolve_columns(args, train_dataset.column_names)
        train_dataset = train_dataset.select_columns(columns["keep"])
        self.loss_attributes_column = columns["loss_attributes_column"]
        self._attribute_dicts = None
        statistics = None
        if self.loss_attributes_column is not None:
            cells = [_as_text(v) for v in train_dataset[self.loss_attributes_column]]
            self._attribute_dicts = [attribute_dict(c) for c in cells]
            if args.bm25_statistics == "corpus":
                statistics = bm25_statistics(attribute_terms(c) for c in cells)
        self.loss_fn = loss_fn if loss_fn is not None else args.build_loss(statistics)
        if data_collator is None:
            data_collator = AGCLCollator(
                processor,
                text_attributes_column=args.text_attributes_column,
                loss_attributes_column=self.loss_attributes_column
                if self.loss_fn.needs_attributes or args.log_masked_pairs
                else None,
                image_column=args.image_column,
                title_column=args.title_column,
                pos_image_column=args.pos_image_column,
                pos_title_column=args.pos_title_column,
                augment=columns["augment"],
            )
        model, self._frozen_modules = configure_trainable(model, args)
        base = base_afmrl_model(model)
        base.processor = processor
        self._feature_cache = None
        if (
            args.cache_frozen_features
            and base.config.encoder_type == "dual"
            and not any(p.requires_grad for p in base.vision_model.parameters())
            and not columns["augment"]
        ):
            self._feature_cache = FrozenTowerCache(base.vision_model, args.feature_cache_dir)
        self._norm_layers = [
            m for m in base.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
        ]
        self._metrics: dict[str, list[float]] = {}
        super().__init__(
            model=model,
            args=args,
            train_dataset=train_dataset,
            data_collator=data_collator,
            callbacks=callbacks,
            **kwargs,
        )
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        total = sum(p.numel() for p in base.parameters())
        logger.info("AGCL: %s; training %d of %d parameters", self.loss_fn, trainable, total)

    # ---- data ---------------------------------------------------------------------------

    def _get_train_sampler(self, train_dataset=None):
        dataset = train_dataset if train_dataset is not None else self.train_dataset
        self._sampler = ListingBatchSampler(
            len(dataset),
            self.args.per_device_train_batch_size * max(1, self.args.world_size),
            mode=self.args.batch_sampler,
            attributes=self._attribute_dicts if self.args.batch_sampler == "attributes" else None,
            seed=self.args.seed,
        )
        return self._sampler

    def _run_epoch(self, *args, **kwargs):
        # The batch order is a function of (seed, epoch): set it before the epoch's dataloader
        # (possibly skipping batches after a resume) is iterated.
        sampler = getattr(self, "_sampler", None)
        if sampler is not None and "epoch" in kwargs:
            sampler.set_epoch(kwargs["epoch"])
        return super()._run_epoch(*args, **kwargs)

    # ---- loss ---------------------------------------------------------------------------

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        for module in self._frozen_modules:
            module.eval()
        for module in self._norm_layers:
            module.eval()
        result, ids = contrastive_step(model, inputs, self.loss_fn, self.args.matryoshka)
        if model.training:
            self._record(result, ids)
        return (result.loss, {"logits": result.logits}) if return_outputs else result.loss

    def _record(self, result: AGCLLossOutput, ids: list[str] | None) -> None:
        n = result.logits.shape[0]
        scale = base_afmrl_model(self.model).logit_scale.exp().clamp(max=100.0)
        values = {
            "masked": float(result.num_masked) / 2,  # per direction
            "masked_frac": float(result.num_masked) / max(1, 2 * n * (n - 1)),
            "accuracy": float(result.accuracy),
            "logit_scale": float(scale.detach()),
        }
        for key, value in values.items():
            self._metrics.setdefault(key, []).append(value)
        if self.args.log_masked_pairs and ids is not None and self.is_world_process_zero():
            pairs = masked_pairs(result.mask, result.mask_t)
            pairs = (pairs | pairs.T).triu(diagonal=1).nonzero().tolist()
            record = {
                "step": self.state.global_step + 1,
                "listing_ids": ids,
                "masked": [[ids[i], ids[j]] for i, j in pairs],
            }
            self._write_masked(record)

    def _write_masked(self, record: dict) -> None:
        path = Path(self.args.output_dir) / MASKED_PAIRS_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs and self._metrics:
            for key, values in self._metrics.items():
                logs[key] = round(sum(values) / len(values), 4)
            self._metrics = {}
        if self._feature_cache is not None and "loss" in logs:
            logs["vision_cache_hits"] = self._feature_cache.hits
        super().log(logs, start_time)

    # ---- optimiser ----------------------------------------------------------------------

    def create_optimizer(self, model=None):
        if self.optimizer is not None or self.args.head_learning_rate is None:
            return super().create_optimizer(model)
        opt_model = self.model if model is None else model
        decay = set(self.get_decay_parameter_names(opt_model))
        groups: dict[tuple[bool, bool], list[nn.Parameter]] = {}
        for name, param in opt_model.named_parameters():
            if not param.requires_grad:
                continue
            head = any(part in HEAD_PARAMETERS for part in name.split("."))
            groups.setdefault((head, name in decay), []).append(param)
        param_groups = [
            {
                "params": params,
                "weight_decay": self.args.weight_decay if decays else 0.0,
                "lr": self.args.head_learning_rate if head else self.args.learning_rate,
            }
            for (head, decays), params in sorted(groups.items())
        ]
        optimizer_cls, optimizer_kwargs = self.get_optimizer_cls_and_kwargs(self.args, opt_model)
        optimizer_kwargs.pop("params", None)
        self.optimizer = optimizer_cls(param_groups, **optimizer_kwargs)
        return self.optimizer

    # ---- saving -------------------------------------------------------------------------

    def save_final_model(self, output_dir: str | os.PathLike | None = None) -> str:
        """Save the trained encoder (LoRA merged) with ``save_pretrained``; returns the folder.

        Removes the feature cache hook first; the model stays usable afterwards."""
        output_dir = os.fspath(output_dir or self.args.output_dir)
        if self._feature_cache is not None:
            self._feature_cache.remove(save=self.is_world_process_zero())
            self._feature_cache = None
        model = self.accelerator.unwrap_model(self.model)
        if hasattr(model, "merge_and_unload"):
            model = model.merge_and_unload()
            self.model = model
        if self.is_world_process_zero():
            model.save_pretrained(output_dir)
            with open(os.path.join(output_dir, "agcl_training.json"), "w", encoding="utf-8") as f:
                json.dump(self._training_summary(), f, indent=2)
        if is_distributed():
            gather_objects([None])  # a barrier: everyone waits for the files
        return output_dir

    def _training_summary(self) -> dict[str, Any]:
        keys = (
            "loss", "weighting", "false_negatives", "delta", "attribute_overlap",
            "bm25_statistics", "text_attributes_column", "batch_sampler", "train_vision_blocks",
            "train_text_layers", "learning_rate", "head_learning_rate", "use_lora",
            "per_device_train_batch_size", "max_steps", "num_train_epochs", "seed",
        )  # fmt: skip
        summary = {k: getattr(self.args, k) for k in keys}
        summary.update(
            loss_attributes_column=self.loss_attributes_column,
            resolved_weighting=self.loss_fn.weighting,
            resolved_false_negatives=self.loss_fn.false_negatives,
            world_size=self.args.world_size,
            global_step=self.state.global_step,
            log_history=self.state.log_history,
        )
        return summary


__all__ = [
    "AGCLCollator",
    "AGCLConfig",
    "AGCLTrainer",
    "FrozenTowerCache",
    "SecondViewAugmentation",
    "configure_trainable",
    "contrastive_step",
    "resolve_columns",
    "tower_units",
]
