"""The RAR reward: format penalty, ordering of attribute strings, the evaluation's recall, the reward
gallery built from train pairs, and its embedding cache.

The slow tests use the embedded default's real towers (EfficientNet-Lite0 + all-MiniLM-L6-v2,
built offline) on a 150-product synthetic catalogue.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tiny_models import (
    embedded_default_checkpoint,
    reward_catalog,
    tiny_catalog,
    trained_llava_checkpoint,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _eval_reward(model, mode="reciprocal_rank", k=None, attributes="gold_attributes"):
    """A reward over the validation gallery (its ``attributes``), the validation queries as
    queries (positives: the gallery rows of their product), and the two splits."""
    from datasets import load_from_disk

    from modeling_afmrl.attributes import canonical_attribute_text
    from trainers.rar.reward import RetrievalReward, RewardGallery, RewardQuery

    data = load_from_disk(reward_catalog())
    vq, vg = data["validation_query"], data["validation_gallery"]
    gallery = RewardGallery(
        list(vg["listing_id"]),
        vg.select_columns(["image", "title"]),
        [canonical_attribute_text(a) for a in vg[attributes]],
    )
    by_product: dict[str, set[str]] = {}
    for gid, product in zip(vg["listing_id"], vg["product_id"], strict=True):
        by_product.setdefault(product, set()).add(gid)
    queries = {
        lid: RewardQuery(frozenset(by_product[p]), baseline=canonical_attribute_text(a))
        for lid, p, a in zip(vq["listing_id"], vq["product_id"], vq[attributes], strict=True)
        if p in by_product
    }
    return RetrievalReward(model, gallery, queries, mode=mode, k=k), vq, vg


# ---------------------------------------------------------------------------- pure pieces


def test_select_gallery_rows_draws_whole_categories():
    from trainers.rar.reward import select_gallery_rows

    cats = ["mug"] * 5 + ["shoe"] * 4 + ["bag"] * 6 + ["hat"] * 3
    assert select_gallery_rows(cats, 0) == list(range(len(cats)))
    assert select_gallery_rows(cats, 100) == list(range(len(cats)))
    rows = select_gallery_rows(cats, 10, seed=1)
    assert len(rows) == 10 and rows == sorted(rows)
    drawn = {cats[i] for i in rows}
    complete = [c for c in drawn if all(cats[i] != c or i in rows for i in range(len(cats)))]
    assert len(complete) >= len(drawn) - 1  # only the last category drawn may be cut
    assert select_gallery_rows(cats, 10, seed=1) == rows  # seeded


def test_completion_text_reads_trl_completions():
    from trainers.rar.reward import completion_text, default_recall_k

    assert completion_text("colour: red") == "colour: red"
    assert completion_text([{"role": "assistant", "content": "colour: red"}]) == "colour: red"
    block = [{"role": "assistant", "content": [{"type": "text", "text": "colour: red"}]}]
    assert completion_text(block) == "colour: red"
    assert completion_text([]) == ""
    assert default_recall_k(1709, 0.0005) == 1
    assert default_recall_k(100_000, 0.0005) == 50  # the paper's k on a large gallery
    assert default_recall_k(10, 0.0005) == 1


def test_the_reward_refuses_unknown_settings():
    from trainers.rar.reward import RetrievalReward, RewardGallery

    gallery = RewardGallery(["a"], [{"image": None, "title": "x"}], [""])
    with pytest.raises(ValueError, match="reward mode"):
        RetrievalReward(None, gallery, {}, mode="ndcg")
    with pytest.raises(ValueError, match="gain_metric"):
        RetrievalReward(None, gallery, {}, gain_metric="map")
    with pytest.raises(ValueError, match="not unique"):
        RewardGallery(["a", "a"], [1, 2], ["", ""])


# ------------------------------------------------------------------ the embedded default's towers


@pytest.mark.slow
def test_gold_attributes_beat_a_wrong_colour_which_beats_empty_or_garbage():
    """Photo-only query listings (no title: the attributes are the whole text side), the gallery
    with its gold attributes: over the validation queries, the query's gold attributes rank its
    product higher than the same attributes with a wrong colour; an empty or garbage completion
    gets the format penalty whatever it would retrieve.

    (With the titles present the untrained fusion's ranking does not move with the colour
    attribute at all: photo and title already fix it. The trained encoders' numbers are in
    docs/rar.md.)"""
    from afmrl.models import load_model
    from modeling_afmrl.attributes import parse_attributes, render_attributes

    model = load_model(embedded_default_checkpoint())
    reward, vq, _ = _eval_reward(model, mode="reciprocal_rank")
    scores = {"gold": [], "wrong": [], "empty": [], "garbage": []}
    for row in vq:
        if row["listing_id"] not in reward.queries:
            continue
        gold = reward.queries[row["listing_id"]].baseline
        attrs = parse_attributes(gold).attributes
        if "colour" not in attrs:
            continue
        other = next(c for c in ("red", "green", "navy", "yellow") if c != attrs["colour"])
        wrong = render_attributes({**attrs, "colour": other})
        completions = [[{"role": "assistant", "content": t}] for t in
                       (gold, wrong, "", "colour red, very nice!!")]  # fmt: skip
        rewards = reward(
            [None] * 4, completions, listing_id=[row["listing_id"]] * 4,
            image=[row["image"]] * 4, title=[""] * 4,
        )  # fmt: skip
        for name, value in zip(scores, rewards, strict=True):
            scores[name].append(value)
    means = {name: float(np.mean(v)) for name, v in scores.items()}
    assert len(scores["gold"]) >= 20
    assert means["gold"] > means["wrong"] > -0.1, means
    assert scores["empty"] == scores["garbage"] == [-0.1] * len(scores["gold"])


@pytest.mark.slow
def test_recall_is_the_evaluation_metric_of_the_same_ranking():
    """Same encoder, same attributes: the reward's per-query Recall@k and reciprocal rank equal
    ``afmrl evaluate``'s (runner + metric functions), ranking for ranking."""
    from afmrl.evaluation.metrics import hits_at_k, reciprocal_ranks, relevance_matrix
    from afmrl.evaluation.runner import evaluate_model
    from afmrl.models import load_model

    model = load_model(embedded_default_checkpoint())
    reward, vq, vg = _eval_reward(model, mode="recall", k=1)
    ids = [lid for lid in vq["listing_id"] if lid in reward.queries]
    rows = vq.select([i for i, lid in enumerate(vq["listing_id"]) if lid in reward.queries])
    attrs = [reward.queries[lid].baseline for lid in ids]
    scores = reward.score(ids, rows["image"], rows["title"], attrs)

    run = evaluate_model(
        model, rows, vg, query_attributes=attrs, gallery_attributes=reward.gallery.attributes,
        depth=reward.depth, batch_size=reward.batch_size, show_progress=False,
    )  # fmt: skip
    assert run.query_ids == ids
    assert scores.rankings == run.rankings
    rel, _ = relevance_matrix(run.rankings, run.positives)
    for k in (1, 5, 10):
        reward.k = k
        again = reward.score(ids, rows["image"], rows["title"], attrs)
        np.testing.assert_array_equal(again.recall, hits_at_k(rel, k))
        assert again.recall.mean() == pytest.approx(run.metrics[f"recall@{k}"])
    np.testing.assert_allclose(scores.reciprocal_rank, reciprocal_ranks(rel))
    assert scores.reciprocal_rank.mean() == pytest.approx(run.metrics["mrr"])


