"""``AFMRLConfig``: one config for the listing encoder and the attribute extractor.

The encoder is either ``dual`` (a vision ``AutoModel`` + a text ``AutoModel`` + projections + fusion)
or ``vlm`` (a Qwen2-VL-class model pooled at its last token, VLM2Vec style). The extractor is any
image-text-to-text model. Each backbone is kept as a sub-config carrying its own ``model_type`` and
is rebuilt through ``AutoConfig`` on load, so any architecture transformers knows can be plugged in.

Shipped as remote code with every checkpoint: imports only transformers and siblings.
"""

from __future__ import annotations

import math
from typing import ClassVar

from transformers import AutoConfig, PreTrainedConfig
from transformers.configuration_utils import SubConfigSpec

from .attributes import ATTRIBUTE_FORMAT_VERSION

ENCODER_TYPES = ("dual", "vlm")
FUSIONS = ("mean", "mlp")
TEXT_POOLINGS = ("mean", "cls", "pooler", "last")
#: Text towers whose own pooled output is the sentence embedding (CLIP-style EOS pooling).
_POOLER_TEXT_MODELS = ("clip_text_model", "siglip_text_model", "siglip2_text_model")
#: Smallest Matryoshka dimension derived by default.
_MIN_DEFAULT_MATRYOSHKA_DIM = 32

#: The text tower of the embedded default has the all-MiniLM-L6-v2 architecture.
_MINILM_L6 = {
    "vocab_size": 30522,
    "hidden_size": 384,
    "num_hidden_layers": 6,
    "num_attention_heads": 12,
    "intermediate_size": 1536,
    "max_position_embeddings": 512,
}


class AFMRLConfig(PreTrainedConfig):
    r"""Configuration of [`AFMRLModel`].

    Args:
        encoder_type (`str`, defaults to `"dual"`):
            `"dual"` (vision tower + text tower + projections + fusion) or `"vlm"` (one
            vision-language model with last-token pooling).
        vision_config (`dict` or `PreTrainedConfig`, *optional*):
            Vision tower of the dual encoder (any vision `AutoModel`: `timm_wrapper`,
            `clip_vision_model`, `siglip_vision_model`...). Defaults to timm's `efficientnet_lite0`.
        text_config (`dict` or `PreTrainedConfig`, *optional*):
            Text tower of the dual encoder (`bert`, `xlm-roberta`, `clip_text_model`...). Defaults to
            the all-MiniLM-L6-v2 architecture.
        vlm_config (`dict` or `PreTrainedConfig`, *optional*):
            The VLM encoder (`qwen2_vl`, `qwen2_5_vl`); required when `encoder_type="vlm"`.
        extractor_config (`dict` or `PreTrainedConfig`, *optional*):
            The attribute extractor (any `AutoModelForImageTextToText` config, or `llava` with a
            `timm_wrapper` vision tower). `None`: the checkpoint has no extractor.
        embed_dim (`int`, *optional*):
            Size of the listing embedding. Defaults to 256 (dual) or the VLM's hidden size (vlm,
            no projection, as in VLM2Vec).
        matryoshka_dims (`list[int]`, *optional*):
            Prefix sizes that are trained to work on their own (`encode(truncate_dim=...)`).
            Defaults to `embed_dim` halved down to 32.
        logit_scale_init (`float`, defaults to `log(1 / 0.07)`):
            Initial value of the learnable log inverse temperature of the contrastive loss.
        fusion (`str`, defaults to `"mean"`):
            How image and text embeddings become one listing embedding (dual only): `"mean"` (the
            normalised mean of the two unit vectors) or `"mlp"` (the mean plus a zero-initialised
            residual MLP over both; image-only and text-only calls skip it).
        text_pooling (`str`, *optional*):
            `"mean"`, `"cls"`, `"pooler"` (the tower's own pooled output) or `"last"`. Defaults to
            `"pooler"` for CLIP/SigLIP text towers and `"mean"` otherwise.
        image_size (`int`, *optional*), image_mean / image_std (`list[float]`, *optional*):
            The encoder's image preprocessing, recorded from its image processor (the processor is
            what runs; these make the checkpoint self-describing).
        attribute_format_version (`str`):
            Version of the attribute text format (`attributes.ATTRIBUTE_FORMAT_VERSION`).
        initializer_range (`float`, defaults to 0.02):
            Standard deviation of the projection initialisation.

    Example:

    ```python
    >>> from transformers import BertConfig, TimmWrapperConfig
    >>> from modeling_afmrl import AFMRLConfig, AFMRLModel

    >>> # A dual encoder: timm EfficientNet-Lite0 + a small BERT, 128-d listing embeddings
    >>> config = AFMRLConfig(
    ...     vision_config=TimmWrapperConfig(architecture="efficientnet_lite0"),
    ...     text_config=BertConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
    ...                            intermediate_size=128),
    ...     embed_dim=128,
    ... )
    >>> config.matryoshka_dims  # prefixes trained to work on their own
    [128, 64, 32]
    >>> model = AFMRLModel(config)  # random weights; see AFMRLModel for a pretrained one
    >>> model.vision_projection.out_features, config.text_pooling
    (128, 'mean')

    ```
    """

    model_type = "afmrl"
    # sentence-transformers reads `projection_dim` as the embedding size of pooled outputs.
    attribute_map: ClassVar[dict[str, str]] = {"projection_dim": "embed_dim"}
    sub_configs_defaults: ClassVar[dict[str, SubConfigSpec]] = {
        "vision_config": SubConfigSpec(
            config_class=AutoConfig,
            model_type="timm_wrapper",
            init_kwargs={"architecture": "efficientnet_lite0"},
            optional=True,
        ),
        "text_config": SubConfigSpec(
            config_class=AutoConfig, model_type="bert", init_kwargs=_MINILM_L6, optional=True
        ),
        "vlm_config": SubConfigSpec(config_class=AutoConfig, model_type="qwen2_vl", optional=True),
        "extractor_config": SubConfigSpec(
            config_class=AutoConfig, model_type="qwen2_vl", optional=True
        ),
    }

    encoder_type: str = "dual"
    vision_config: dict | PreTrainedConfig | None = None
    text_config: dict | PreTrainedConfig | None = None
    vlm_config: dict | PreTrainedConfig | None = None
    extractor_config: dict | PreTrainedConfig | None = None
    embed_dim: int | None = None
    matryoshka_dims: list[int] | None = None
    logit_scale_init: float = math.log(1 / 0.07)
    fusion: str = "mean"
    text_pooling: str | None = None
    image_size: int | None = None
    image_mean: list[float] | None = None
    image_std: list[float] | None = None
    attribute_format_version: str = ATTRIBUTE_FORMAT_VERSION
    initializer_range: float = 0.02

    def __post_init__(self, **kwargs):
        # The base class resets the attention implementation of every sub-config it is given; a
        # sub-config may belong to an already built backbone (from_backbones), so keep theirs.
        kept = {}
        if "attn_implementation" not in kwargs:
            for key in self.sub_configs_defaults:
                sub = getattr(self, key)
                if isinstance(sub, PreTrainedConfig):
                    kept[key] = _attn_implementations(sub)
        super().__post_init__(**kwargs)
        for key, implementations in kept.items():
            _restore_attn_implementations(getattr(self, key), implementations)
        if self.encoder_type not in ENCODER_TYPES:
            raise ValueError(
                f"AFMRLConfig.encoder_type must be one of {ENCODER_TYPES}, got {self.encoder_type!r}"
            )
        if self.fusion not in FUSIONS:
            raise ValueError(f"AFMRLConfig.fusion must be one of {FUSIONS}, got {self.fusion!r}")

        if self.encoder_type == "dual":
            if self.vlm_config is not None:
                raise ValueError("AFMRLConfig: vlm_config is set but encoder_type is 'dual'")
            for key in ("vision_config", "text_config"):
                if getattr(self, key) is None:
                    setattr(self, key, self.sub_configs_defaults[key].default_config)
            if self.text_pooling is None:
                pooler = self.text_config.model_type in _POOLER_TEXT_MODELS
                self.text_pooling = "pooler" if pooler else "mean"
            if self.embed_dim is None:
                self.embed_dim = 256
        else:
            if self.vlm_config is None:
                raise ValueError("AFMRLConfig: encoder_type='vlm' needs vlm_config")
            for key in ("vision_config", "text_config"):
                if getattr(self, key) is not None:
                    raise ValueError(f"AFMRLConfig: {key} is set but encoder_type is 'vlm'")
            if self.text_pooling is None:
                self.text_pooling = "last"
            if self.embed_dim is None:
                self.embed_dim = self.vlm_config.get_text_config().hidden_size
        if self.text_pooling not in TEXT_POOLINGS:
            raise ValueError(
                f"AFMRLConfig.text_pooling must be one of {TEXT_POOLINGS}, got {self.text_pooling!r}"
            )
        if not isinstance(self.embed_dim, int) or self.embed_dim <= 0:
            raise ValueError(
                f"AFMRLConfig.embed_dim must be a positive int, got {self.embed_dim!r}"
            )
        self.matryoshka_dims = _check_matryoshka_dims(self.matryoshka_dims, self.embed_dim)


