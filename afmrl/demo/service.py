"""What the demo does, without any UI: search with attributes and their diff, compare two listings.

:class:`DemoService` holds a model (loaded as a Space does, :mod:`afmrl.demo.loading`), a cached
gallery (:mod:`afmrl.demo.gallery`) and the checkpoint's calibration
(:mod:`afmrl.evaluation.calibration`). Its two calls are what the Gradio app's two tabs show:

* :meth:`DemoService.search` -- a photo and/or a title -> the query's attributes (extracted by the
  checkpoint's extractor, the one generation policy of :mod:`afmrl.retrieval.attributes`, or typed
  by the user to fix a wrong one), the top-k gallery listings (:func:`afmrl.retrieval.search.search_index`)
  and, for each, which attributes agree and which differ, its probability of being the identical
  product and whether that passes the calibrated threshold;
* :meth:`DemoService.compare` -- two listings -> identical or not, the calibrated probability and
  the attribute diff.

Attributes enter the listing text as everywhere else (``title [SEP] attributes``), so they need a
title. The calibration was fitted on full listings (photo + title), so probabilities are given only
for such queries. Model calls are serialised with a lock: the app's queue already runs one at a
time, and library callers sharing a service across threads get the same guarantee.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

from afmrl.errors import UserError
from modeling_afmrl.attributes import canonical_attribute_text, parse_attributes

from .images import read_photo

#: Longest title and attribute text accepted (characters).
MAX_TITLE_CHARS = 500
MAX_ATTRIBUTE_CHARS = 1000
MAX_K = 50
ATTRIBUTE_HELP = "write them as 'key: value; key: value', e.g. 'colour: navy; size: m'"


@dataclass
class AttributeDiff:
    """Keys on which two attribute sets agree, differ, or that only one side has."""

    agree: dict[str, str] = field(default_factory=dict)
    differ: dict[str, tuple[str, str]] = field(default_factory=dict)
    only_left: dict[str, str] = field(default_factory=dict)
    only_right: dict[str, str] = field(default_factory=dict)

    def rows(self) -> list[tuple[str, str, str, str]]:
        """``(key, left, right, verdict)`` per key, differing keys first."""
        out = [(k, a, b, "differs") for k, (a, b) in self.differ.items()]
        out += [(k, v, v, "agrees") for k, v in self.agree.items()]
        out += [(k, v, "", "only left") for k, v in self.only_left.items()]
        out += [(k, "", v, "only right") for k, v in self.only_right.items()]
        return out


def attribute_diff(left: str | None, right: str | None) -> AttributeDiff:
    """Compare two attribute texts key by key (parsed and normalised; malformed parts ignored)."""
    a = parse_attributes(left or "").attributes
    b = parse_attributes(right or "").attributes
    diff = AttributeDiff()
    for key in list(a) + [k for k in b if k not in a]:
        if key in a and key in b:
            if a[key] == b[key]:
                diff.agree[key] = a[key]
            else:
                diff.differ[key] = (a[key], b[key])
        elif key in a:
            diff.only_left[key] = a[key]
        else:
            diff.only_right[key] = b[key]
    return diff


@dataclass
class Candidate:
    """One search result."""

    rank: int
    id: Any
    title: str
    score: float
    probability: float | None
    identical: bool | None
    attributes: str
    diff: AttributeDiff
    photo: str | None


@dataclass
class SearchResult:
    """The query's attributes (and where they came from), the candidates, and notes for the user."""

    attributes: str
    attributes_source: str  # "extracted" | "given" | "none"
    candidates: list[Candidate]
    notes: list[str] = field(default_factory=list)


@dataclass
class Listing:
    """A listing as the user gives it: a photo (path or PIL image) and/or a title, and attributes
    (``None`` or blank: extract them from the photo and title)."""

    photo: Any = None
    title: str | None = None
    attributes: str | None = None


@dataclass
class CompareResult:
    """Cosine ``score``, calibrated ``probability`` and verdict (``None`` without calibration)."""

    score: float
    probability: float | None
    identical: bool | None
    attributes: tuple[str, str]
    diff: AttributeDiff
    notes: list[str] = field(default_factory=list)


