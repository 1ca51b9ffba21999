"""The RAR reward: how much a generated attribute string helps the frozen encoder retrieve.

For each completion of TRL's ``GRPOTrainer`` (:class:`RetrievalReward` is a reward function:
``reward(prompts, completions, **columns) -> list[float]``):

1. the text is read with the one policy for generated attributes
   (:func:`~modeling_afmrl.attributes.canonical_attribute_text`); a malformed or empty completion
   gets ``format_penalty`` (-0.1) and nothing else is computed for it;
2. the attributes are appended to the query listing exactly as retrieval does: the photo, the
   title and the attributes go through :func:`afmrl.retrieval.encoding.encode_batch`, the
   function evaluation encodes with (``model.encode(images=, texts=, attributes=)``);
3. the reward gallery is searched exactly (:class:`~afmrl.retrieval.index.RetrievalIndex`, the
   index evaluation uses; the query's own listing, when the gallery holds it, is dropped from its
   ranking as evaluation drops a query's own ``listing_id``);
4. the ranking is scored with the evaluation's metric code
   (:func:`~afmrl.evaluation.metrics.relevance_matrix`, then
   :func:`~afmrl.evaluation.metrics.hits_at_k` or
   :func:`~afmrl.evaluation.metrics.reciprocal_ranks`), so a reward's recall is the evaluation's
   Recall@k (the hit rate) of the same ranking.

Modes: ``recall`` (the paper: 1 when the positive is in the top k), ``reciprocal_rank`` (1/rank of
the positive, a dense signal), ``gain`` (the completion's ``gain_metric`` minus that of the SFT
extractor's attributes for the same listing). Under TRL's group baseline a per-listing constant
cancels out of the advantages, so ``gain`` trains like its metric; it makes the logged reward read
as "better than SFT" (> 0) or not.

On the train split (:func:`build_pair_reward`) the positive of a row is its pair partner (another
seller's listing of the same product) and the reward gallery is the partners of the train rows,
each carrying the attributes the SFT extractor generated once
(:func:`~afmrl.retrieval.attributes.generate_attributes`). A gallery smaller than the train split
is drawn by whole categories (by teacher attributes), so a query's same-category neighbours -- its
hard negatives -- are in the gallery with it. Listings are identified by the content of their photo
and title (the train split has no ids for the partners). Other listings of the query's product
that are not its partner stay in the gallery unlabelled (the train split does not link them); they
share the positive's attributes, so they move with it.

Gallery embeddings are cached and recomputed only when the encoder's weights change (an
in-place change of any encoder tensor is detected from its version counter); query embeddings are
cached per (photo, title, attribute text), so a group's repeated completions are encoded once.
"""

from __future__ import annotations

import math
import random
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from afmrl.evaluation.metrics import hits_at_k, reciprocal_ranks, relevance_matrix
from afmrl.io import fingerprint
from afmrl.retrieval.attributes import (
    DEFAULT_MAX_NEW_TOKENS,
    GeneratedAttributes,
    generate_attributes,
)
from afmrl.retrieval.encoding import encode_batch, encode_split
from afmrl.retrieval.index import RetrievalIndex
from modeling_afmrl.attributes import canonical_attribute_text, parse_attributes

from .arguments import GAIN_METRICS, REWARD_MODES

if TYPE_CHECKING:
    from datasets import Dataset

#: Query embeddings kept per (listing, attribute text) between calls.
QUERY_CACHE_SIZE = 50_000


def default_recall_k(gallery_size: int, fraction: float) -> int:
    """``k`` of the recall reward: ``fraction`` of the gallery, at least 1.

    The paper's k=50 is a tiny share of M5Product's gallery; k must scale with the gallery, or a
    small gallery makes the reward 1 for every completion (no signal) and a large one 0.
    """
    return max(1, round(fraction * gallery_size))


def completion_text(completion: Any) -> str:
    """The text of a TRL completion: a string, or a conversational ``[{"role", "content"}]``."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, Sequence) and completion:
        content = completion[-1].get("content", "") if isinstance(completion[-1], Mapping) else ""
        if isinstance(content, list):  # content blocks
            return "".join(str(b.get("text") or "") for b in content if isinstance(b, Mapping))
        return str(content or "")
    return ""


def _image_bytes(image: Any) -> bytes:
    """The bytes that identify a photo: the file's bytes, or the decoded pixels."""
    if isinstance(image, Mapping):
        if image.get("bytes"):
            return bytes(image["bytes"])
        if image.get("path"):
            return Path(image["path"]).read_bytes()
    if isinstance(image, str | Path):
        return Path(image).read_bytes()
    if hasattr(image, "tobytes") and hasattr(image, "size"):  # PIL
        return f"{image.mode}{image.size}".encode() + image.tobytes()
    raise TypeError(f"cannot identify an image of type {type(image).__name__}")


