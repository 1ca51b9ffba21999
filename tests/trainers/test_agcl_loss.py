"""AGCLLoss against a slow loop reference; BM25 against hand computation; edge cases."""

from __future__ import annotations

import itertools
import math
import random

import pytest
import torch
import torch.nn.functional as F

from modeling_afmrl.attributes import parse_attributes, render_attributes
from trainers.agcl.arguments import PAPER_FORM
from trainers.agcl.bm25 import (
    attribute_terms,
    bm25_matrix,
    bm25_score,
    bm25_scores,
    bm25_statistics,
)
from trainers.agcl.loss import AGCLLoss, attributes_agree, masked_pairs

KEYS = ("category", "colour", "secondary_colour", "pattern", "size", "count")
VALUES = ("navy", "red", "grey", "striped", "plain", "2", "m")


def random_attributes(rng: random.Random, n: int, twins: int = 3) -> list[str]:
    """``n`` attribute strings; a few exact twins and some empty/malformed entries."""
    out = []
    for _ in range(n):
        keys = rng.sample(KEYS, rng.randint(1, len(KEYS)))
        out.append(render_attributes({k: rng.choice(VALUES) for k in keys}))
    for _ in range(twins):
        i, j = rng.sample(range(n), 2)
        out[j] = out[i]
    out[rng.randrange(n)] = ""
    out[rng.randrange(n)] = "garbled output without pairs"
    return out


# ---------------------------------------------------------------------------------- reference


def reference_loss(q, c, attrs_q, attrs_c, scale, weighting, filt, delta, overlap, stats=None):
    """Direct loops over anchors and negatives (slow, obviously right)."""
    n = q.shape[0]
    qn, cn = F.normalize(q, dim=-1), F.normalize(c, dim=-1)
    dq = [parse_attributes(a).attributes for a in attrs_q]
    dc = [parse_attributes(a).attributes for a in attrs_c]
    tq = [attribute_terms(a) for a in attrs_q]
    tc = [attribute_terms(a) for a in attrs_c]

    def direction(anchors, others, d_anchor, d_other, t_anchor, t_other):
        st = stats if stats is not None else bm25_statistics(t_other)
        total = 0.0
        for i in range(n):
            s_ii = float((anchors[i] @ others[i]).detach())
            terms = []
            numerator = None
            for j in range(n):
                s_ij = anchors[i] @ others[j]
                w = 1.0
                if weighting == "bm25":
                    w = math.exp(1 + math.tanh(bm25_score(t_anchor[i], t_other[j], st)))
                term = w * torch.exp(scale * s_ij)
                if j == i:
                    numerator = term
                    terms.append(term)
                    continue
                masked = False
                if filt in ("margin", "both") and float(s_ij.detach()) > s_ii + delta:
                    masked = True
                if filt in ("attributes", "both") and attributes_agree(
                    d_anchor[i], d_other[j], overlap
                ):
                    masked = True
                if not masked:
                    terms.append(term)
            total = total - torch.log(numerator / sum(terms))
        return total / n

    rows = direction(qn, cn, dq, dc, tq, tc)
    cols = direction(cn, qn, dc, dq, tc, tq)
    return (rows + cols) / 2


COMBOS = list(itertools.product(("bm25", "none"), ("margin", "attributes", "both", "none")))


