"""Extractor-SFT data: (photo, title) -> the teacher's attribute string, as chat batches.

The prompt is :func:`modeling_afmrl.attributes.extractor_messages` (the one used by extraction,
RAR and the demo); the answer is the teacher's attributes in canonical form
(:func:`~modeling_afmrl.attributes.canonical_attribute_text`; a malformed teacher string skips the
row) followed by the chat's end token. Labels cover the answer tokens only (prompt, image and
padding positions are ``-100``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import Dataset as TorchDataset

from modeling_afmrl.attributes import canonical_attribute_text, extractor_messages

from .config import ExtractorSFTConfig

IGNORE_INDEX = -100


def training_pairs(
    train_split, config: ExtractorSFTConfig
) -> tuple[list[Any], list[str], list[str], int]:
    """(images, titles, targets, skipped) from a training split, both listings of a pair; a view
    without a usable target is skipped (and counted)."""
    if config.target_column not in train_split.column_names:
        raise ValueError(
            f"the training split has no {config.target_column!r} column (columns: "
            f"{train_split.column_names}); run `afmrl extract` with a teacher first or pass "
            "--target-column"
        )
    views = [("image", "title", config.target_column)]
    if config.use_pos_view and {"pos_image", "pos_title"} <= set(train_split.column_names):
        # The second listing of a pair has its own teacher attributes when the data has them
        # (pairs of two sellers' listings); otherwise it shares the first listing's.
        pos_target = f"pos_{config.target_column}"
        if pos_target not in train_split.column_names:
            pos_target = config.target_column
        views.append(("pos_image", "pos_title", pos_target))
    images: list[Any] = []
    titles: list[str] = []
    answers: list[str] = []
    skipped = 0
    for image_col, title_col, target_col in views:
        targets = [canonical_attribute_text(t or "") for t in train_split[target_col]]
        keep = [i for i, t in enumerate(targets) if t]
        skipped += len(targets) - len(keep)
        col_images, col_titles = train_split[image_col], train_split[title_col]
        images += [col_images[i] for i in keep]
        titles += [str(col_titles[i] or "") for i in keep]
        answers += [targets[i] for i in keep]
    return images, titles, answers, skipped


def _answer_ids(tokenizer, target: str, max_tokens: int) -> list[int]:
    ids = tokenizer(target, add_special_tokens=False)["input_ids"][:max_tokens]
    return [*ids, tokenizer.eos_token_id]


def _truncate(tokenizer, text: str, max_tokens: int) -> str:
    ids = tokenizer(str(text or ""), add_special_tokens=False)["input_ids"]
    return text if len(ids) <= max_tokens else tokenizer.decode(ids[:max_tokens])


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


__all__ = ["IGNORE_INDEX", "PixelCollator", "PixelDataset", "training_pairs"]