@pytest.mark.slow
def test_gallery_is_reembedded_only_when_the_encoder_changes():
    from afmrl.models import load_model

    model = load_model(embedded_default_checkpoint())
    reward, vq, _ = _eval_reward(model)
    lid = next(iter(reward.queries))
    row = vq[list(vq["listing_id"]).index(lid)]
    call = {"listing_id": [lid] * 3, "image": [row["image"]] * 3, "title": [row["title"]] * 3}
    attrs = reward.queries[lid].baseline
    first = reward(None, [attrs, attrs, "garbage"], **call)
    assert reward.gallery_encodes == 1
    reward(None, [attrs], **{k: v[:1] for k, v in call.items()})
    model.extractor.lm_head.weight.data.mul_(2.0)  # the extractor is not the encoder
    reward(None, [attrs], **{k: v[:1] for k, v in call.items()})
    assert reward.gallery_encodes == 1
    assert first[0] == first[1] and first[2] == -0.1
    with torch.no_grad():
        model.text_projection.weight.mul_(-1.0)  # an in-place change of an encoder weight
    reward(None, [attrs], **{k: v[:1] for k, v in call.items()})
    assert reward.gallery_encodes == 2


@pytest.mark.slow
def test_gain_is_the_metric_minus_the_sft_attributes_score():
    from afmrl.models import load_model

    model = load_model(embedded_default_checkpoint())
    plain, vq, _ = _eval_reward(model, mode="reciprocal_rank")
    gain, _, _ = _eval_reward(model, mode="gain")
    ids = list(plain.queries)[:8]
    rows = vq.select([list(vq["listing_id"]).index(i) for i in ids])
    call = {"listing_id": ids, "image": rows["image"], "title": rows["title"]}
    completions = ["category: mug; colour: red"] * len(ids)
    baselines = [plain.queries[i].baseline for i in ids]
    raw = np.array(plain(None, completions, **call))
    base = np.array(plain(None, baselines, **call))
    np.testing.assert_allclose(gain(None, completions, **call), raw - base)
    np.testing.assert_allclose(gain(None, baselines, **call), 0.0)
    assert gain(None, ["no pairs here"], **{k: v[:1] for k, v in call.items()}) == [-0.1]


