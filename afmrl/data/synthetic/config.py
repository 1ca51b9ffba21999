"""``CatalogConfig``: everything that determines a synthetic catalogue's content.

Standard library only, so the command line reads the defaults and help without importing numpy.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from afmrl.errors import UserError

#: How a train row's second view (``pos_image`` / ``pos_title``) is chosen: another seller's listing
#: of the same product (what product matching gives a marketplace), or a second photo and title of
#: the same listing (kept only for the ablation: it teaches seller style).
TRAIN_PAIRS: tuple[str, ...] = ("cross_seller", "same_seller")


@dataclass(frozen=True)
class CatalogConfig:
    """Everything that determines a catalogue's content (same config -> same bytes)."""

    products: int = field(
        default=1000, metadata={"help": "number of products (>= 30)", "check": "positive"}
    )
    seed: int = field(default=0, metadata={"help": "random seed", "check": "non_negative"})
    image_size: int = field(
        default=128, metadata={"help": "image side in pixels (64..1024)", "check": "positive"}
    )
    teacher_drop: float = field(
        default=0.10,
        metadata={"help": "fraction of attribute keys the simulated teacher leaves out",
                  "check": "fraction"},
    )  # fmt: skip
    teacher_wrong: float = field(
        default=0.05,
        metadata={"help": "fraction of teacher values replaced by a wrong value of the same key",
                  "check": "fraction"},
    )  # fmt: skip
    validation_fraction: float = field(
        default=0.2,
        metadata={"help": "share of families in validation_query / validation_gallery",
                  "check": "fraction"},
    )  # fmt: skip
    train_pairs: str = field(
        default="cross_seller",
        metadata={
            "help": "second view of a train row: another seller's listing of the same product "
            "(cross_seller), or a second photo and title of the same listing (same_seller, an "
            "ablation: it teaches seller style)",
            "choices": ("cross_seller", "same_seller"),
        },
    )
    test_fraction: float = field(
        default=0.2,
        metadata={"help": "share of families in query / gallery", "check": "fraction"},
    )

    def validate(self) -> CatalogConfig:
        """Raise ``ValueError`` naming the bad field; return self when all is well."""
        if not isinstance(self.products, int) or self.products < 30:
            raise UserError(f"products must be an integer >= 30, got {self.products!r}")
        if not isinstance(self.seed, int) or self.seed < 0:
            raise UserError(f"seed must be a non-negative integer, got {self.seed!r}")
        if not isinstance(self.image_size, int) or not 64 <= self.image_size <= 1024:
            raise UserError(f"image_size must be an integer in [64, 1024], got {self.image_size!r}")
        for name in ("teacher_drop", "teacher_wrong"):
            value = getattr(self, name)
            if not 0.0 <= value < 1.0:
                raise UserError(f"{name} must be in [0, 1), got {value!r}")
        for name in ("validation_fraction", "test_fraction"):
            value = getattr(self, name)
            if not 0.0 < value < 1.0:
                raise UserError(f"{name} must be in (0, 1), got {value!r}")
        if self.train_pairs not in TRAIN_PAIRS:
            raise UserError(f"train_pairs must be one of {TRAIN_PAIRS}, got {self.train_pairs!r}")
        if self.validation_fraction + self.test_fraction >= 0.9:
            raise UserError(
                "validation_fraction + test_fraction must leave at least 10% for train, got "
                f"{self.validation_fraction} + {self.test_fraction}"
            )
        return self

    def to_dict(self) -> dict:
        return asdict(self)


__all__ = ["CatalogConfig"]
