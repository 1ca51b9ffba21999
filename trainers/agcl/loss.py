"""AGCL: attribute-guided contrastive loss (AFMRL stage 1), and the plain InfoNCE it generalises.

For a batch of ``B`` listings seen twice (query view ``q_i``, candidate view ``c_i``), with cosine
similarities ``s_ij = cos(q_i, c_j)``, logits ``l_ij = scale * s_ij`` and attribute texts ``A_i``,
the query-to-candidate loss of anchor ``i`` is

    L_i = -log( w_ii exp(l_ii) / sum_{j not masked} w_ij exp(l_ij) ),
    w_ij = exp(1 + tanh(BM25(A_i, A_j))),

computed as ``logsumexp_j(l_ij + log w_ij) - (l_ii + log w_ii)`` (the weights enter as log-weights
added to the logits, so the loss is a cross-entropy and stays finite). The candidate-to-query loss is
the same with the roles swapped (anchor ``c_j``, BM25 of ``A_j`` against ``A_i``), and the loss is the
mean of the two directions averaged over anchors (and over the Matryoshka prefix sizes, when given).

Design decisions (``docs/design.md`` explains the method):

* **The positive carries its weight too.** The denominator sums over every unmasked ``j``
  *including* ``j = i``, weighted ``w_ii`` (BM25 of a listing against its own attributes, the
  largest weight in its row), and the numerator carries the same ``w_ii``. The numerator's weight
  only shifts the loss by a constant (weights depend on attributes, never on embeddings), so the
  gradients equal those of the paper's form with an unweighted numerator; including it makes the
  loss a proper cross-entropy (``>= 0``, ``0`` when every negative is masked). Relative to its
  positive, a negative with no attribute overlap is weighted down by up to ``e``, an attribute
  twin is weighted about as much as the positive: BM25-close negatives count as hard samples.
* **BM25 terms are ``key=value`` pairs** (:func:`trainers.agcl.bm25.attribute_terms`), with statistics from the
  batch (the documents scored) or a corpus (:class:`~trainers.agcl.bm25.BM25Statistics`).
* **False-negative filters** remove negative ``j`` of anchor ``i`` from the denominator (the
  positive is never masked): ``margin`` when ``s_ij > s_ii + delta`` (cosine similarities, computed
  without gradient at the full embedding size); ``attributes`` when the two attribute dicts agree
  on every shared key and share at least ``attribute_overlap`` of their keys
  (:func:`attributes_agree`); ``both`` masks when either rule fires; ``none``.
* **Options the paper leaves open** (defaults = the paper's form above):
  ``bm25_normalization="self"`` divides ``BM25(A_i, A_j)`` by the anchor's self-score
  ``BM25(A_i, A_i)`` before the tanh (a listing agreeing on every term scores 1, an attribute twin
  about ``(n-1)/n`` of the idf mass, a listing sharing only the category much less), fixing the
  saturation of raw BM25 over ``key=value`` terms (two same-category listings already score
  ``tanh > 0.9``); ``bm25_scale`` multiplies the score inside the tanh and ``weight_strength``
  the whole log-weight (``log w = strength * (1 + tanh(scale * score))``); ``attribute_keys``
  restricts the keys the weighting and the attribute filter read. The ``margin_compatible`` filter
  masks a margin hit only when the two attribute dicts do not contradict each other (no shared key
  with different values), so an attribute twin that outscores the positive (same seller, other
  variant) stays a negative. ``false_negative_handling="attract"`` keeps flagged false negatives
  in the denominator and pulls them in as extra positives (SupCon-style average over an anchor's
  positives) instead of removing them (the paper's choice); see :func:`attracted_info_nce_rows`.
* ``loss="infonce"`` turns weighting and filtering off: the plain symmetric CLIP / VLM2Vec loss
  through the same code path (``cross_entropy(l, arange)`` in both directions).

Everything is a pure function of its inputs; :class:`AGCLLoss` only holds the settings.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from modeling_afmrl.attributes import (
    canonical_attribute_text,
    normalize_attributes,
    parse_attributes,
)

from .arguments import (
    AGCL_DEFAULTS,
    BM25_NORMALIZATIONS,
    FALSE_NEGATIVE_FILTERS,
    FALSE_NEGATIVE_HANDLING,
    LOSSES,
    WEIGHTINGS,
)
from .bm25 import (
    BM25_B,
    BM25_K1,
    BM25Statistics,
    attribute_terms,
    bm25_matrix,
    bm25_self_scores,
    bm25_statistics,
    normalize_bm25,
)

#: An attribute string, a dict, or nothing, per listing.
Attributes = str | Mapping[str, str] | None


# --------------------------------------------------------------------------------------------
# Pure helpers
# --------------------------------------------------------------------------------------------


def select_attribute_keys(
    attributes: Mapping[str, str], keys: Sequence[str] | None
) -> dict[str, str]:
    """The pairs of ``attributes`` whose key is in ``keys`` (all of them when ``keys`` is None)."""
    if keys is None:
        return dict(attributes)
    wanted = set(keys)
    return {k: v for k, v in attributes.items() if k in wanted}


def attribute_dict(attributes: Attributes) -> dict[str, str]:
    """Normalised attribute dict of a string, a dict or ``None``; a malformed string gives ``{}``
    (the policy of :func:`~modeling_afmrl.attributes.canonical_attribute_text`)."""
    if attributes is None:
        return {}
    if isinstance(attributes, Mapping):
        return normalize_attributes(attributes)
    if isinstance(attributes, str):
        return dict(parse_attributes(canonical_attribute_text(attributes)).attributes)
    raise TypeError(f"attributes must be strings, dicts or None, got {type(attributes).__name__}")


def hard_negative_log_weights(
    bm25: torch.Tensor, scale: float = 1.0, strength: float = 1.0
) -> torch.Tensor:
    """``log w = strength * (1 + tanh(scale * BM25))``; the paper's ``w = exp(1 + tanh(BM25))``
    (in ``[e, e^2)`` for BM25 >= 0) at ``scale = strength = 1``. Same shape as ``bm25``."""
    return strength * (1.0 + torch.tanh(scale * bm25))


def margin_false_negatives(similarity: torch.Tensor, delta: float) -> torch.Tensor:
    """``[B, B]`` bool: negative ``j`` of anchor row ``i`` scores above ``s_ii + delta``.

    ``similarity[i, j]`` is anchor ``i`` against candidate ``j`` (row ``i``'s positive at ``j = i``);
    the diagonal is never masked.
    """
    sim = similarity.detach()
    mask = sim > sim.diagonal().unsqueeze(1) + delta
    return mask.fill_diagonal_(False)


def attributes_agree(a: Mapping[str, str], b: Mapping[str, str], min_overlap: float = 0.8) -> bool:
    """AGCL's attribute false-negative rule: do ``a`` and ``b`` describe the same product?

    True when the keys both state cover at least ``min_overlap`` of the keys either states, and
    the two agree on every one of them. Listings with no shared key never agree; two empty
    dicts do not either. The overlap requirement keeps a near-identical sibling (same family, one
    attribute different) from matching just because one side omitted the attribute that differs.
    """
    if not 0.0 <= min_overlap <= 1.0:
        raise ValueError(f"min_overlap must be in [0, 1], got {min_overlap!r}")
    shared = set(a) & set(b)
    if not shared or len(shared) < min_overlap * len(set(a) | set(b)):
        return False
    return all(a[k] == b[k] for k in shared)


def attribute_false_negatives(
    query_attributes: Sequence[Mapping[str, str]],
    candidate_attributes: Sequence[Mapping[str, str]],
    min_overlap: float = 0.8,
) -> torch.Tensor:
    """``[B, B]`` bool: ``attributes_agree(A_i, A_j)`` off the diagonal (symmetric in i, j)."""
    n = len(query_attributes)
    if len(candidate_attributes) != n:
        raise ValueError(
            f"got {n} query and {len(candidate_attributes)} candidate attribute entries"
        )
    mask = torch.zeros(n, n, dtype=torch.bool)
    for i, a in enumerate(query_attributes):
        if not a:
            continue
        for j, c in enumerate(candidate_attributes):
            if i != j and c and attributes_agree(a, c, min_overlap):
                mask[i, j] = True
    return mask


def attribute_conflicts(
    query_attributes: Sequence[Mapping[str, str]],
    candidate_attributes: Sequence[Mapping[str, str]],
) -> torch.Tensor:
    """``[B, B]`` bool: the two dicts state some shared key with different values.

    The complement is "compatible as far as both say"; two listings with no shared key (or an
    empty dict) never conflict. The diagonal is computed like any other entry.
    """
    n, m = len(query_attributes), len(candidate_attributes)
    out = torch.zeros(n, m, dtype=torch.bool)
    for i, a in enumerate(query_attributes):
        if not a:
            continue
        for j, c in enumerate(candidate_attributes):
            if c and any(a[k] != c[k] for k in a.keys() & c.keys()):
                out[i, j] = True
    return out


def weighted_info_nce_rows(
    logits: torch.Tensor, log_weights: torch.Tensor | None = None, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Per-anchor loss ``[B]`` for ``[B, B]`` logits whose row ``i`` has its positive at column ``i``.

    ``-log(w_ii e^{l_ii} / sum_{j unmasked} w_ij e^{l_ij})`` via ``logsumexp``; masked entries
    (``mask[i, j]`` True, never the diagonal) leave the denominator.
    """
    z = logits if log_weights is None else logits + log_weights.to(logits.dtype)
    if mask is not None:
        eye = torch.eye(z.shape[0], dtype=torch.bool, device=z.device)
        z = z.masked_fill(mask.to(z.device) & ~eye, float("-inf"))
    return torch.logsumexp(z, dim=1) - z.diagonal()


def attracted_info_nce_rows(
    logits: torch.Tensor, log_weights: torch.Tensor | None, positives: torch.Tensor
) -> torch.Tensor:
    """Per-anchor loss ``[B]`` when flagged false negatives become extra positives (attraction).

    ``positives[i, j]`` (``[B, B]`` bool; the diagonal is always a positive) marks the candidates
    anchor ``i`` is pulled towards; every candidate stays in the denominator. Each positive
    contributes its own cross-entropy term, averaged over the anchor's positives (SupCon's
    ``L_out``): ``mean_{p in P_i} [logsumexp_j z_ij - z_ip]`` with ``z = logits + log w``. With only
    the diagonal flagged this is exactly :func:`weighted_info_nce_rows` without a mask.
    """
    z = logits if log_weights is None else logits + log_weights.to(logits.dtype)
    eye = torch.eye(z.shape[0], dtype=torch.bool, device=z.device)
    pos = positives.to(z.device) | eye
    lse = torch.logsumexp(z, dim=1, keepdim=True)
    terms = (lse - z).masked_fill(~pos, 0.0)
    return terms.sum(dim=1) / pos.sum(dim=1)


def in_batch_accuracy(similarity: torch.Tensor) -> torch.Tensor:
    """Share of anchors (both directions) whose own positive scores highest in the batch."""
    target = torch.arange(similarity.shape[0], device=similarity.device)
    sim = similarity.detach()
    return ((sim.argmax(1) == target).float().mean() + (sim.argmax(0) == target).float().mean()) / 2


def masked_pairs(mask: torch.Tensor, mask_t: torch.Tensor) -> torch.Tensor:
    """Listing pairs ``(i, j)`` masked in either direction: ``mask | mask_t.T`` (``[B, B]`` bool)."""
    return mask | mask_t.T


# --------------------------------------------------------------------------------------------
# The module
# --------------------------------------------------------------------------------------------


@dataclass
class AGCLLossOutput:
    """What :class:`AGCLLoss` returns.

    Attributes:
        loss: scalar loss (mean of both directions, averaged over Matryoshka dims).
        logits: ``[B, B]`` scaled similarities ``scale * cos(q_i, c_j)`` at the full size.
        log_weights: ``[B, B]`` log-weights of the query-to-candidate direction (``None`` unweighted).
        mask: ``[B, B]`` bool, negative ``j`` masked for query anchor ``i``.
        mask_t: ``[B, B]`` bool, negative ``i`` masked for candidate anchor ``j`` (row = anchor ``j``).
        num_masked: masked (anchor, negative) entries over both directions.
        accuracy: in-batch top-1 accuracy over both directions.
    """

    loss: torch.Tensor
    logits: torch.Tensor
    log_weights: torch.Tensor | None
    mask: torch.Tensor
    mask_t: torch.Tensor
    num_masked: torch.Tensor
    accuracy: torch.Tensor


class AGCLLoss(nn.Module):
    """Symmetric attribute-guided InfoNCE over a batch of ``(query, candidate)`` embedding pairs.

    Args:
        loss: ``"agcl"`` or ``"infonce"`` (plain CLIP loss: no weighting, no filter).
        weighting: ``"bm25"`` or ``"none"`` (default for agcl: ``"none"``; see below).
        false_negatives: ``"margin"``, ``"attributes"``, ``"both"``, ``"margin_compatible"``
            (margin hits whose attributes do not conflict) or ``"none"`` (default for agcl:
            ``"attributes"``).
        delta: margin of the ``margin`` filter, on cosine similarity.
        attribute_overlap: share of keys two listings must both state for the ``attributes`` filter.
        bm25_statistics: corpus statistics for BM25; ``None`` uses the batch's.
        bm25_k1, bm25_b: BM25 parameters.
        bm25_normalization: ``"none"`` (paper) or ``"self"`` (divide by the anchor's self-score).
        bm25_scale: multiplier of the (normalised) BM25 inside the tanh.
        weight_strength: multiplier of the log-weight.
        attribute_keys: keys the weighting and the attribute filters read (``None``: all).
        false_negative_handling: ``"remove"`` (paper: masked out of the denominator) or
            ``"attract"`` (the default: kept in the denominator and treated as extra positives,
            see :func:`attracted_info_nce_rows`).

    The defaults are the settings chosen on the default catalogue's validation split
    (:data:`~trainers.agcl.arguments.AGCL_DEFAULTS`); the paper's form is
    ``weighting="bm25", false_negatives="both", false_negative_handling="remove"``
    (:data:`~trainers.agcl.arguments.PAPER_FORM`). ``docs/agcl.md`` has the measurements.
    """

    def __init__(
        self,
        loss: str = "agcl",
        weighting: str | None = None,
        false_negatives: str | None = None,
        delta: float = 0.1,
        attribute_overlap: float = 0.8,
        bm25_statistics: BM25Statistics | None = None,
        bm25_k1: float = BM25_K1,
        bm25_b: float = BM25_B,
        bm25_normalization: str = "none",
        bm25_scale: float = 1.0,
        weight_strength: float = 1.0,
        attribute_keys: Sequence[str] | None = None,
        false_negative_handling: str = "attract",
    ):
        super().__init__()
        if loss not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")
        if loss == "infonce":
            for name, value in (("weighting", weighting), ("false_negatives", false_negatives)):
                if value not in (None, "none"):
                    raise ValueError(
                        f"loss='infonce' is the plain CLIP loss: {name}={value!r} needs loss='agcl'"
                    )
            weighting, false_negatives = "none", "none"
        weighting = AGCL_DEFAULTS["weighting"] if weighting is None else weighting
        false_negatives = (
            AGCL_DEFAULTS["false_negatives"] if false_negatives is None else false_negatives
        )
        if weighting not in WEIGHTINGS:
            raise ValueError(f"weighting must be one of {WEIGHTINGS}, got {weighting!r}")
        if false_negatives not in FALSE_NEGATIVE_FILTERS:
            raise ValueError(
                f"false_negatives must be one of {FALSE_NEGATIVE_FILTERS}, got {false_negatives!r}"
            )
        if not 0.0 <= attribute_overlap <= 1.0:
            raise ValueError(f"attribute_overlap must be in [0, 1], got {attribute_overlap!r}")
        if bm25_normalization not in BM25_NORMALIZATIONS:
            raise ValueError(
                f"bm25_normalization must be one of {BM25_NORMALIZATIONS}, got {bm25_normalization!r}"
            )
        if false_negative_handling not in FALSE_NEGATIVE_HANDLING:
            raise ValueError(
                f"false_negative_handling must be one of {FALSE_NEGATIVE_HANDLING}, got "
                f"{false_negative_handling!r}"
            )
        if isinstance(attribute_keys, str):
            raise TypeError("attribute_keys must be a list of keys, not one string")
        self.loss_type = loss
        self.weighting = weighting
        self.false_negatives = false_negatives
        self.delta = float(delta)
        self.attribute_overlap = float(attribute_overlap)
        self.bm25_statistics = bm25_statistics
        self.bm25_k1 = float(bm25_k1)
        self.bm25_b = float(bm25_b)
        self.bm25_normalization = bm25_normalization
        self.bm25_scale = float(bm25_scale)
        self.weight_strength = float(weight_strength)
        self.attribute_keys = tuple(attribute_keys) if attribute_keys is not None else None
        self.false_negative_handling = false_negative_handling

    @property
    def needs_attributes(self) -> bool:
        return self.weighting == "bm25" or self.false_negatives in (
            "attributes",
            "both",
            "margin_compatible",
        )

    def extra_repr(self) -> str:
        return (
            f"loss={self.loss_type}, weighting={self.weighting}, "
            f"false_negatives={self.false_negatives}, delta={self.delta}, "
            f"attribute_overlap={self.attribute_overlap}, "
            f"bm25_statistics={'corpus' if self.bm25_statistics else 'batch'}, "
            f"bm25_normalization={self.bm25_normalization}, bm25_scale={self.bm25_scale}, "
            f"weight_strength={self.weight_strength}, attribute_keys={self.attribute_keys}, "
            f"false_negative_handling={self.false_negative_handling}"
        )

    def forward(
        self,
        query_embeds: torch.Tensor,
        candidate_embeds: torch.Tensor,
        query_attributes: Sequence[Attributes] | None = None,
        candidate_attributes: Sequence[Attributes] | None = None,
        logit_scale: torch.Tensor | float = 1.0,
        matryoshka_dims: Sequence[int] | None = None,
    ) -> AGCLLossOutput:
        """Loss of a batch.

        Args:
            query_embeds, candidate_embeds: ``[B, D]`` embeddings of the two views (row ``i`` of
                each is listing ``i``); normalised here (cosine similarity).
            query_attributes, candidate_attributes: ``B`` attribute strings / dicts per side;
                ``candidate_attributes`` defaults to ``query_attributes``.
            logit_scale: the multiplier of the cosine similarities (``exp`` of the model's
                learnable log-scale, already clamped), scalar tensor or float.
            matryoshka_dims: prefix sizes to average the loss over (default: the full size only).
        """
        if query_embeds.ndim != 2 or query_embeds.shape != candidate_embeds.shape:
            raise ValueError(
                "query_embeds and candidate_embeds must both be [B, D], got "
                f"{tuple(query_embeds.shape)} and {tuple(candidate_embeds.shape)}"
            )
        n, dim = query_embeds.shape
        if n == 0:
            raise ValueError("AGCLLoss got an empty batch")
        dims = sorted(set(matryoshka_dims or [dim]), reverse=True)
        if any(not 0 < d <= dim for d in dims):
            raise ValueError(f"matryoshka_dims must be in [1, {dim}], got {list(dims)}")

        log_w = log_w_t = None
        conflicts = None
        mask = torch.zeros(n, n, dtype=torch.bool, device=query_embeds.device)
        mask_t = mask.clone()
        if self.needs_attributes:
            q_dicts, c_dicts = self._attribute_dicts(query_attributes, candidate_attributes, n)
            same_sides = c_dicts is q_dicts
            if self.attribute_keys is not None:
                q_dicts = [select_attribute_keys(a, self.attribute_keys) for a in q_dicts]
                c_dicts = (
                    q_dicts
                    if same_sides
                    else [select_attribute_keys(a, self.attribute_keys) for a in c_dicts]
                )
            if self.weighting == "bm25":
                q_terms = [attribute_terms(a) for a in q_dicts]
                c_terms = q_terms if same_sides else [attribute_terms(a) for a in c_dicts]
                bm25 = self._bm25(q_terms, c_terms)
                bm25_t = bm25 if same_sides else self._bm25(c_terms, q_terms)
                if self.bm25_normalization == "self":
                    bm25 = normalize_bm25(bm25, self._self_scores(q_terms, c_terms))
                    bm25_t = normalize_bm25(bm25_t, self._self_scores(c_terms, q_terms))
                log_w = self._log_weights(bm25).to(query_embeds.device)
                log_w_t = self._log_weights(bm25_t).to(query_embeds.device)
            if self.false_negatives in ("attributes", "both"):
                attr = attribute_false_negatives(q_dicts, c_dicts, self.attribute_overlap)
                mask |= attr.to(mask.device)
                mask_t |= attr.T.to(mask.device)
            if self.false_negatives == "margin_compatible":
                conflicts = attribute_conflicts(q_dicts, c_dicts).to(mask.device)

        q = F.normalize(query_embeds, dim=-1)
        c = F.normalize(candidate_embeds, dim=-1)
        sim = q @ c.T
        if self.false_negatives in ("margin", "both", "margin_compatible"):
            margin = margin_false_negatives(sim, self.delta)
            margin_t = margin_false_negatives(sim.T, self.delta)
            if conflicts is not None:
                margin &= ~conflicts
                margin_t &= ~conflicts.T
            mask |= margin
            mask_t |= margin_t

        losses = []
        for d in dims:
            s = sim if d == dim else F.normalize(q[:, :d], dim=-1) @ F.normalize(c[:, :d], dim=-1).T
            logits = logit_scale * s
            if self.false_negative_handling == "attract":
                rows = attracted_info_nce_rows(logits, log_w, mask).mean()
                cols = attracted_info_nce_rows(logits.T, log_w_t, mask_t).mean()
            else:
                rows = weighted_info_nce_rows(logits, log_w, mask).mean()
                cols = weighted_info_nce_rows(logits.T, log_w_t, mask_t).mean()
            losses.append((rows + cols) / 2)
        loss = losses[0] if len(losses) == 1 else torch.stack(losses).mean()
        return AGCLLossOutput(
            loss=loss,
            logits=(logit_scale * sim).detach(),
            log_weights=log_w,
            mask=mask,
            mask_t=mask_t,
            num_masked=mask.sum() + mask_t.sum(),
            accuracy=in_batch_accuracy(sim),
        )

    def _attribute_dicts(self, query_attributes, candidate_attributes, n: int):
        if query_attributes is None:
            raise ValueError(
                f"AGCLLoss(weighting={self.weighting!r}, false_negatives="
                f"{self.false_negatives!r}) needs attribute texts: pass query_attributes (or use "
                "weighting='none' with false_negatives='margin'/'none')"
            )
        q_dicts = _dicts(query_attributes, n, "query_attributes")
        if candidate_attributes is None or candidate_attributes is query_attributes:
            return q_dicts, q_dicts
        c_dicts = _dicts(candidate_attributes, n, "candidate_attributes")
        return q_dicts, (q_dicts if c_dicts == q_dicts else c_dicts)

    def _bm25(self, queries, documents) -> torch.Tensor:
        return bm25_matrix(queries, documents, self.bm25_statistics, self.bm25_k1, self.bm25_b)

    def _self_scores(self, anchors, documents) -> torch.Tensor:
        """Anchors' BM25 against themselves, under the statistics their row is scored with."""
        stats = self.bm25_statistics
        if stats is None:
            stats = bm25_statistics(documents)
        return bm25_self_scores(anchors, stats, self.bm25_k1, self.bm25_b)

    def _log_weights(self, scores: torch.Tensor) -> torch.Tensor:
        return hard_negative_log_weights(scores, self.bm25_scale, self.weight_strength)


def _dicts(attributes: Sequence[Attributes], n: int, name: str) -> list[dict[str, str]]:
    if isinstance(attributes, (str, Mapping)):
        raise TypeError(
            f"{name} must be a list with one entry per listing, got one {type(attributes).__name__}"
        )
    attributes = list(attributes)
    if len(attributes) != n:
        raise ValueError(f"{name} has {len(attributes)} entries for a batch of {n}")
    return [attribute_dict(a) for a in attributes]


__all__ = [
    "BM25_NORMALIZATIONS",
    "FALSE_NEGATIVE_FILTERS",
    "FALSE_NEGATIVE_HANDLING",
    "LOSSES",
    "WEIGHTINGS",
    "AGCLLoss",
    "AGCLLossOutput",
    "attracted_info_nce_rows",
    "attribute_conflicts",
    "attribute_dict",
    "attribute_false_negatives",
    "attributes_agree",
    "hard_negative_log_weights",
    "in_batch_accuracy",
    "margin_false_negatives",
    "masked_pairs",
    "select_attribute_keys",
    "weighted_info_nce_rows",
]
