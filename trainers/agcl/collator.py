"""AGCL's training data: columns, the second view of a listing, and batches for the model.

Each training row is a listing paired with another seller's listing of the same product:
``image``/``title`` and ``pos_image``/``pos_title``; for bring-your-own data without ``pos_*`` columns
the second view is made by augmentation (random resized crop + colour jitter; same title), which
teaches less (the positive then shares the seller's photo and title style). The collator runs both
views through ``AFMRLProcessor`` as one batch of ``2B`` listings, so the model is called once per
step (DDP needs one forward per backward); rows ``:B`` are the queries, ``B:`` the candidates.
Attributes can be appended to the listing text (``text_attributes_column``) and, separately, feed
the loss (``loss_attributes_column``); both go through the one attribute-text policy
(:func:`~modeling_afmrl.attributes.canonical_attribute_text`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from transformers.utils import logging

from afmrl.errors import UserError
from modeling_afmrl.attributes import canonical_attribute_text

from .arguments import AGCLArguments
from .loss import AGCLLoss

logger = logging.get_logger(__name__)


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
        text_attributes_column: attributes appended to the first view's text (``None``: titles only).
        pos_text_attributes_column: attributes appended to the second view's text (default:
            ``text_attributes_column``; ignored when augmenting, where both views are one listing).
        loss_attributes_column: attributes handed to the loss.
        augment: make the second view by augmentation instead of reading the ``pos_*`` columns.
    """

    def __init__(
        self,
        processor,
        text_attributes_column: str | None = None,
        loss_attributes_column: str | None = None,
        pos_text_attributes_column: str | None = None,
        image_column: str = "image",
        title_column: str = "title",
        pos_image_column: str = "pos_image",
        pos_title_column: str = "pos_title",
        augment: bool = False,
        augmentation: SecondViewAugmentation | None = None,
    ):
        self.processor = processor
        self.text_attributes_column = text_attributes_column
        self.pos_text_attributes_column = pos_text_attributes_column
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
            first = [
                canonical_attribute_text(self._get(r, self.text_attributes_column)) for r in rows
            ]
            pos_col = self.pos_text_attributes_column
            if self.augment or pos_col is None:
                second = first
            else:
                second = [canonical_attribute_text(self._get(r, pos_col)) for r in rows]
            attributes = first + second
        batch = dict(
            self.processor(
                images=images + pos_images,
                text=titles + pos_titles,
                attributes=attributes,
                return_tensors="pt",
            )
        )
        batch["attribute_texts"] = (
            [canonical_attribute_text(self._get(r, self.loss_attributes_column)) for r in rows]
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


def resolve_columns(config: AGCLArguments, column_names: Sequence[str]) -> dict[str, Any]:
    """Check the training columns against the config; returns the columns to keep and the resolved
    ``loss_attributes_column`` / ``pos_text_attributes_column`` / ``augment`` settings. Errors name
    the missing column."""
    names = set(column_names)
    for name in (config.image_column, config.title_column):
        if name not in names:
            raise UserError(f"training data has no {name!r} column (columns: {sorted(names)})")
    augment = config.augment_second_view
    if augment is None:
        augment = config.pos_image_column not in names
    if not augment and config.pos_image_column not in names:
        raise UserError(
            f"training data has no {config.pos_image_column!r} column for the second view "
            f"(columns: {sorted(names)}); set augment_second_view=True to make it by augmentation"
        )
    text_col = config.text_attributes_column
    if text_col is not None and text_col not in names:
        raise UserError(
            f"attribute column {text_col!r} (text_attributes_column) is not in the training data "
            f"(columns: {sorted(names)})"
        )
    pos_text_col = config.pos_text_attributes_column
    if pos_text_col is not None and pos_text_col not in names:
        raise UserError(
            f"attribute column {pos_text_col!r} (pos_text_attributes_column) is not in the "
            f"training data (columns: {sorted(names)})"
        )
    if text_col is not None and pos_text_col is None and not augment:
        pos_text_col = f"pos_{text_col}" if f"pos_{text_col}" in names else text_col
        if pos_text_col == text_col:
            logger.warning(
                "appending %r to both views of a pair: right when both views are one listing; "
                "with pairs of two listings give the second one's attributes "
                "(pos_text_attributes_column, or a pos_%s column)",
                text_col,
                text_col,
            )
    loss_col = config.loss_attributes_column
    if loss_col is None:
        loss_col = text_col or ("teacher_attributes" if "teacher_attributes" in names else None)
    elif loss_col not in names:
        raise UserError(
            f"attribute column {loss_col!r} (loss_attributes_column) is not in the training data "
            f"(columns: {sorted(names)})"
        )
    loss = AGCLLoss(config.loss, config.weighting, config.false_negatives)
    if loss.needs_attributes and loss_col is None:
        raise UserError(
            f"loss={config.loss!r} with weighting={loss.weighting!r} and false_negatives="
            f"{loss.false_negatives!r} needs attributes, and the training data has no "
            "teacher_attributes column: set loss_attributes_column, or use weighting='none' "
            "with false_negatives='margin' or 'none'"
        )
    sampler = config.batch_sampler or ("mixed" if loss_col is not None else "random")
    if sampler in ("attributes", "mixed") and loss_col is None:
        raise UserError(f"batch_sampler={sampler!r} needs an attribute column")
    keep = [config.image_column, config.title_column, text_col, pos_text_col, loss_col]
    keep.append("listing_id")
    if not augment:
        keep += [config.pos_image_column, config.pos_title_column]
    return {
        "keep": [c for c in dict.fromkeys(keep) if c is not None and c in names],
        "loss_attributes_column": loss_col,
        "pos_text_attributes_column": pos_text_col,
        "batch_sampler": sampler,
        "augment": augment,
    }


__all__ = ["AGCLCollator", "SecondViewAugmentation", "resolve_columns"]