@pytest.mark.parametrize(("weighting", "filt"), COMBOS)
def test_matches_loop_reference_value_and_gradients(weighting, filt):
    seed = COMBOS.index((weighting, filt))
    rng = random.Random(seed)
    torch.manual_seed(seed)
    n, d = 9, 8
    # Loosely correlated views: some negatives beat their anchor's positive (the margin filter fires).
    base = torch.randn(n, d, dtype=torch.float64)
    q = (base + 1.5 * torch.randn(n, d, dtype=torch.float64)).requires_grad_()
    c = (base + 1.5 * torch.randn(n, d, dtype=torch.float64)).requires_grad_()
    attrs = random_attributes(rng, n)
    scale = torch.tensor(7.0, dtype=torch.float64, requires_grad=True)
    loss_fn = AGCLLoss("agcl", weighting=weighting, false_negatives=filt, delta=0.05,
                       false_negative_handling="remove")  # fmt: skip
    out = loss_fn(q, c, attrs, logit_scale=scale)
    ref = reference_loss(q, c, attrs, attrs, scale, weighting, filt, 0.05, 0.8)
    got_grads = torch.autograd.grad(out.loss, (q, c, scale))
    ref_grads = torch.autograd.grad(ref, (q, c, scale))
    assert abs(out.loss.item() - ref.item()) < 1e-5
    for g, r in zip(got_grads, ref_grads, strict=True):
        assert torch.allclose(g, r, atol=1e-5, rtol=0), (g - r).abs().max()
    if filt in ("margin", "both"):
        assert out.num_masked > 0, "the test inputs should exercise the margin filter"
    if filt == "attributes":
        assert out.num_masked >= 2  # the twins, in both directions


def test_different_attributes_per_side_and_corpus_statistics():
    rng = random.Random(5)
    n, d = 7, 8
    q = torch.randn(n, d, dtype=torch.float64, requires_grad=True)
    c = torch.randn(n, d, dtype=torch.float64, requires_grad=True)
    attrs_q, attrs_c = random_attributes(rng, n), random_attributes(rng, n)
    corpus = bm25_statistics(attribute_terms(a) for a in random_attributes(rng, 50) + attrs_q)
    loss_fn = AGCLLoss("agcl", **PAPER_FORM, delta=0.0, bm25_statistics=corpus)
    out = loss_fn(q, c, attrs_q, attrs_c, logit_scale=5.0)
    ref = reference_loss(q, c, attrs_q, attrs_c, 5.0, "bm25", "both", 0.0, 0.8, stats=corpus)
    assert abs(out.loss.item() - ref.item()) < 1e-5
    g, r = torch.autograd.grad(out.loss, q)[0], torch.autograd.grad(ref, q)[0]
    assert torch.allclose(g, r, atol=1e-5)


def test_infonce_equals_cross_entropy_clip_loss():
    torch.manual_seed(0)
    q, c = torch.randn(12, 32), torch.randn(12, 32)
    scale = torch.tensor(14.3)
    out = AGCLLoss("infonce")(q, c, logit_scale=scale)
    logits = scale * F.normalize(q, dim=-1) @ F.normalize(c, dim=-1).T
    labels = torch.arange(12)
    expected = (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2
    assert torch.allclose(out.loss, expected, atol=1e-6)
    assert out.num_masked == 0 and out.log_weights is None


def test_infonce_matches_the_models_own_loss_with_matryoshka_dims():
    from modeling_afmrl.modeling_afmrl import info_nce, truncate_embeddings

    torch.manual_seed(1)
    q, c = F.normalize(torch.randn(6, 64), dim=-1), F.normalize(torch.randn(6, 64), dim=-1)
    dims = [64, 32, 16]
    out = AGCLLoss("infonce")(q, c, logit_scale=10.0, matryoshka_dims=dims)
    expected = torch.stack(
        [info_nce(truncate_embeddings(q, d), truncate_embeddings(c, d), 10.0) for d in dims]
    ).mean()
    assert torch.allclose(out.loss, expected, atol=1e-6)


def test_weights_raise_the_loss_of_attribute_close_negatives():
    """Same embeddings; the negative whose attributes match the anchor's gets the larger weight."""
    q = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, -1.0]])
    close = ["category: mug; colour: navy", "category: mug; colour: navy; size: m", "colour: red"]
    far = ["category: mug; colour: navy", "category: shoe; colour: red; size: m", "colour: red"]
    fn = AGCLLoss("agcl", "bm25", "none")
    out_close, out_far = fn(q, q, close, logit_scale=1.0), fn(q, q, far, logit_scale=1.0)
    assert out_close.log_weights[0, 1] > out_far.log_weights[0, 1]
    assert out_close.loss > out_far.loss
    assert (out_close.log_weights >= 1).all() and (out_close.log_weights < 2).all()


