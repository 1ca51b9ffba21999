"""LLaVA with a timm CNN vision tower (the embedded default's attribute extractor).

``LlavaForConditionalGeneration`` expects its vision tower to return token sequences ``[B, T, C]``;
a CNN such as EfficientNet-Lite0 behind ``TimmWrapperModel`` returns channel-first feature maps
``[B, C, H, W]``, one per stage. :class:`AFMRLLlavaModel` picks one stage map (``vision_feature_layer``
indexes the stage maps; ``vision_config.hidden_size`` must equal its channel count) and flattens it
to ``[B, H*W, C]`` before the projector. The fix lives in this subclass (shipped as remote code) so it
survives ``save_pretrained`` / ``from_pretrained``, unlike a forward hook.

For EfficientNet-Lite0 at 128 px the stage maps are (index: channels @ grid, stride):
``-1: 320 @ 4x4 (/32)``, ``-2: 112 @ 8x8 (/16)``, ``-3: 40 @ 16x16 (/8)``; ``image_seq_length``
must be the grid's ``H*W`` and the processor's ``patch_size`` the stride.

Remote code: top-level imports are torch and transformers only.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import (
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaModel,
    LlavaPreTrainedModel,
)
from transformers.modeling_outputs import BaseModelOutputWithPooling


def flatten_feature_map(feature_map: torch.Tensor) -> torch.Tensor:
    """``[B, C, H, W]`` channel-first map -> ``[B, H*W, C]`` token sequence (row-major over H, W)."""
    if feature_map.ndim != 4:
        raise ValueError(
            f"expected a [B, C, H, W] feature map from the timm vision tower, got shape "
            f"{tuple(feature_map.shape)}"
        )
    return feature_map.flatten(2).transpose(1, 2)


class AFMRLLlavaModel(LlavaModel):
    """``LlavaModel`` whose ``get_image_features`` reads a timm CNN's stage map as tokens."""

    def get_image_features(
        self,
        pixel_values: torch.Tensor,
        vision_feature_layer: int | list[int] | None = None,
        vision_feature_select_strategy: str | None = None,
        image_sizes: torch.Tensor | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> tuple | BaseModelOutputWithPooling:
        """Project one stage of the CNN into the language model's embedding space.

        Args:
            pixel_values: ``[B, 3, H_img, W_img]`` normalised images.
            vision_feature_layer: index into the tower's stage maps (default: the config's).
            vision_feature_select_strategy: must be ``"full"`` (a CNN has no CLS token to drop).
            image_sizes: unsupported (fixed-size inputs); must be ``None``.

        Returns:
            ``BaseModelOutputWithPooling`` with ``last_hidden_state`` the flattened stage map
            ``[B, T, C]`` and ``pooler_output`` a list of ``B`` projected tensors ``[T, D_text]``
            (the form ``LlavaModel.forward`` scatters into the placeholder tokens).
        """
        layer = (
            self.config.vision_feature_layer
            if vision_feature_layer is None
            else vision_feature_layer
        )
        strategy = vision_feature_select_strategy or self.config.vision_feature_select_strategy
        if not isinstance(layer, int) or isinstance(layer, bool):
            raise ValueError(
                f"vision_feature_layer must be one stage index (an int) for a timm CNN tower, got "
                f"{layer!r}: stage maps have different grids and cannot be concatenated"
            )
        if strategy != "full":
            raise ValueError(
                f"vision_feature_select_strategy must be 'full' for a timm CNN tower (no CLS token), "
                f"got {strategy!r}"
            )
        if image_sizes is not None:
            raise ValueError("image_sizes is not supported by the timm LLaVA extractor")
        # Only the wanted stage is computed (stop_early): the stages after it and the head are skipped.
        vision_outputs = self.vision_tower(
            pixel_values,
            output_hidden_states=[layer],
            stop_early=True,
            do_pooling=False,
            return_dict=True,
        )
        feature_map = vision_outputs.hidden_states[-1]
        tokens = flatten_feature_map(feature_map)
        expected = self.config.vision_config.hidden_size
        if tokens.shape[-1] != expected:
            raise ValueError(
                f"vision_config.hidden_size is {expected} but stage {layer} of "
                f"{self.config.vision_config.architecture!r} has {tokens.shape[-1]} channels"
            )
        image_features = self.multi_modal_projector(tokens)
        output = BaseModelOutputWithPooling(
            last_hidden_state=tokens,
            pooler_output=list(image_features),
            hidden_states=None,
        )
        return output if return_dict is not False else output.to_tuple()


class AFMRLLlavaForConditionalGeneration(LlavaForConditionalGeneration):
    """``LlavaForConditionalGeneration`` built on :class:`AFMRLLlavaModel` (timm CNN vision tower).

    Constructing it from a config never downloads anything: the timm tower is created with
    ``pretrained=False`` and its weights come from the checkpoint.
    """

    def __init__(self, config: LlavaConfig):
        vision_type = getattr(config.vision_config, "model_type", None)
        if vision_type != "timm_wrapper":
            raise ValueError(
                f"AFMRLLlavaForConditionalGeneration needs vision_config.model_type 'timm_wrapper', "
                f"got {vision_type!r}"
            )
        # The parent's __init__ would build a plain LlavaModel first; build ours directly.
        LlavaPreTrainedModel.__init__(self, config)
        self.model = AFMRLLlavaModel(config)
        self.lm_head = nn.Linear(
            config.text_config.hidden_size, config.text_config.vocab_size, bias=False
        )
        self.post_init()


AFMRLLlavaForConditionalGeneration.register_for_auto_class("AutoModelForImageTextToText")

__all__ = [
    "AFMRLLlavaForConditionalGeneration",
    "AFMRLLlavaModel",
    "flatten_feature_map",
]