def listing_key(image: Any, title: str | None) -> str:
    """Identifies a listing by its content: the photo's bytes and the title."""
    return fingerprint(_image_bytes(image), str(title or ""))


@dataclass
class RewardQuery:
    """What the reward knows about one query listing.

    Attributes:
        positives: gallery ids that count as retrieved correctly.
        own: the gallery id of the query's own listing (dropped from its ranking), if any.
        baseline: the SFT extractor's attribute text for this listing (``gain`` mode).
    """

    positives: frozenset[Hashable]
    own: Hashable | None = None
    baseline: str = ""


@dataclass
class RewardGallery:
    """The listings the reward retrieves from: ids, one catalogue row each, attribute texts.

    ``rows`` is a ``datasets.Dataset`` with ``image`` and ``title`` columns (one row per id).
    """

    ids: list[Hashable]
    rows: Dataset
    attributes: list[str]

    def __post_init__(self) -> None:
        if len(self.ids) != len(self.rows) or len(self.ids) != len(self.attributes):
            raise ValueError(
                f"gallery: {len(self.ids)} ids, {len(self.rows)} rows, "
                f"{len(self.attributes)} attribute texts"
            )
        if len(set(self.ids)) != len(self.ids):
            raise ValueError("gallery ids are not unique")


@dataclass
class RewardScores:
    """Per-listing scores of one batch (``[N]`` arrays)."""

    recall: np.ndarray
    reciprocal_rank: np.ndarray
    rankings: list[list[Hashable]] = field(repr=False)


@dataclass
class RewardCall:
    """One call's summary (the reward's ``history``)."""

    step: int
    completions: int
    mean_reward: float
    valid_format: float
    attribute_count: float
    recall: float
    reciprocal_rank: float
    gain_over_sft: float
    seconds: float
    listing_ids: list[Hashable] = field(repr=False, default_factory=list)