# ---------------------------------------------------------------------------------- edge cases


@pytest.mark.parametrize(("weighting", "filt"), COMBOS)
def test_edge_cases_are_finite(weighting, filt):
    fn = AGCLLoss("agcl", weighting=weighting, false_negatives=filt, delta=-1.0,
                  false_negative_handling="remove")  # fmt: skip
    same = torch.ones(5, 8, requires_grad=True)
    cases = [
        (same, same, ["category: mug"] * 5),  # identical embeddings and attributes
        (torch.randn(5, 8, requires_grad=True), torch.randn(5, 8), [""] * 5),  # empty attributes
        (torch.randn(1, 8, requires_grad=True), torch.randn(1, 8), ["colour: red"]),  # batch of 1
        (torch.randn(4, 8, requires_grad=True), torch.randn(4, 8), [None] * 4),
    ]
    for q, c, attrs in cases:
        out = fn(q, c, attrs, logit_scale=100.0)
        assert torch.isfinite(out.loss), (q.shape, attrs)
        (grad,) = torch.autograd.grad(out.loss, q)
        assert torch.isfinite(grad).all()


def test_all_negatives_masked_gives_zero_loss_and_finite_gradients():
    q = torch.randn(4, 8, requires_grad=True)
    # delta = -3 masks every negative (cosines are >= -1): only the positives remain.
    out = AGCLLoss("agcl", weighting="bm25", false_negatives="margin", delta=-3.0,
                   false_negative_handling="remove")(
        q, q.detach() + 0.1, ["category: mug"] * 4, logit_scale=20.0
    )  # fmt: skip
    assert out.num_masked == 2 * 4 * 3
    assert out.loss.abs() < 1e-6
    (grad,) = torch.autograd.grad(out.loss, q)
    assert torch.isfinite(grad).all()


def test_masks_and_counts():
    attrs = [
        "category: mug; colour: navy; size: m",
        "category: mug; colour: navy; size: m",  # twin of 0
        "category: mug; colour: red; size: m",
        "category: mug; colour: navy",  # agrees with 0 but states 2 of 3 keys (< 0.8)
    ]
    q = torch.eye(4)
    out = AGCLLoss("agcl", "none", "attributes")(q, q, attrs, logit_scale=1.0)
    expected = torch.zeros(4, 4, dtype=torch.bool)
    expected[0, 1] = expected[1, 0] = True
    assert torch.equal(out.mask, expected) and torch.equal(out.mask_t, expected)
    assert out.num_masked == 4
    assert torch.equal(masked_pairs(out.mask, out.mask_t), expected)
    loose = AGCLLoss("agcl", "none", "attributes", attribute_overlap=0.5)(
        q, q, attrs, logit_scale=1.0
    )
    assert loose.mask[0, 3] and loose.mask[3, 1] and not loose.mask[0, 2]


def test_accuracy_counts_both_directions():
    q = torch.eye(3)
    c = torch.tensor([[1.0, 0, 0], [0, 1.0, 0], [0, 1.0, 0.1]])  # candidate 2 is closest to query 1
    out = AGCLLoss("infonce")(q, c, logit_scale=1.0)
    # rows: q0->c0 ok, q1->c1 (c2 slightly lower) ok, q2->c2 ok; cols: c2->q1 wrong
    assert out.accuracy.item() == pytest.approx((1.0 + 2 / 3) / 2)