@pytest.mark.slow
def test_reward_logs_format_length_and_scores_through_trl_hooks():
    from afmrl.models import load_model

    model = load_model(embedded_default_checkpoint())
    reward, vq, _ = _eval_reward(model)
    lid = next(iter(reward.queries))
    row = vq[list(vq["listing_id"]).index(lid)]
    logged: dict[str, float] = {}
    completions = [[{"role": "assistant", "content": t}] for t in
                   ("category: mug; colour: red", "category: mug", "", "nonsense")]  # fmt: skip
    reward(
        [None] * 4, completions, listing_id=[lid] * 4, image=[row["image"]] * 4,
        title=[row["title"]] * 4, log_metric=logged.__setitem__,
    )  # fmt: skip
    assert logged["rar/valid_format"] == 0.5
    assert logged["rar/attribute_count"] == 1.5
    assert 0 <= logged["rar/reciprocal_rank"] <= 1 and "rar/recall@1" in logged
    call = reward.history[-1]
    assert call.listing_ids == [lid] * 4 and call.completions == 4


# ------------------------------------------------------------------------ train pairs


@pytest.mark.slow
def test_pair_reward_uses_the_sft_attributes_and_the_partner_as_positive(tmp_path):
    """On train pairs: the gallery is the partners with the attributes ``generate_attributes``
    writes (cached for a second build); a query's own listing never appears in its ranking; its
    positive is its partner."""
    from datasets import Image, load_from_disk

    from afmrl.models import load_model
    from afmrl.retrieval.attributes import generate_attributes
    from trainers.rar.reward import build_pair_reward, listing_key

    model = load_model(trained_llava_checkpoint())
    train = load_from_disk(tiny_catalog())["train"]
    reward, info = build_pair_reward(
        model, train, cache_dir=tmp_path, max_new_tokens=16, show_progress=False
    )
    assert info.query_rows == list(range(len(train))) and len(reward.queries) == len(train)
    partners = train.select_columns(["pos_image", "pos_title"]).rename_columns(
        {"pos_image": "image", "pos_title": "title"}
    )
    expected = generate_attributes(model, partners, max_new_tokens=16, show_progress=False)
    assert reward.gallery.attributes == expected.texts
    assert any(reward.gallery.attributes) and 0 < info.sft_valid_format <= 1

    raw = train.cast_column("image", Image(decode=False)).cast_column(
        "pos_image", Image(decode=False)
    )
    for row in raw.select(range(5)):
        query = reward.queries[row["listing_id"]]
        assert query.positives == {listing_key(row["pos_image"], row["pos_title"])}
        assert query.own == listing_key(row["image"], row["title"])  # partners are listings too
    ids = list(train["listing_id"][:6])
    rows = train.select(range(6))
    scores = reward.score(ids, rows["image"], rows["title"], [""] * 6)
    for lid, ranking in zip(ids, scores.rankings, strict=True):
        assert reward.queries[lid].own not in ranking
        assert len(ranking) == min(reward.depth, len(reward.gallery.ids) - 1)

    again, _ = build_pair_reward(
        model, train, cache_dir=tmp_path, max_new_tokens=16, show_progress=False
    )
    assert again.gallery.attributes == reward.gallery.attributes
    column, _ = build_pair_reward(
        model, train, gallery_attributes_column="pos_teacher_attributes", show_progress=False
    )
    assert column.gallery.attributes[0] and column.gallery.attributes != reward.gallery.attributes


def test_linked_listings_chain_the_pairs():
    from trainers.rar.reward import linked_listings

    groups = linked_listings([("a", "b"), ("b", "c"), ("d", "e"), ("c", "a")])
    assert groups["a"] == groups["c"] == frozenset("abc")
    assert groups["e"] == frozenset("de")


@pytest.mark.slow
def test_linked_positives_are_the_listings_of_the_querys_product():
    """``positives="linked"`` rebuilds products from the pairs alone; the catalogue's audit truth
    (never read by the reward) confirms every positive is a listing of the query's product and
    every other listing of it is a positive."""
    import json
    from pathlib import Path

    from datasets import Image, load_from_disk

    from afmrl.models import load_model
    from trainers.rar.reward import build_pair_reward, listing_key

    model = load_model(trained_llava_checkpoint())
    train = load_from_disk(tiny_catalog())["train"]
    reward, _ = build_pair_reward(
        model, train, positives="linked", gallery_attributes_column="pos_teacher_attributes",
        show_progress=False,
    )  # fmt: skip
    truth = [json.loads(line) for line in
             (Path(tiny_catalog()) / "truth" / "train_listings.jsonl").read_text().splitlines()]  # fmt: skip
    product = {t["listing_id"]: t["product_id"] for t in truth}
    raw = train.cast_column("image", Image(decode=False))
    key_to_id = {
        listing_key(i, t): lid
        for lid, i, t in zip(raw["listing_id"], raw["image"], raw["title"], strict=True)
    }
    grew = 0
    for lid in train["listing_id"]:
        query = reward.queries[lid]
        members = {product[key_to_id[k]] for k in query.positives}
        assert members == {product[lid]}
        same = {k for k, other in key_to_id.items() if product[other] == product[lid]}
        assert query.positives == same - {query.own}
        grew += len(query.positives) > 1
    assert grew > 0  # some products have three or more sellers in train