def _attn_implementations(config: PreTrainedConfig) -> dict[str, str | None]:
    """Attention implementation of ``config`` and of each nested sub-config, by path."""
    out = {"": getattr(config, "_attn_implementation_internal", None)}
    for key in getattr(config, "sub_configs", {}):
        sub = getattr(config, key, None)
        if isinstance(sub, PreTrainedConfig):
            out.update(
                {f"{key}.{k}" if k else key: v for k, v in _attn_implementations(sub).items()}
            )
    return out


def _restore_attn_implementations(config: PreTrainedConfig, saved: dict[str, str | None]) -> None:
    for path, value in sorted(saved.items(), key=lambda kv: kv[0].count(".")):
        target = config
        for part in filter(None, path.split(".")):
            target = getattr(target, part)
        if value is not None:
            target._attn_implementation_internal = value


def _check_matryoshka_dims(dims: list[int] | None, embed_dim: int) -> list[int]:
    """Validated Matryoshka sizes, largest first, always including ``embed_dim``."""
    if dims is None:
        dims, d = [], embed_dim
        while d >= _MIN_DEFAULT_MATRYOSHKA_DIM or not dims:
            dims.append(d)
            if d % 2:
                break
            d //= 2
        return dims
    bad = [
        d for d in dims if not isinstance(d, int) or isinstance(d, bool) or not 0 < d <= embed_dim
    ]
    if bad:
        raise ValueError(
            f"AFMRLConfig.matryoshka_dims must be ints in [1, embed_dim={embed_dim}], got {bad}"
        )
    return sorted(set(dims) | {embed_dim}, reverse=True)


AFMRLConfig.register_for_auto_class()

__all__ = ["AFMRLConfig"]