def test_bad_arguments_name_the_problem():
    with pytest.raises(ValueError, match="loss must be one of"):
        AGCLLoss("triplet")
    with pytest.raises(ValueError, match="weighting='bm25' needs loss='agcl'"):
        AGCLLoss("infonce", weighting="bm25")
    with pytest.raises(ValueError, match="false_negatives must be one of"):
        AGCLLoss("agcl", false_negatives="all")
    fn = AGCLLoss("agcl")
    q = torch.randn(3, 4)
    with pytest.raises(ValueError, match="needs attribute texts"):
        fn(q, q)
    with pytest.raises(ValueError, match="query_attributes has 2 entries for a batch of 3"):
        fn(q, q, ["a: b", "c: d"])
    with pytest.raises(TypeError, match="one entry per listing"):
        fn(q, q, "colour: red")
    with pytest.raises(ValueError, match=r"must both be \[B, D\]"):
        fn(q, torch.randn(2, 4), ["", "", ""])


# ---------------------------------------------------------------------------------- BM25


def test_bm25_by_hand():
    docs = [["colour=navy", "size=m"], ["colour=navy"], ["colour=red", "size=m", "count=2"]]
    stats = bm25_statistics(docs)
    assert stats.num_documents == 3 and stats.average_length == 2.0
    assert stats.document_frequency == {
        "colour=navy": 2,
        "size=m": 2,
        "colour=red": 1,
        "count=2": 1,
    }
    # query colour=navy against doc 1 (length 1): idf = ln(1 + (3-2+.5)/(2+.5)) = ln(1.6)
    k1, b = 1.2, 0.75
    norm = k1 * (1 - b + b * 1 / 2.0)
    expected = math.log(1.6) * (k1 + 1) / (1 + norm)
    assert bm25_score(["colour=navy"], docs[1], stats) == pytest.approx(expected)
    assert bm25_score(["colour=blue"], docs[1], stats) == 0.0
    assert bm25_score([], docs[1], stats) == 0.0 and bm25_score(["size=m"], [], stats) == 0.0


def test_terms_are_key_value_pairs():
    assert attribute_terms("colour: navy; secondary_colour: navy") == [
        "colour=navy",
        "secondary_colour=navy",
    ]
    assert attribute_terms({"Color": "Dark Blue"}) == ["colour=navy"]
    assert attribute_terms("") == [] and attribute_terms(None) == []
    s = bm25_scores([attribute_terms("colour: navy")], [attribute_terms("secondary_colour: navy")])
    assert s == [[0.0]]


def test_vectorised_bm25_equals_loop_reference():
    rng = random.Random(3)
    q = [attribute_terms(a) for a in random_attributes(rng, 11)]
    d = [attribute_terms(a) for a in random_attributes(rng, 13)]
    d[0] = d[0] + d[0][:1]  # a repeated term (tf = 2)
    for stats in (None, bm25_statistics(q + d)):
        got = bm25_matrix(q, d, stats)
        ref = torch.tensor(bm25_scores(q, d, stats), dtype=torch.float64)
        assert torch.allclose(got, ref, atol=1e-12)
    assert bm25_matrix([[]], [[]]).tolist() == [[0.0]]


def test_attributes_agree_rule():
    a = {"category": "mug", "colour": "navy", "size": "m"}
    assert attributes_agree(a, dict(a))
    assert not attributes_agree(a, {**a, "colour": "red"})
    assert not attributes_agree({}, {}) and not attributes_agree(a, {"brand": "x"})
    assert not attributes_agree(a, {"category": "mug", "colour": "navy"})  # 2 of 3 keys
    assert attributes_agree(a, {"category": "mug", "colour": "navy"}, min_overlap=0.6)
    with pytest.raises(ValueError, match="min_overlap"):
        attributes_agree(a, a, 1.5)


# ---------------------------------------------------------------------------------- options


