"""``AFMRLProcessor``: product listings (photo + title [+ attributes]) to model inputs.

Two jobs, one object:

* **encoder inputs** — ``processor(images=..., text=..., attributes=...)``. For the dual encoder
  the photo goes through the vision tower's image processor and ``title [SEP] attributes`` through
  the text tower's tokenizer; for the VLM encoder each listing becomes one chat prompt (image block
  + instruction + text) through the VLM's own processor (``encoder_processor``).
* **extractor prompts** — :meth:`AFMRLProcessor.extractor_inputs` renders
  ``attributes.extractor_messages(title)`` with the extractor's own processor
  (``extractor_processor``: a ``Qwen2VLProcessor``, a ``LlavaProcessor``...), left-padded for
  batched generation.

The backbone processors are kept whole and saved in sub-folders (``encoder_processor/``,
``extractor_processor/``) next to the checkpoint, because their image-token expansion is
model-specific. Images may be PIL images in any mode, file paths, numpy arrays or torch tensors;
anything else raises a ``TypeError`` naming the item.

Shipped as remote code with every checkpoint: top-level imports are transformers / torch / PIL /
numpy / stdlib and siblings only.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from transformers import AutoProcessor
from transformers.feature_extraction_utils import BatchFeature
from transformers.processing_utils import ProcessorMixin
from transformers.utils import cached_file

from .attributes import canonical_attribute_text

#: Sub-folders holding whole backbone processors (saved and loaded with the checkpoint).
NESTED_PROCESSORS = ("encoder_processor", "extractor_processor")
DEFAULT_VLM_INSTRUCTION = "Represent this product listing for identical-product retrieval."
#: Background used when flattening transparent product photos (catalogue photos sit on white).
_BACKGROUND = (255, 255, 255)
_HUB_KWARGS = ("cache_dir", "force_download", "local_files_only", "token", "revision")


# --------------------------------------------------------------------------------------------
# Images: anything reasonable -> RGB PIL image
# --------------------------------------------------------------------------------------------


def to_rgb_image(item: Any, name: str = "image") -> Image.Image:
    """Turn one image-like object into an RGB PIL image.

    Accepts a PIL image in any mode (transparency is flattened onto white; 16-bit and float
    images are rescaled to 8 bits), a file path, a ``{"bytes": ..., "path": ...}`` dict (the
    undecoded ``datasets.Image`` form), raw encoded bytes, or a numpy array / torch tensor shaped
    ``[H, W]``, ``[H, W, C]`` or ``[C, H, W]`` with C in {1, 3, 4} (uint8, uint16, bool or float:
    floats in [0, 1] are scaled by 255). ``name`` is used in error messages, e.g. ``images[3]``.
    """
    if isinstance(item, Image.Image):
        image = item
    elif isinstance(item, (str, os.PathLike)):
        path = Path(item)
        if not path.is_file():
            raise FileNotFoundError(f"{name}: no image file at {str(item)[:200]!r}")
        image = _open_image(path, name)
    elif isinstance(item, (bytes, bytearray)):
        image = _open_image(_bytes_io(item), name)
    elif isinstance(item, Mapping) and ("bytes" in item or "path" in item):
        if item.get("bytes") is not None:
            image = _open_image(_bytes_io(item["bytes"]), name)
        else:
            return to_rgb_image(item["path"], name)
    elif isinstance(item, torch.Tensor):
        image = _array_to_image(item.detach().cpu().float().numpy(), name, channels_first=True)
    elif isinstance(item, np.ndarray):
        image = _array_to_image(item, name, channels_first=None)
    else:
        raise TypeError(
            f"{name} has unsupported type {type(item).__name__}: expected a PIL image, a file path, "
            "a numpy array or a torch tensor"
        )
    if image.width < 1 or image.height < 1:
        raise ValueError(f"{name} is empty ({image.width}x{image.height} pixels)")
    return _pil_to_rgb(image)


def _bytes_io(data: bytes):
    import io

    return io.BytesIO(bytes(data))


def _open_image(source, name: str) -> Image.Image:
    try:
        image = Image.open(source)
        image.load()
    except Exception as err:  # PIL raises many types for corrupt files
        raise ValueError(f"{name}: cannot decode image ({err})") from err
    return image


def _pil_to_rgb(image: Image.Image) -> Image.Image:
    mode = image.mode
    if mode == "RGB":
        return image
    if mode.startswith("I") or mode == "F":
        return _array_to_image(np.asarray(image), "image", channels_first=False)
    if mode == "P":
        image = image.convert("RGBA")
        mode = "RGBA"
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGB", rgba.size, _BACKGROUND)
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    return image.convert("RGB")


def _array_to_image(array: np.ndarray, name: str, channels_first: bool | None) -> Image.Image:
    """``[H, W]``, ``[H, W, C]`` or ``[C, H, W]`` array -> PIL image (8 bits per channel)."""
    if array.ndim == 3:
        first, last = array.shape[0] in (1, 3, 4), array.shape[-1] in (1, 3, 4)
        if (channels_first and first) or (channels_first is None and first and not last):
            array = np.moveaxis(array, 0, -1)
        elif not last:
            raise ValueError(
                f"{name} has shape {tuple(array.shape)}: expected [H, W], [H, W, C] or [C, H, W] "
                "with C in {1, 3, 4}"
            )
        if array.shape[-1] == 1:
            array = array[..., 0]
    elif array.ndim != 2:
        raise ValueError(
            f"{name} has {array.ndim} dimensions: expected an image [H, W], [H, W, C] or [C, H, W]"
        )
    if array.size == 0:
        raise ValueError(f"{name} is empty (shape {tuple(array.shape)})")
    array = _to_uint8(array, name)
    return _pil_to_rgb(Image.fromarray(np.ascontiguousarray(array)))


def _to_uint8(array: np.ndarray, name: str) -> np.ndarray:
    if array.dtype == np.uint8:
        return array
    if array.dtype == bool:
        return array.astype(np.uint8) * 255
    if np.issubdtype(array.dtype, np.floating):
        if not np.isfinite(array).all():
            raise ValueError(f"{name} contains NaN or infinite values")
        scale = 255.0 if array.size and array.max() <= 1.0 else 1.0
        return np.clip(np.rint(array * scale), 0, 255).astype(np.uint8)
    if np.issubdtype(array.dtype, np.integer):
        peak = int(array.max()) if array.size else 0
        if peak <= 255:
            return np.clip(array, 0, 255).astype(np.uint8)
        if peak <= 65535:
            return (np.clip(array, 0, 65535) // 257).astype(np.uint8)
        return (array.astype(np.float64) * (255.0 / peak)).astype(np.uint8)
    raise TypeError(f"{name} has unsupported array dtype {array.dtype}")


def pad_extreme_aspect(image: Image.Image, max_aspect_ratio: float) -> Image.Image:
    """Pad (white) a very thin image so that its long side is at most ``max_aspect_ratio`` times
    its short side; resizers crop or reject such images otherwise (Qwen2-VL refuses > 200)."""
    w, h = image.size
    if max(w, h) <= max_aspect_ratio * min(w, h):
        return image
    new_w = max(w, int(np.ceil(h / max_aspect_ratio)))
    new_h = max(h, int(np.ceil(w / max_aspect_ratio)))
    canvas = Image.new("RGB", (new_w, new_h), _BACKGROUND)
    canvas.paste(image, ((new_w - w) // 2, (new_h - h) // 2))
    return canvas


def as_image_list(images: Any) -> list:
    """A single image or a batch -> list of single images.

    A batch is a 4-D array/tensor or any iterable that is not itself one image (a list, a tuple,
    a ``datasets`` column...); a single image is a PIL image, a path, a 2-/3-D array or tensor.
    """
    if isinstance(images, (np.ndarray, torch.Tensor)):
        return list(images) if images.ndim == 4 else [images]
    if isinstance(images, (str, bytes, os.PathLike, Mapping, Image.Image)):
        return [images]
    if isinstance(images, Iterable):
        return list(images)
    return [images]


def as_text_list(texts: Any, name: str = "texts") -> list[str]:
    """A string or a sequence of strings (``None`` items become ``""``) -> list of strings."""
    if isinstance(texts, str):
        return [texts]
    if isinstance(texts, (bytes, Mapping)) or not isinstance(texts, Iterable):
        raise TypeError(f"{name} must be a string or a list of strings, got {type(texts).__name__}")
    out = []
    for i, text in enumerate(texts):
        if text is None:
            text = ""
        if not isinstance(text, str):
            raise TypeError(f"{name}[{i}] must be a string, got {type(text).__name__}")
        out.append(text)
    return out


# --------------------------------------------------------------------------------------------
# The processor
# --------------------------------------------------------------------------------------------


class AFMRLProcessor(ProcessorMixin):
    r"""Processor of [`AFMRLModel`].

    Args:
        image_processor: the encoder's image processor (dual: the vision tower's; vlm: the VLM's).
        tokenizer: the encoder's tokenizer (dual: the text tower's; vlm: the VLM's).
        encoder_type (`str`): `"dual"` or `"vlm"`, as in `AFMRLConfig`.
        text_max_tokens (`int`): longest listing text (title + attributes) in tokens; longer text
            is truncated (for the VLM, the text alone, never the image tokens).
        attribute_separator (`str`, *optional*): between title and attributes; defaults to the
            tokenizer's separator token (`[SEP]` for BERT) or `" | "`.
        vlm_instruction (`str`): the instruction placed before the listing text in VLM prompts.
        max_aspect_ratio (`float`): thinner images are padded with white first.
        encoder_processor (`ProcessorMixin`, *optional*): the VLM's own processor (required for
            `encoder_type="vlm"`).
        extractor_processor (`ProcessorMixin`, *optional*): the attribute extractor's processor.
    """

    def __init__(
        self,
        image_processor=None,
        tokenizer=None,
        encoder_type: str = "dual",
        text_max_tokens: int = 128,
        attribute_separator: str | None = None,
        vlm_instruction: str = DEFAULT_VLM_INSTRUCTION,
        max_aspect_ratio: float = 20.0,
        encoder_processor=None,
        extractor_processor=None,
        **kwargs,
    ):
        if encoder_type not in ("dual", "vlm"):
            raise ValueError(f"encoder_type must be 'dual' or 'vlm', got {encoder_type!r}")
        if encoder_processor is not None:
            if image_processor is None:
                image_processor = encoder_processor.image_processor
            if tokenizer is None:
                tokenizer = encoder_processor.tokenizer
        if attribute_separator is None:
            sep = getattr(tokenizer, "sep_token", None)
            attribute_separator = f" {sep} " if sep else " | "
        self.encoder_type = encoder_type
        self.text_max_tokens = int(text_max_tokens)
        self.attribute_separator = attribute_separator
        self.vlm_instruction = vlm_instruction
        self.max_aspect_ratio = float(max_aspect_ratio)
        self.encoder_processor = encoder_processor
        self.extractor_processor = extractor_processor
        # The backbone processors own their chat templates; this one renders none itself.
        kwargs.pop("chat_template", None)
        super().__init__(image_processor, tokenizer, **kwargs)

    # ---- encoder inputs -------------------------------------------------------------------

    def listing_texts(
        self, text: Any = None, attributes: Any = None, n: int | None = None
    ) -> list[str]:
        """``title`` + separator + attributes, one string per listing.

        Attributes go through :func:`~.attributes.canonical_attribute_text`: canonical form, and a
        malformed string adds nothing (the listing is its title alone)."""
        titles = as_text_list(text, "text") if text is not None else [""] * (n or 0)
        if attributes is None:
            return titles
        if isinstance(attributes, (Mapping, str)):
            attributes = [attributes]
        attributes = list(attributes)
        if len(attributes) != len(titles):
            raise ValueError(
                f"got {len(attributes)} attributes for {len(titles)} listings: pass one per listing"
            )
        out = []
        for i, (title, attrs) in enumerate(zip(titles, attributes, strict=True)):
            try:
                rendered = canonical_attribute_text(attrs)
            except (TypeError, ValueError) as err:
                raise type(err)(f"attributes[{i}]: {err}") from err
            out.append(f"{title}{self.attribute_separator}{rendered}" if rendered else title)
        return out

    def prepare_images(self, images: Any, offset: int = 0) -> list[Image.Image]:
        """Coerce every image to RGB (see :func:`to_rgb_image`) and pad extreme aspect ratios.

        ``offset`` is added to the index in error messages (``images[offset + i]``)."""
        return [
            pad_extreme_aspect(to_rgb_image(item, f"images[{offset + i}]"), self.max_aspect_ratio)
            for i, item in enumerate(as_image_list(images))
        ]

    def __call__(
        self,
        images: Any = None,
        text: Any = None,
        attributes: Any = None,
        videos: Any = None,
        audio: Any = None,
        return_tensors: str | None = "pt",
        **kwargs,
    ) -> BatchFeature:
        """Encoder inputs for a batch of listings (images, texts, or both, paired by position).

        Also accepts the per-modality keyword dicts sentence-transformers passes
        (``text_kwargs``, ``images_kwargs``, ``common_kwargs``...).
        """
        if videos is not None or audio is not None:
            raise ValueError("AFMRLProcessor handles images and text only (got videos/audio)")
        text_kwargs = dict(kwargs.pop("text_kwargs", None) or {})
        images_kwargs = dict(kwargs.pop("images_kwargs", None) or {})
        common = dict(kwargs.pop("common_kwargs", None) or {})
        kwargs.pop("videos_kwargs", None)
        kwargs.pop("audio_kwargs", None)
        return_tensors = common.pop("return_tensors", return_tensors)
        for key in ("padding", "truncation", "max_length"):
            if key in kwargs:
                text_kwargs[key] = kwargs.pop(key)
        if kwargs:
            raise TypeError(f"AFMRLProcessor got unexpected arguments: {sorted(kwargs)}")

        pil_images = self.prepare_images(images) if images is not None else None
        if text is None and attributes is None:
            texts = None
        else:
            n = len(pil_images) if pil_images is not None else None
            texts = self.listing_texts(text, attributes, n=n)
        if pil_images is None and texts is None:
            raise ValueError("AFMRLProcessor needs images, text or attributes")
        if pil_images is not None and texts is not None and len(pil_images) != len(texts):
            raise ValueError(
                f"got {len(pil_images)} images and {len(texts)} texts: a listing pairs one image "
                "with one text, so pass as many of each"
            )
        if self.encoder_type == "vlm":
            return self._vlm_inputs(pil_images, texts, return_tensors)

        data: dict[str, Any] = {}
        if pil_images is not None:
            data.update(
                self.image_processor(pil_images, return_tensors=return_tensors, **images_kwargs)
            )
        if texts is not None:
            text_kwargs.setdefault("padding", True)
            text_kwargs.setdefault("truncation", True)
            text_kwargs.setdefault("max_length", self.text_max_tokens)
            data.update(self.tokenizer(texts, return_tensors=return_tensors, **text_kwargs))
        return BatchFeature(data, tensor_type=return_tensors)

    def _vlm_inputs(self, images, texts, return_tensors) -> BatchFeature:
        proc = self.encoder_processor
        if proc is None:
            raise ValueError("encoder_type='vlm' needs encoder_processor (the VLM's own processor)")
        n = len(images) if images is not None else len(texts)
        prompts = []
        for i in range(n):
            body = self.vlm_instruction
            if texts is not None and texts[i]:
                body = f"{body}\n{truncate_text(proc.tokenizer, texts[i], self.text_max_tokens)}"
            content = ([{"type": "image"}] if images is not None else []) + [
                {"type": "text", "text": body}
            ]
            prompts.append(
                proc.apply_chat_template(
                    [{"role": "user", "content": content}],
                    add_generation_prompt=True,
                    tokenize=False,
                )
            )
        return proc(text=prompts, images=images, padding=True, return_tensors=return_tensors)

    # ---- extractor prompts ----------------------------------------------------------------

    def extractor_inputs(
        self, images: Any, texts: Any, title_max_tokens: int = 256, return_tensors: str = "pt"
    ) -> BatchFeature:
        """Left-padded chat prompts (image + ``attributes.extractor_prompt(title)``) for
        ``extractor.generate``."""
        from .attributes import extractor_messages

        proc = self.extractor_processor
        if proc is None:
            raise ValueError(
                "this processor has no extractor_processor: the checkpoint has no attribute "
                "extractor, or its processor was not saved with it"
            )
        pil_images = self.prepare_images(images)
        titles = as_text_list(texts, "texts")
        if len(titles) != len(pil_images):
            raise ValueError(
                f"got {len(pil_images)} images and {len(titles)} texts: pass one title per image"
            )
        prompts = [
            proc.apply_chat_template(
                extractor_messages(truncate_text(proc.tokenizer, t, title_max_tokens)),
                add_generation_prompt=True,
                tokenize=False,
            )
            for t in titles
        ]
        return proc(
            text=prompts,
            images=pil_images,
            padding=True,
            padding_side="left",
            return_tensors=return_tensors,
        )

    # ---- save / load ----------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        # Nested processors are saved in their own sub-folders, not inside processor_config.json.
        nested = {k: self.__dict__.pop(k) for k in NESTED_PROCESSORS if k in self.__dict__}
        try:
            output = super().to_dict()
        finally:
            self.__dict__.update(nested)
        for key in NESTED_PROCESSORS:
            output.pop(key, None)
        return _with_timm_pretrained_cfg(output)

    def save_pretrained(self, save_directory, push_to_hub: bool = False, **kwargs):
        """Save like any processor, plus each nested backbone processor in its sub-folder."""
        if push_to_hub:
            repo_id = kwargs.pop("repo_id", str(save_directory).rstrip("/").split("/")[-1])
            self.save_pretrained(save_directory)
            return self.push_to_hub(repo_id, **kwargs)
        files = super().save_pretrained(save_directory, **kwargs)
        for key in NESTED_PROCESSORS:
            nested = getattr(self, key, None)
            if nested is not None:
                folder = os.path.join(save_directory, key)
                files += list(nested.save_pretrained(folder) or [])
                _patch_timm_processor_file(os.path.join(folder, "processor_config.json"))
        return files

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, **kwargs):
        """Load the processor and the nested backbone processors saved next to it."""
        subfolder = kwargs.get("subfolder", "") or ""
        hub = {k: kwargs[k] for k in _HUB_KWARGS if k in kwargs}
        root_kwargs = dict(kwargs)
        if "config" not in root_kwargs:
            # The tokenizer loader reads config.json to find a tokenizer class; hand it the config
            # through this (already running) code rather than asking to trust it a second time.
            from .configuration_afmrl import AFMRLConfig

            with contextlib.suppress(OSError, ValueError):
                root_kwargs["config"] = AFMRLConfig.from_pretrained(
                    pretrained_model_name_or_path, subfolder=subfolder, **hub
                )
        processor = super().from_pretrained(pretrained_model_name_or_path, **root_kwargs)
        kwargs.pop("_from_auto", None)
        kwargs.pop("subfolder", None)
        for key in NESTED_PROCESSORS:
            sub = f"{subfolder}/{key}" if subfolder else key
            found = cached_file(
                pretrained_model_name_or_path,
                "processor_config.json",
                subfolder=sub,
                _raise_exceptions_for_missing_entries=False,
                **hub,
            )
            if found is not None:
                nested = AutoProcessor.from_pretrained(
                    pretrained_model_name_or_path, subfolder=sub, **kwargs
                )
                setattr(processor, key, nested)
        return processor


def _with_timm_pretrained_cfg(processor_dict: dict[str, Any]) -> dict[str, Any]:
    """Make saved ``TimmWrapperImageProcessor`` entries loadable again.

    Inside a processor's ``processor_config.json`` that image processor is written as its resolved
    ``data_config`` but rebuilt from a ``pretrained_cfg`` argument (transformers 5.24), so loading
    fails with a missing argument. The data config is a valid ``pretrained_cfg``: store it as one.
    """
    for value in processor_dict.values():
        if (
            isinstance(value, dict)
            and value.get("image_processor_type") == "TimmWrapperImageProcessor"
            and "pretrained_cfg" not in value
            and isinstance(value.get("data_config"), dict)
        ):
            value["pretrained_cfg"] = dict(value["data_config"])
    return processor_dict


def _patch_timm_processor_file(path: str) -> None:
    import json

    if not os.path.isfile(path):
        return
    with open(path, encoding="utf-8") as f:
        content = json.load(f)
    patched = _with_timm_pretrained_cfg(json.loads(json.dumps(content)))
    if patched != content:
        with open(path, "w", encoding="utf-8") as f:
            json.dump(patched, f, indent=2, sort_keys=True)
            f.write("\n")


def truncate_text(tokenizer, text: str, max_tokens: int) -> str:
    """``text`` cut to at most ``max_tokens`` tokens of ``tokenizer`` (unchanged when shorter)."""
    if not text or len(text) <= max_tokens:
        return text
    ids = tokenizer(text, add_special_tokens=False, truncation=True, max_length=max_tokens)[
        "input_ids"
    ]
    if len(ids) < max_tokens:
        return text
    return tokenizer.decode(ids, skip_special_tokens=True)


AFMRLProcessor.register_for_auto_class()

__all__ = ["AFMRLProcessor", "to_rgb_image"]