class RetrievalReward:
    """A TRL reward function scoring attribute completions by retrieval with a frozen encoder.

    Args:
        model: the ``AFMRLModel`` whose encoder ranks (kept in eval mode, never trained here).
        gallery: the reward gallery (:class:`RewardGallery`).
        queries: ``listing_id -> RewardQuery`` for every listing the policy is prompted with.
        mode: ``recall``, ``reciprocal_rank`` or ``gain``.
        k: k of the recall (default: :func:`default_recall_k` of the gallery size).
        gain_metric: what ``gain`` compares (``recall`` or ``reciprocal_rank``).
        format_penalty: the reward of a malformed or empty completion.
        depth: ranked list length (a positive below it counts as missed).
        batch_size: listings per encoder forward pass.
        recall_k_fraction: used for the default ``k``.

    The call accepts TRL's keyword arguments: ``prompts``, ``completions``, and the dataset
    columns ``listing_id``, ``image`` (the query photo), ``title``; ``trainer_state`` and
    ``log_metric`` when TRL passes them (mean reward is logged by TRL itself; this adds
    ``rar/valid_format``, ``rar/attribute_count``, ``rar/recall@k``, ``rar/reciprocal_rank``,
    ``rar/gain_over_sft`` -- the valid completions' ``gain_metric`` minus that of the SFT
    attributes of the same listings, whatever the mode: a per-step curve free of which listings
    the step drew -- and ``rar/reward_seconds``).
    """

    def __init__(
        self,
        model: Any,
        gallery: RewardGallery,
        queries: Mapping[Hashable, RewardQuery],
        *,
        mode: str = "reciprocal_rank",
        k: int | None = None,
        gain_metric: str = "reciprocal_rank",
        format_penalty: float = -0.1,
        depth: int = 100,
        batch_size: int = 64,
        recall_k_fraction: float = 0.0005,
    ):
        if mode not in REWARD_MODES:
            raise ValueError(f"reward mode must be one of {REWARD_MODES}, got {mode!r}")
        if gain_metric not in GAIN_METRICS:
            raise ValueError(f"gain_metric must be one of {GAIN_METRICS}, got {gain_metric!r}")
        if not len(gallery.ids):
            raise ValueError("the reward gallery is empty")
        self.model = model
        self.gallery = gallery
        self.queries = dict(queries)
        self.mode = mode
        self.k = int(k) if k else default_recall_k(len(gallery.ids), recall_k_fraction)
        self.gain_metric = gain_metric
        self.format_penalty = float(format_penalty)
        self.depth = max(int(depth), self.k)
        self.batch_size = int(batch_size)
        self.history: list[RewardCall] = []
        self.gallery_encodes = 0
        self._index: RetrievalIndex | None = None
        self._version: tuple | None = None
        self._query_cache: OrderedDict[tuple[str, str], np.ndarray] = OrderedDict()
        self._baseline: dict[Hashable, tuple[float, float]] = {}

    # ------------------------------------------------------------------------- the encoder

    def _encoder_tensors(self) -> list[Any]:
        tensors = [p for n, p in self.model.named_parameters() if not n.startswith("extractor.")]
        tensors += [b for n, b in self.model.named_buffers() if not n.startswith("extractor.")]
        return tensors

    def encoder_version(self) -> tuple:
        """Changes whenever an encoder tensor is replaced or modified in place."""
        return tuple((t.data_ptr(), t._version) for t in self._encoder_tensors())

    def refresh(self, force: bool = False) -> bool:
        """(Re)embed the gallery if the encoder changed since the last call; True when it did."""
        version = self.encoder_version()
        if not force and self._index is not None and version == self._version:
            return False
        emb = encode_split(
            self.model,
            self.gallery.rows,
            "listing",
            self.gallery.attributes,
            batch_size=self.batch_size,
            desc="reward gallery",
            show_progress=False,
        )
        index = RetrievalIndex(emb.shape[1])
        index.add(emb, self.gallery.ids)
        self._index = index
        self._version = version
        self._query_cache.clear()
        self._baseline.clear()
        self.gallery_encodes += 1
        return True

    # --------------------------------------------------------------------------- scoring

    def _embed(
        self, images: Sequence[Any], titles: Sequence[str], attributes: Sequence[str]
    ) -> np.ndarray:
        """``[N, D]`` query embeddings, each (listing content, attributes) encoded once."""
        keys = [
            (listing_key(image, title), a)
            for image, title, a in zip(images, titles, attributes, strict=True)
        ]
        todo: dict[tuple[str, str], int] = {}
        for i, key in enumerate(keys):
            if key not in self._query_cache and key not in todo:
                todo[key] = i
        if todo:
            rows = list(todo.values())
            emb = encode_batch(
                self.model,
                {"image": [images[i] for i in rows], "title": [titles[i] for i in rows]},
                "listing",
                [attributes[i] for i in rows],
                batch_size=self.batch_size,
            )
            for key, vector in zip(todo, emb, strict=True):
                self._query_cache[key] = vector
        out = np.stack([self._query_cache[key] for key in keys])
        for key in keys:
            self._query_cache.move_to_end(key)
        while len(self._query_cache) > QUERY_CACHE_SIZE:
            self._query_cache.popitem(last=False)
        return out

    def score(
        self,
        listing_ids: Sequence[Hashable],
        images: Sequence[Any],
        titles: Sequence[str | None],
        attributes: Sequence[str],
    ) -> RewardScores:
        """Retrieval scores of listings with the given (canonical) attribute texts.

        Returns ``recall`` (hit of a positive in the top ``k``) and ``reciprocal_rank`` per
        listing, computed by the evaluation's metric functions on the exact-search ranking.
        """
        self.refresh()
        n = len(listing_ids)
        if not n:
            return RewardScores(np.zeros(0), np.zeros(0), [])
        unknown = [lid for lid in listing_ids if lid not in self.queries]
        if unknown:
            raise KeyError(f"listing {unknown[0]!r} is not one of the reward's queries")
        titles = ["" if t is None else str(t) for t in titles]
        q = self._embed(images, titles, list(attributes))
        own = [self.queries[lid].own for lid in listing_ids]
        extra = int(any(o is not None for o in own))
        _, ids = self._index.search(q, k=min(len(self.gallery.ids), self.depth + extra))
        rankings = [
            [g for g in row if g != o][: self.depth]
            for row, o in zip(ids.tolist(), own, strict=True)
        ]
        rel, _ = relevance_matrix(rankings, [self.queries[lid].positives for lid in listing_ids])
        return RewardScores(hits_at_k(rel, self.k), reciprocal_ranks(rel), rankings)

    def _metric(self, scores: RewardScores, metric: str) -> np.ndarray:
        return scores.recall if metric == "recall" else scores.reciprocal_rank

    def baseline_scores(
        self, listing_ids: Sequence[Hashable], images: Sequence[Any], titles: Sequence[str | None]
    ) -> dict[str, np.ndarray]:
        """``recall`` and ``reciprocal_rank`` of the SFT attributes of each listing (cached)."""
        self.refresh()
        todo = [i for i, lid in enumerate(listing_ids) if lid not in self._baseline]
        seen: set[Hashable] = set()
        todo = [i for i in todo if not (listing_ids[i] in seen or seen.add(listing_ids[i]))]
        if todo:
            ids = [listing_ids[i] for i in todo]
            s = self.score(
                ids,
                [images[i] for i in todo],
                [titles[i] for i in todo],
                [self.queries[lid].baseline for lid in ids],
            )
            for lid, r, rr in zip(ids, s.recall, s.reciprocal_rank, strict=True):
                self._baseline[lid] = (float(r), float(rr))
        pairs = np.array([self._baseline[lid] for lid in listing_ids]).reshape(-1, 2)
        return {"recall": pairs[:, 0], "reciprocal_rank": pairs[:, 1]}

    # ---------------------------------------------------------------------- the TRL call

    def __call__(
        self,
        prompts: Sequence[Any] | None = None,
        completions: Sequence[Any] = (),
        *,
        listing_id: Sequence[Hashable],
        image: Sequence[Any],
        title: Sequence[str | None],
        trainer_state: Any = None,
        log_metric: Callable[[str, float], None] | None = None,
        **columns: Any,
    ) -> list[float]:
        """One reward per completion (see the class docstring)."""
        start = time.perf_counter()
        texts = [completion_text(c) for c in completions]
        attrs = [canonical_attribute_text(t) for t in texts]
        valid = [i for i, a in enumerate(attrs) if a]
        rewards = np.full(len(texts), self.format_penalty, dtype=np.float64)
        recall = rr = gain = float("nan")
        if valid:
            ids = [listing_id[i] for i in valid]
            imgs = [image[i] for i in valid]
            tts = [title[i] for i in valid]
            s = self.score(ids, imgs, tts, [attrs[i] for i in valid])
            base = self.baseline_scores(ids, imgs, tts)[self.gain_metric]
            if self.mode == "gain":
                rewards[valid] = self._metric(s, self.gain_metric) - base
            else:
                rewards[valid] = self._metric(s, self.mode)
            recall, rr = float(s.recall.mean()), float(s.reciprocal_rank.mean())
            gain = float((self._metric(s, self.gain_metric) - base).mean())
        counts = [len(parse_attributes(attrs[i]).attributes) for i in valid]
        seconds = time.perf_counter() - start
        call = RewardCall(
            step=int(getattr(trainer_state, "global_step", len(self.history))),
            completions=len(texts),
            mean_reward=float(rewards.mean()) if len(texts) else float("nan"),
            valid_format=len(valid) / max(len(texts), 1),
            attribute_count=float(np.mean(counts)) if counts else 0.0,
            recall=recall,
            reciprocal_rank=rr,
            gain_over_sft=gain,
            seconds=seconds,
            listing_ids=list(listing_id),
        )
        self.history.append(call)
        if log_metric is not None:
            log_metric("rar/valid_format", call.valid_format)
            log_metric("rar/attribute_count", call.attribute_count)
            if valid:
                log_metric(f"rar/recall@{self.k}", recall)
                log_metric("rar/reciprocal_rank", rr)
                log_metric("rar/gain_over_sft", gain)
            log_metric("rar/reward_seconds", seconds)
        return rewards.tolist()