def test_self_scores_are_the_bm25_diagonal_and_normalisation_divides_rows():
    from trainers.agcl.bm25 import bm25_self_scores, normalize_bm25

    rng = random.Random(11)
    docs = [attribute_terms(a) for a in random_attributes(rng, 10)]
    for stats in (None, bm25_statistics(docs + docs[:3])):
        full = bm25_matrix(docs, docs, stats)
        assert torch.allclose(bm25_self_scores(docs, stats), full.diagonal(), atol=1e-12)
    full = bm25_matrix(docs, docs)
    norm = normalize_bm25(full, full.diagonal())
    for i, terms in enumerate(docs):
        if terms:
            assert norm[i, i].item() == pytest.approx(1.0)
            assert torch.allclose(norm[i], full[i] / full[i, i])
        else:
            assert (norm[i] == 0).all()


def test_self_normalisation_separates_twins_from_same_category_listings():
    """Raw BM25 of key=value terms saturates the tanh for any same-category pair; divided by the
    anchor's self-score, an attribute twin stays close to 1 and a category-only match drops."""
    anchor = "category: mug; brand: acme; colour: navy; pattern: plain; size: m; count: 1"
    twin = anchor.replace("colour: navy", "colour: red")
    cousin = "category: mug; brand: zeta; colour: green; pattern: plain; size: m; count: 1"
    others = [f"category: shoe; brand: b{i}; colour: c{i}; size: s{i}" for i in range(5)]
    attrs = [anchor, twin, cousin, *others]
    q = torch.randn(len(attrs), 4)
    paper = AGCLLoss("agcl", "bm25", "none")(q, q, attrs, logit_scale=1.0).log_weights
    normed = AGCLLoss("agcl", "bm25", "none", bm25_normalization="self", bm25_scale=2.0)(
        q, q, attrs, logit_scale=1.0
    ).log_weights
    assert paper[0, 1] - paper[0, 2] < 0.03  # saturated: twin and cousin look alike
    assert normed[0, 1] - normed[0, 2] > max(0.05, 20 * (paper[0, 1] - paper[0, 2]))
    assert normed[0, 0] > normed[0, 1] > normed[0, 2] > normed[0, 3]


def test_weight_options_match_a_hand_computation():
    from trainers.agcl.loss import weighted_info_nce_rows

    rng = random.Random(2)
    n = 8
    attrs = random_attributes(rng, n)
    q, c = torch.randn(n, 6, dtype=torch.float64), torch.randn(n, 6, dtype=torch.float64)
    keys = ("category", "colour", "size")
    fn = AGCLLoss(
        "agcl", "bm25", "none", bm25_normalization="self", bm25_scale=0.7, weight_strength=1.5,
        attribute_keys=keys,
    )  # fmt: skip
    out = fn(q, c, attrs, logit_scale=3.0)
    dicts = [{k: v for k, v in parse_attributes(a).attributes.items() if k in keys} for a in attrs]
    terms = [attribute_terms(d) for d in dicts]
    stats = bm25_statistics(terms)
    expected = torch.zeros(n, n, dtype=torch.float64)
    for i in range(n):
        own = bm25_score(terms[i], terms[i], stats)
        for j in range(n):
            x = bm25_score(terms[i], terms[j], stats) / own if own > 0 else 0.0
            expected[i, j] = 1.5 * (1 + math.tanh(0.7 * x))
    assert torch.allclose(out.log_weights, expected, atol=1e-9)
    logits = 3.0 * F.normalize(q, dim=-1) @ F.normalize(c, dim=-1).T
    ref = (
        weighted_info_nce_rows(logits, expected).mean()
        + weighted_info_nce_rows(logits.T, expected.T).mean()
    ) / 2
    assert torch.allclose(out.loss, ref, atol=1e-9)
    # Restricting the keys equals handing the loss the restricted attribute strings.
    plain = AGCLLoss("agcl", "bm25", "attributes", bm25_normalization="self", bm25_scale=0.7,
                     weight_strength=1.5)  # fmt: skip
    restricted = plain(q, c, [render_attributes(d) for d in dicts], logit_scale=3.0)
    assert torch.allclose(restricted.log_weights, expected, atol=1e-9)
    with pytest.raises(ValueError, match="bm25_normalization"):
        AGCLLoss("agcl", bm25_normalization="max")
    with pytest.raises(TypeError, match="attribute_keys"):
        AGCLLoss("agcl", attribute_keys="colour")