class DemoService:
    """Search and compare over one gallery with one model; see the module docstring.

    Args:
        model: an AFMRL model with its processor attached.
        gallery: the cached gallery (:func:`afmrl.demo.gallery.open_gallery`).
        calibration: the checkpoint's ``Calibrator`` or ``None``.
        calibration_note: why there is no calibration (shown to the user), if so.
        max_new_tokens: generation budget for the query's attributes.
    """

    def __init__(
        self,
        model: Any,
        gallery: Any,
        calibration: Any = None,
        calibration_note: str = "",
        max_new_tokens: int = 64,
    ) -> None:
        self.model = model
        self.gallery = gallery
        self.calibration = calibration
        self.notes: list[str] = [calibration_note] if calibration_note else []
        self.max_new_tokens = max_new_tokens
        self._lock = threading.Lock()
        if calibration is not None:
            used = (calibration.meta.get("encoding") or {}).get("attributes")
            if used and used != gallery.attributes:
                self.notes.append(
                    f"the calibration was fitted with {used} attributes but the gallery is indexed "
                    f"with {gallery.attributes} attributes: probabilities are approximate"
                )

    @property
    def has_extractor(self) -> bool:
        return getattr(self.model, "extractor", None) is not None

    # ----------------------------------------------------------------------------- attributes

    def listing_attributes(
        self, photo: Any, title: str | None, typed: str | None
    ) -> tuple[str, str]:
        """``(canonical text, source)`` for a listing: the user's text when given (refused with a
        one-line hint when unreadable), else the extractor's (``""`` when it wrote nothing usable).
        """
        if typed is not None and typed.strip():
            if len(typed) > MAX_ATTRIBUTE_CHARS:
                raise UserError(f"the attributes are longer than {MAX_ATTRIBUTE_CHARS} characters")
            text = canonical_attribute_text(typed)
            if not text:
                raise UserError(
                    f"could not read the attributes {typed.strip()[:80]!r}: {ATTRIBUTE_HELP}"
                )
            return text, "given"
        if photo is None or not self.has_extractor:
            return "", "none"
        from afmrl.retrieval.attributes import attribute_texts

        with self._lock:
            texts, _ = attribute_texts(
                self.model, [photo], [title or ""], max_new_tokens=self.max_new_tokens
            )
        return texts[0], "extracted" if texts[0] else "none"

    # --------------------------------------------------------------------------------- search

    def search(
        self, photo: Any = None, title: str | None = None, attributes: str | None = None, k: int = 5
    ) -> SearchResult:
        """The ``k`` most similar gallery listings for a photo and/or a title (see the module)."""
        from afmrl.retrieval.search import search_index

        photo, title = self._listing_inputs(photo, title, "the photo")
        if photo is None and not title:
            raise UserError("give a photo and/or a title to search with")
        if not isinstance(k, int) or not 1 <= k <= MAX_K:
            raise UserError(f"the number of results must be between 1 and {MAX_K}")
        text, source = self.listing_attributes(photo, title, attributes)
        notes = list(self.notes)
        if source == "none" and photo is not None and self.has_extractor:
            notes.append(
                "the extractor wrote no well-formed attributes for this listing (an untrained "
                "extractor does this): type them to search with attributes"
            )
        if text and not title:
            notes.append("attributes are appended to the title: add a title to search with them")
        with self._lock:
            hits, _ = search_index(
                self.gallery.index_folder,
                self.model,
                image=photo,
                title=title or None,
                attributes=text if title else "",
                k=min(k, self.gallery.index.count),
                index=self.gallery.index,
            )
        calibrated = self.calibration is not None and photo is not None and bool(title)
        if self.calibration is not None and not calibrated:
            notes.append(
                "the 'identical' probability needs a photo and a title (it was "
                "calibrated on full listings)"
            )
        candidates = []
        for hit in hits:
            row = self.gallery.listings.get(hit.id, {})
            other = row.get("attributes", "")
            p = float(self.calibration.probability(hit.score)) if calibrated else None
            candidates.append(
                Candidate(
                    rank=hit.rank,
                    id=hit.id,
                    title=hit.title or row.get("title", ""),
                    score=hit.score,
                    probability=p,
                    identical=None if p is None else bool(p >= self.calibration.threshold),
                    attributes=other,
                    diff=attribute_diff(text, other),
                    photo=self.gallery.photo(hit.id),
                )
            )
        return SearchResult(text, source, candidates, notes)

    # -------------------------------------------------------------------------------- compare

    def compare(self, left: Listing, right: Listing) -> CompareResult:
        """Are two listings the same product? Cosine, calibrated probability and attribute diff."""
        import torch

        sides, texts, notes, full = [], [], list(self.notes), True
        for listing, name in ((left, "listing A"), (right, "listing B")):
            photo, title = self._listing_inputs(listing.photo, listing.title, f"{name}'s photo")
            if photo is None and not title:
                raise UserError(f"{name}: give a photo and/or a title")
            text, _ = self.listing_attributes(photo, title, listing.attributes)
            inputs: dict[str, Any] = {}
            if photo is not None:
                inputs["images"] = [photo]
            if title:
                inputs["texts"] = [title]
                if text:
                    inputs["attributes"] = [text]
            with self._lock:
                sides.append(self.model.encode(**inputs))  # [1, D], L2-normalised
            texts.append(text)
            if (photo is None or not title) and self.calibration is not None:
                full = False
                notes.append(
                    f"{name} has no {'title' if photo is not None else 'photo'}: the "
                    "probability is calibrated for photo + title listings only"
                )
        score = float(torch.sum(sides[0][0] * sides[1][0]))
        p = (
            float(self.calibration.probability(score))
            if self.calibration is not None and full
            else None
        )
        return CompareResult(
            score=score,
            probability=p,
            identical=None if p is None else bool(p >= self.calibration.threshold),
            attributes=(texts[0], texts[1]),
            diff=attribute_diff(texts[0], texts[1]),
            notes=notes,
        )

    # -------------------------------------------------------------------------------- helpers

    def _listing_inputs(self, photo: Any, title: str | None, name: str) -> tuple[Any, str]:
        """A checked, downscaled photo (or ``None``) and a cleaned title."""
        title = " ".join(str(title or "").split())
        if len(title) > MAX_TITLE_CHARS:
            raise UserError(f"the title is longer than {MAX_TITLE_CHARS} characters")
        return (read_photo(photo, name=name) if photo is not None else None), title


__all__ = [
    "AttributeDiff",
    "Candidate",
    "CompareResult",
    "DemoService",
    "Listing",
    "SearchResult",
    "attribute_diff",
]
