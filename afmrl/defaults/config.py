"""Settings of the embedded default checkpoint (``afmrl init``), defined once with their help.

Standard library only, so the command line reads these defaults without importing torch.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass
class EmbeddedDefaultConfig:
    """How the embedded default is built (see :func:`afmrl.defaults.build_embedded_default`)."""

    embed_dim: int = field(
        default=256, metadata={"help": "listing embedding size", "check": "positive"}
    )
    image_size: int = field(
        default=128,
        metadata={"help": "encoder image side in pixels (a multiple of 32)", "check": "positive"},
    )
    extractor_image_size: int = field(
        default=128,
        metadata={
            "help": "extractor image side (128 px: an 8x8 map = 64 image tokens at stage -2)",
            "check": "positive",
        },
    )
    feature_layer: int = field(
        default=-2,
        metadata={
            "help": "EfficientNet stage the extractor reads (-2: 112 channels at stride 16, "
            "-1: 320 at stride 32)"
        },
    )
    vocab_size: int = field(
        default=2048, metadata={"help": "extractor tokenizer size (>= 512)", "check": "positive"}
    )
    attribute_tokens: bool = field(
        default=True,
        metadata={
            "help": "extractor tokenizer with one token per attribute key / value seen in the "
            "catalogue's teacher attributes: shorter sequences, title words = answer tokens"
        },
    )
    seed: int = field(default=0, metadata={"help": "seed of the randomly initialised parts"})

    def __post_init__(self) -> None:
        from afmrl.errors import UserError

        for name in ("embed_dim", "image_size", "extractor_image_size", "vocab_size"):
            if getattr(self, name) < 1:
                raise UserError(f"{name} must be a positive integer, got {getattr(self, name)}")
        if self.image_size % 32:
            raise UserError(f"image_size must be a multiple of 32, got {self.image_size}")
        if self.extractor_image_size % 32:
            raise UserError(
                f"extractor_image_size must be a multiple of 32, got {self.extractor_image_size}"
            )
        if not -5 <= self.feature_layer <= -1:
            raise UserError(
                f"feature_layer must be a stage index in -5..-1, got {self.feature_layer}"
            )
        if self.vocab_size < 512:
            raise UserError(
                f"vocab_size must be at least 512 (the byte alphabet and the chat tokens), got "
                f"{self.vocab_size}"
            )

    def to_dict(self) -> dict:
        return asdict(self)


__all__ = ["EmbeddedDefaultConfig"]