# ------------------------------------------------------------------- the train split's pairs


def category_of(attributes: str | None) -> str:
    """The ``category`` value of an attribute string ('' when it has none)."""
    return parse_attributes(attributes or "").attributes.get("category", "")


def select_gallery_rows(categories: Sequence[str], size: int, seed: int = 0) -> list[int]:
    """Row positions whose partners form a reward gallery of about ``size`` listings.

    Whole categories are drawn at random until ``size`` is reached (the last one cut), so every
    drawn listing's same-category neighbours -- its hard negatives -- come with it. ``size`` 0 or
    at least the number of rows: every row.
    """
    n = len(categories)
    if size <= 0 or size >= n:
        return list(range(n))
    by_category: dict[str, list[int]] = {}
    for i, c in enumerate(categories):
        by_category.setdefault(c, []).append(i)
    rng = random.Random(f"afmrl-rar-gallery:{seed}")
    names = sorted(by_category)
    rng.shuffle(names)
    rows: list[int] = []
    for name in names:
        members = by_category[name]
        rng.shuffle(members)
        rows += members[: size - len(rows)]
        if len(rows) >= size:
            break
    return sorted(rows)


#: Which gallery listings count as a query's positives (see :func:`build_pair_reward`).
POSITIVES: tuple[str, ...] = ("partner", "linked")