def test_margin_compatible_spares_negatives_whose_attributes_conflict():
    from trainers.agcl.loss import attribute_conflicts, margin_false_negatives

    attrs = [
        "category: mug; colour: navy; size: m",
        "category: mug; colour: red; size: m",  # twin of 0: conflicts on colour
        "category: mug; colour: navy",  # compatible with 0 (size unstated)
        "",  # no attributes: never conflicts
    ]
    dicts = [parse_attributes(a).attributes for a in attrs]
    conflicts = attribute_conflicts(dicts, dicts)
    assert conflicts[0, 1] and conflicts[1, 0] and conflicts[1, 2]
    assert not conflicts[0, 2] and not conflicts[0, 3] and not conflicts.diagonal().any()
    # Every negative outscores its anchor's positive: the margin filter fires everywhere.
    q = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.95, 0.05], [0.8, 0.2]])
    c = torch.tensor([[0.0, 1.0], [0.1, -1.0], [-1.0, 0.0], [0.3, -1.0]])
    margin = AGCLLoss("agcl", "none", "margin", delta=0.0)(q, c, attrs, logit_scale=1.0)
    compat = AGCLLoss("agcl", "none", "margin_compatible", delta=0.0)(q, c, attrs, logit_scale=1.0)
    sim = F.normalize(q, dim=-1) @ F.normalize(c, dim=-1).T
    assert torch.equal(margin.mask, margin_false_negatives(sim, 0.0))
    assert torch.equal(compat.mask, margin.mask & ~conflicts)
    assert torch.equal(compat.mask_t, margin.mask_t & ~conflicts.T)
    assert margin.mask[0, 1] and not compat.mask[0, 1]


def test_attraction_turns_flagged_false_negatives_into_positives():
    from trainers.agcl.loss import attracted_info_nce_rows, weighted_info_nce_rows

    torch.manual_seed(4)
    logits = torch.randn(5, 5, dtype=torch.float64)
    none = torch.zeros(5, 5, dtype=torch.bool)
    # Nothing flagged: plain (weighted) InfoNCE.
    lw = torch.rand(5, 5, dtype=torch.float64)
    assert torch.allclose(
        attracted_info_nce_rows(logits, lw, none), weighted_info_nce_rows(logits, lw)
    )
    # Anchor 0 with candidate 3 flagged: mean of the two cross-entropies, full denominator.
    flagged = none.clone()
    flagged[0, 3] = True
    rows = attracted_info_nce_rows(logits, None, flagged)
    lse = torch.logsumexp(logits[0], 0)
    assert rows[0].item() == pytest.approx(((lse - logits[0, 0]) + (lse - logits[0, 3])).item() / 2)
    assert torch.allclose(rows[1:], weighted_info_nce_rows(logits, None)[1:])
    # Through AGCLLoss: an attribute twin pair is pulled together instead of left out.
    attrs = ["category: mug; colour: navy", "category: mug; colour: navy", "category: shoe"]
    q = torch.randn(3, 4, requires_grad=True)
    c = torch.randn(3, 4)
    out = AGCLLoss("agcl", "none", "attributes", false_negative_handling="attract")(
        q, c, attrs, logit_scale=2.0
    )
    logits = 2.0 * F.normalize(q, dim=-1) @ F.normalize(c, dim=-1).T
    expected = (
        attracted_info_nce_rows(logits, None, out.mask).mean()
        + attracted_info_nce_rows(logits.T, None, out.mask_t).mean()
    ) / 2
    assert out.mask[0, 1] and torch.allclose(out.loss, expected)
    with pytest.raises(ValueError, match="false_negative_handling"):
        AGCLLoss("agcl", false_negative_handling="ignore")