def linked_listings(pairs: Sequence[tuple[str, str]]) -> dict[str, frozenset[str]]:
    """Listing key -> every listing the pairs connect it to (itself included).

    Pairs are identity relations between listings ("the same product"), so they chain: the
    connected components of the pair graph are groups of one product's listings.
    """
    parent: dict[str, str] = {}

    def root(x: str) -> str:
        parent.setdefault(x, x)
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for a, b in pairs:
        ra, rb = root(a), root(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    groups: dict[str, set[str]] = {}
    for x in parent:
        groups.setdefault(root(x), set()).add(x)
    return {x: frozenset(groups[root(x)]) for x in parent}


def _partner_view(split: Dataset) -> Dataset:
    """The partners of a train split as listings (``listing_id`` = ``partner-of:<row's id>``,
    ``image``, ``title``)."""
    view = split.select_columns(["listing_id", "pos_image", "pos_title"])
    ids = [f"partner-of:{lid}" for lid in view["listing_id"]]
    view = view.remove_columns("listing_id").add_column("listing_id", ids)
    return view.rename_columns({"pos_image": "image", "pos_title": "title"})


def _undecoded(split: Dataset, columns: Sequence[str]) -> Dataset:
    """``split`` with its image ``columns`` read as stored bytes (no decoding)."""
    from datasets import Image

    for c in columns:
        feature = split.features.get(c)
        if isinstance(feature, Image) and feature.decode:
            split = split.cast_column(c, Image(decode=False))
    return split


@dataclass
class PairRewardData:
    """What :func:`build_pair_reward` derived from the train split (for the trainer and logs)."""

    query_rows: list[int]
    gallery_size: int
    sft_valid_format: float
    seconds: float


def build_pair_reward(
    model: Any,
    train: Dataset,
    *,
    mode: str = "reciprocal_rank",
    k: int | None = None,
    recall_k_fraction: float = 0.0005,
    gain_metric: str = "reciprocal_rank",
    format_penalty: float = -0.1,
    depth: int = 100,
    gallery_size: int = 0,
    batch_size: int = 64,
    generation_batch_size: int = 32,
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
    cache_dir: str | Path | None = None,
    gallery_attributes_column: str | None = None,
    positives: str = "partner",
    seed: int = 0,
    show_progress: bool = True,
) -> tuple[RetrievalReward, PairRewardData]:
    """The reward for RAR on a train split of pairs (see the module docstring).

    ``model``'s extractor must still be the SFT extractor: it writes the gallery's attributes (and
    the queries' baseline attributes) once, cached in ``cache_dir`` (resumable, refused when the
    model or rows differ). ``gallery_attributes_column`` (e.g. ``pos_teacher_attributes``) reads
    the partners' attributes from a column instead. ``positives``: ``partner`` (the row's pair
    partner only) or ``linked`` (every gallery listing the train pairs chain to the query's
    listing: rows ``(A, B)`` and ``(B, C)`` make ``C`` a listing of ``A``'s product too --
    :func:`linked_listings`). Returns the reward and the rows that are its queries (each has its
    partner in the gallery).
    """
    if positives not in POSITIVES:
        raise ValueError(f"positives must be one of {POSITIVES}, got {positives!r}")
    start = time.perf_counter()
    needed = ["listing_id", "image", "title", "pos_image", "pos_title"]
    missing = [c for c in needed if c not in train.column_names]
    if missing:
        raise ValueError(
            f"the train split lacks {missing} (columns: {train.column_names}); RAR needs pairs of "
            "listings (listing_id, image, title, pos_image, pos_title)"
        )
    raw = _undecoded(train, ["image", "pos_image"])
    teacher = (
        list(raw["teacher_attributes"])
        if "teacher_attributes" in raw.column_names
        else [""] * len(raw)
    )
    rows = select_gallery_rows([category_of(t) for t in teacher], gallery_size, seed)
    chosen = raw.select(rows)
    own_keys = [listing_key(i, t) for i, t in zip(chosen["image"], chosen["title"], strict=True)]
    pos_keys = [
        listing_key(i, t) for i, t in zip(chosen["pos_image"], chosen["pos_title"], strict=True)
    ]
    partners = _partner_view(chosen)
    cache = Path(cache_dir) if cache_dir is not None else None
    if gallery_attributes_column is not None:
        if gallery_attributes_column not in chosen.column_names:
            raise ValueError(
                f"the train split has no {gallery_attributes_column!r} column (columns: "
                f"{chosen.column_names})"
            )
        texts = [canonical_attribute_text(t or "") for t in chosen[gallery_attributes_column]]
        generated = GeneratedAttributes(texts, list(texts))
    else:
        generated = generate_attributes(
            model,
            partners,
            work_dir=cache / "gallery_attributes" if cache else None,
            batch_size=generation_batch_size,
            max_new_tokens=max_new_tokens,
            desc="reward gallery: SFT attributes",
            show_progress=show_progress,
        )
    first: dict[str, int] = {}
    for j, key in enumerate(pos_keys):
        first.setdefault(key, j)
    keep = sorted(first.values())
    gallery = RewardGallery(
        ids=[pos_keys[j] for j in keep],
        rows=partners.select(keep),
        attributes=[generated.texts[j] for j in keep],
    )
    attrs_by_key = dict(zip(gallery.ids, gallery.attributes, strict=True))
    # The queries' own SFT attributes (gain mode): mostly already generated, since the partners of
    # a cross-seller train split are its listings; the rest are generated here.
    missing_rows = [j for j, key in enumerate(own_keys) if key not in attrs_by_key]
    if missing_rows and gallery_attributes_column is not None:
        own_column = gallery_attributes_column.removeprefix("pos_")
        source = own_column if own_column in chosen.column_names else gallery_attributes_column
        for j in missing_rows:
            attrs_by_key[own_keys[j]] = canonical_attribute_text(chosen[j][source] or "")
    elif missing_rows:
        extra = generate_attributes(
            model,
            chosen.select(missing_rows).select_columns(["listing_id", "image", "title"]),
            work_dir=cache / "query_attributes" if cache else None,
            batch_size=generation_batch_size,
            max_new_tokens=max_new_tokens,
            desc="reward queries: SFT attributes",
            show_progress=show_progress,
        )
        for j, text in zip(missing_rows, extra.texts, strict=True):
            attrs_by_key[own_keys[j]] = text
    group_of: dict[str, frozenset[str]] = {}
    if positives == "linked":
        all_own = [listing_key(i, t) for i, t in zip(raw["image"], raw["title"], strict=True)]
        all_pos = [
            listing_key(i, t) for i, t in zip(raw["pos_image"], raw["pos_title"], strict=True)
        ]
        group_of = linked_listings(list(zip(all_own, all_pos, strict=True)))
    queries = {
        lid: RewardQuery(
            positives=frozenset({pos} | ({g for g in group_of.get(own, ()) if g in first} - {own})),
            own=own if own in first else None,
            baseline=attrs_by_key[own],
        )
        for lid, own, pos in zip(chosen["listing_id"], own_keys, pos_keys, strict=True)
    }
    reward = RetrievalReward(
        model,
        gallery,
        queries,
        mode=mode,
        k=k,
        gain_metric=gain_metric,
        format_penalty=format_penalty,
        depth=depth,
        batch_size=batch_size,
        recall_k_fraction=recall_k_fraction,
    )
    valid = 1.0 - generated.num_invalid / max(len(generated.texts), 1)
    info = PairRewardData(rows, len(gallery.ids), valid, time.perf_counter() - start)
    return reward, info


def mean_or_nan(values: Sequence[float]) -> float:
    """Mean of the finite values (NaN when there is none)."""
    finite = [v for v in values if v == v and not math.isinf(v)]
    return float(np.mean(finite)) if finite else float("nan")


__all__ = [
    "POSITIVES",
    "QUERY_CACHE_SIZE",
    "PairRewardData",
    "RetrievalReward",
    "RewardCall",
    "RewardGallery",
    "RewardQuery",
    "RewardScores",
    "build_pair_reward",
    "category_of",
    "completion_text",
    "default_recall_k",
    "linked_listings",
    "listing_key",
    "mean_or_nan",
    "select_gallery_rows",
]
