"""The retrieval runner, baselines and report: numbers vs independent brute force, the evaluate
module, chance vs the hypergeometric law, single-modality baselines, excluded queries, files."""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pytest
from PIL import Image

from afmrl.evaluation.baselines import (
    IMAGE_ONLY,
    TITLE_BM25,
    TITLE_ONLY,
    baselines_for_task,
    title_bm25_run,
)
from afmrl.evaluation.report import markdown_table, metrics_document, write_report
from afmrl.evaluation.runner import (
    RetrievalRun,
    attribute_values,
    chance_hit_probability,
    chance_levels,
    chance_recall_at_k,
    evaluate_embeddings,
    evaluate_model,
    model_display_name,
)
from afmrl.retrieval.encoding import encode_inputs, encode_split

# ------------------------------------------------------------------------------ fixtures


def _catalogue(n_products: int, per_product: int, per_family: int, dim: int, seed: int):
    """Random embeddings around product centres: query row 0 of each product, the rest gallery."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((n_products, dim))
    q, g, qt, gt = [], [], [], []
    for p in range(n_products):
        fam = f"f{p // per_family}"
        for j in range(per_product):
            v = centres[p] + 0.9 * rng.standard_normal(dim)
            row = (f"l{p}-{j}", f"p{p}", fam)
            (q if j == 0 else g).append(v)
            (qt if j == 0 else gt).append(row)
    norm = lambda x: (np.asarray(x) / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)  # noqa: E731
    return norm(q), norm(g), _columns(qt), _columns(gt)


def _columns(rows: list[tuple]) -> list[list]:
    return [[row[c] for row in rows] for c in range(len(rows[0]))]


def _brute_force(q, g, q_labels, g_labels, g_ids, k_values=(1, 5, 10)):
    """Independent reference: full score matrix, stable sort, hit rate and M5Product AP@10."""
    scores = q.astype(np.float64) @ g.astype(np.float64).T
    out = {f"recall@{k}": [] for k in k_values}
    out["map@10"], out["mrr"] = [], []
    for i in range(len(q)):
        order = sorted(range(len(g)), key=lambda j: (-scores[i, j], j))
        rel = [g_labels[j] == q_labels[i] for j in order]
        n_pos = sum(rel)
        if n_pos == 0:
            continue
        for k in k_values:
            out[f"recall@{k}"].append(float(any(rel[:k])))
        hits, ap = 0, 0.0
        for rank, r in enumerate(rel[:10], 1):
            if r:
                hits += 1
                ap += hits / rank
        out["map@10"].append(ap / min(10, n_pos))
        out["mrr"].append(1.0 / (rel.index(True) + 1))
    return {k: float(np.mean(v)) for k, v in out.items()}, len(out["mrr"])


# ------------------------------------------------------------------- evaluate_embeddings


def test_runner_matches_independent_brute_force():
    q, g, (qi, qp, qf), (gi, gp, gf) = _catalogue(40, 4, 4, 16, seed=0)
    run = evaluate_embeddings(q, g, qi, qp, gi, gp, qf, gf, depth=len(g))
    expected, n = _brute_force(q, g, qp, gp, gi)
    for key, value in expected.items():
        assert run.metrics[key] == pytest.approx(value), key
    assert run.metrics["num_queries"] == n == 40
    assert run.metrics["num_gallery"] == 120
    assert run.metrics["excluded_queries"] == 0
    # The numbers are not trivial: neither perfect nor zero.
    assert 0.1 < run.metrics["recall@1"] < 0.95


def test_hard_score_ranks_only_the_query_family():
    q, g, (qi, qp, qf), (gi, gp, gf) = _catalogue(30, 3, 3, 16, seed=1)
    run = evaluate_embeddings(q, g, qi, qp, gi, gp, qf, gf)
    # Reference: brute force over each family's gallery rows only.
    hits1, maps = [], []
    for i in range(len(q)):
        rows = [j for j in range(len(g)) if gf[j] == qf[i]]
        sub, sub_labels = g[rows], [gp[j] for j in rows]
        ref, _ = _brute_force(q[i : i + 1], sub, [qp[i]], sub_labels, [gi[j] for j in rows])
        hits1.append(ref["recall@1"])
        maps.append(ref["map@10"])
    assert run.metrics["hard_recall@1"] == pytest.approx(np.mean(hits1))
    assert run.metrics["hard_map@10"] == pytest.approx(np.mean(maps))
    assert run.metrics["hard_recall@1"] >= run.metrics["recall@1"]
    for ranked, qfam in zip(run.hard_rankings, qf, strict=True):
        assert {gf[gi.index(x)] for x in ranked} == {qfam}


def test_runner_agrees_with_the_evaluate_module():
    import evaluate

    q, g, (qi, qp, qf), (gi, gp, gf) = _catalogue(25, 3, 5, 12, seed=2)
    run = evaluate_embeddings(q, g, qi, qp, gi, gp, qf, gf)
    from afmrl.evaluation.modules import metric_path

    metric = evaluate.load(metric_path("retrieval"))
    for rankings, positives, prefix in (
        (run.rankings, run.positives, ""),
        (run.hard_rankings, run.hard_positives, "hard_"),
    ):
        via_module = metric.compute(predictions=rankings, references=[sorted(p) for p in positives])
        for key in ("recall@1", "recall@5", "recall@10", "map@10", "mrr", "ndcg@10"):
            assert run.metrics[prefix + key] == pytest.approx(via_module[key]), prefix + key


def test_depth_cuts_every_metric():
    q, g, (qi, qp, qf), (gi, gp, gf) = _catalogue(25, 3, 5, 12, seed=4)
    full = evaluate_embeddings(q, g, qi, qp, gi, gp, qf, gf)
    cut = evaluate_embeddings(q, g, qi, qp, gi, gp, qf, gf, depth=1)
    assert cut.metrics["recall@1"] == full.metrics["recall@1"]
    # With one result per query, R@5, R@10 and MRR all equal R@1.
    one = cut.metrics["recall@1"]
    assert cut.metrics["recall@5"] == cut.metrics["recall@10"] == cut.metrics["mrr"] == one
    assert cut.metrics["hard_recall@5"] == cut.metrics["hard_recall@1"]
    assert all(len(r) == 1 for r in cut.rankings) and cut.recall_curve[-1] == cut.recall_curve[0]
    assert full.metrics["recall@10"] > cut.metrics["recall@10"]
    with pytest.raises(ValueError, match="depth must be a positive integer"):
        evaluate_embeddings(q, g, qi, qp, gi, gp, depth=0)


def _lucene_bm25(query: list[str], docs: list[list[str]], k1=1.5, b=0.75) -> list[float]:
    """Okapi BM25 with Lucene's idf, written out (the reference for the bm25s peer)."""
    n, avg = len(docs), sum(map(len, docs)) / len(docs)
    out = []
    for doc in docs:
        score = 0.0
        for term in set(query):
            df = sum(term in d for d in docs)
            tf = doc.count(term)
            if tf:
                idf = math.log(1 + (n - df + 0.5) / (df + 0.5))
                score += idf * tf * (k1 + 1) / (tf + k1 * (1 - b + b * len(doc) / avg))
        out.append(score)
    return out


def test_title_bm25_peer_ranks_as_lucene_bm25(listings):
    gallery = listings
    query = listings.select([0, 2, 4]).map(
        lambda r, i: {"listing_id": f"q{i}", "title": ["dark navy mug", "red mug", "green hat"][i]},
        with_indices=True,
    )
    run = title_bm25_run(query, gallery)
    docs = [t.lower().split() for t in gallery["title"]]
    for ranked, title in zip(run.rankings, query["title"], strict=True):
        scores = _lucene_bm25(title.split(), docs)
        order = sorted(range(len(docs)), key=lambda j: (-scores[j], j))
        assert ranked == [gallery["listing_id"][j] for j in order]
    assert run.metrics["recall@1"] == 1.0  # each query's words pick its product first
    assert run.settings["query_modality"] == "text"


def test_queries_without_a_positive_are_excluded_and_counted():
    q, g, (qi, qp, qf), (gi, gp, gf) = _catalogue(12, 3, 3, 8, seed=3)
    qp = list(qp)
    qp[0], qp[5] = "absent-product", "another-absent"  # no gallery row has these
    run = evaluate_embeddings(q, g, qi, qp, gi, gp, qf, gf)
    assert run.metrics["excluded_queries"] == 2
    assert run.metrics["num_queries"] == 10
    keep = [i for i in range(12) if i not in (0, 5)]
    expected, _ = _brute_force(q[keep], g, [qp[i] for i in keep], gp, gi)
    assert run.metrics["recall@1"] == pytest.approx(expected["recall@1"])
    assert run.query_ids == [qi[i] for i in keep]
    with pytest.raises(ValueError, match="none of the 2 queries has a positive"):
        evaluate_embeddings(q[:2], g, qi[:2], ["x", "y"], gi, gp)


def test_a_query_that_is_also_in_the_gallery_never_retrieves_itself():
    q, g, (qi, qp, _), (gi, gp, _) = _catalogue(10, 3, 2, 8, seed=4)
    gallery = np.concatenate([g, q[:3]])
    ids, labels = gi + qi[:3], gp + qp[:3]
    run = evaluate_embeddings(q, gallery, qi, qp, ids, labels)
    for qid, ranked, pos in zip(run.query_ids, run.rankings, run.positives, strict=True):
        assert qid not in ranked and qid not in pos
    # Without the self rows it is the plain gallery (self rows are the only change).
    plain = evaluate_embeddings(q, g, qi, qp, gi, gp)
    assert run.metrics["recall@1"] == pytest.approx(plain.metrics["recall@1"])
    assert run.num_candidates[:3] == [len(gallery) - 1] * 3


def test_bad_inputs_name_the_field():
    q, g, (qi, qp, _), (gi, gp, _) = _catalogue(5, 2, 5, 4, seed=5)
    with pytest.raises(ValueError, match="query_products has 4 entries, expected 5"):
        evaluate_embeddings(q, g, qi, qp[:4], gi, gp)
    with pytest.raises(ValueError, match="query dim 4 != gallery dim 3"):
        evaluate_embeddings(q, g[:, :3], qi, qp, gi, gp)
    with pytest.raises(ValueError, match="gallery listing ids are not unique"):
        evaluate_embeddings(q, g, qi, qp, ["same"] * len(g), gp)


# ----------------------------------------------------------------------------------- chance


@pytest.mark.parametrize(
    ("n", "p", "k"), [(6, 2, 2), (10, 1, 3), (50, 3, 10), (7, 7, 1), (9, 0, 4)]
)
def test_chance_hit_probability_is_the_hypergeometric_law(n, p, k):
    from scipy.stats import hypergeom

    expected = 1.0 - hypergeom.pmf(0, n, p, k)
    assert chance_hit_probability(p, n, k) == pytest.approx(expected)
    if n <= 10:  # and by enumerating every top-k set
        hits = [any(i < p for i in top) for top in itertools.combinations(range(n), k)]
        assert chance_hit_probability(p, n, k) == pytest.approx(np.mean(hits))


def test_chance_levels_of_a_run():
    q, g, (qi, qp, qf), (gi, gp, gf) = _catalogue(20, 3, 4, 8, seed=6)
    run = evaluate_embeddings(q, g, qi, qp, gi, gp, qf, gf)
    chance = chance_levels(run)
    # 2 positives in 40 gallery rows for every query.
    assert chance["recall@1"] == pytest.approx(2 / 40)
    assert chance["recall@10"] == pytest.approx(1 - math.comb(38, 10) / math.comb(40, 10))
    # Hard: 8 rows per family, 2 positives.
    assert chance["hard_recall@1"] == pytest.approx(2 / 8)
    assert len(chance["recall_curve"]) == 50 and chance["recall_curve"][-1] == 1.0
    assert chance_recall_at_k([1, 3], [10, 10], 1) == pytest.approx(0.2)
    with pytest.raises(ValueError, match="num_positives <= gallery_size"):
        chance_hit_probability(5, 3, 1)


# ------------------------------------------------------------------------- model inputs


def test_encode_inputs_single_modality():
    rows = {"image": ["img0", "img1"], "title": ["a", None]}
    assert encode_inputs(rows, "image", attributes=["x", "y"]) == {"images": ["img0", "img1"]}
    assert encode_inputs(rows, "text", attributes=["x", "y"]) == {
        "texts": ["a", ""],
        "attributes": ["x", "y"],
    }
    assert encode_inputs(rows, "listing") == {"images": ["img0", "img1"], "texts": ["a", ""]}
    with pytest.raises(ValueError, match="modality must be one of"):
        encode_inputs(rows, "audio")
    names = [b.name for b in baselines_for_task("listing")]
    assert names[:3] == [TITLE_BM25.name, TITLE_ONLY.name, IMAGE_ONLY.name]
    assert (TITLE_ONLY.query_modality, TITLE_ONLY.gallery_modality) == ("text", "text")
    assert (IMAGE_ONLY.query_modality, IMAGE_ONLY.gallery_modality) == ("image", "image")


@pytest.fixture(scope="module")
def listings():
    """Six listings with distinct photos and titles, as a datasets.Dataset."""
    from datasets import Dataset

    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)) for _ in range(6)]
    return Dataset.from_dict(
        {
            "listing_id": [f"l{i}" for i in range(6)],
            "product_id": ["p0", "p0", "p1", "p1", "p2", "p2"],
            "family_id": ["f0"] * 4 + ["f1"] * 2,
            "image": images,
            "title": ["navy mug", "blue mug 350ml", "red mug", "crimson cup", "green hat", "hat"],
            "teacher_attributes": ["colour: navy", "colour: navy", "", None, "colour: green", ""],
            "gold_attributes": ["SECRET"] * 6,
        }
    )


@pytest.fixture(scope="module")
def dual_model():
    from tiny_models import tiny_dual_model

    return tiny_dual_model()


def test_image_only_and_title_only_are_genuinely_single_modality(listings, dual_model):
    shuffled_titles = listings.map(lambda r, i: {"title": f"other text {i}"}, with_indices=True)
    other_images = listings.map(lambda r: {"image": r["image"].rotate(90)})
    image = encode_split(dual_model, listings, "image", show_progress=False, batch_size=4)
    np.testing.assert_allclose(
        image, encode_split(dual_model, shuffled_titles, "image", show_progress=False), atol=1e-5
    )
    text = encode_split(dual_model, listings, "text", show_progress=False)
    np.testing.assert_allclose(
        text, encode_split(dual_model, other_images, "text", show_progress=False), atol=1e-5
    )
    # The listing embedding does see both (so the assertions above could fail).
    listing = encode_split(dual_model, listings, "listing", show_progress=False)
    assert not np.allclose(listing, encode_split(dual_model, shuffled_titles, "listing"), atol=1e-3)
    assert not np.allclose(listing, encode_split(dual_model, other_images, "listing"), atol=1e-3)
    # An image-only side ignores attributes even if some are given.
    np.testing.assert_allclose(
        image, encode_split(dual_model, listings, "image", ["colour: red"] * 6), atol=1e-5
    )


def test_evaluate_model_matches_encode_plus_brute_force(listings, dual_model):
    run = evaluate_model(dual_model, listings, listings, name="tiny", show_progress=False)
    emb = dual_model.encode(images=list(listings["image"]), texts=list(listings["title"])).numpy()
    # Query == gallery: each query's own row is left out, its sibling is the positive.
    expected = []
    for i in range(6):
        others = [j for j in range(6) if j != i]
        best = max(others, key=lambda j: (float(emb[i] @ emb[j]), -j))
        expected.append(listings["product_id"][best] == listings["product_id"][i])
    assert run.metrics["recall@1"] == pytest.approx(np.mean(expected))
    assert run.metrics["num_gallery"] == 6 and run.metrics["num_queries"] == 6
    assert run.settings["query_modality"] == "listing"


def test_attribute_sources(listings, dual_model):
    assert attribute_values(listings, "none", "query") is None
    assert attribute_values(listings, "teacher", "query") == [
        "colour: navy",
        "colour: navy",
        "",
        "",
        "colour: green",
        "",
    ]
    no_teacher = listings.remove_columns("teacher_attributes")
    # gold_attributes is present but must never stand in for the teacher's.
    with pytest.raises(ValueError, match="split 'gallery' has no 'teacher_attributes' column"):
        attribute_values(no_teacher, "teacher", "gallery")
    with pytest.raises(ValueError, match="attributes must be one of"):
        attribute_values(listings, "gold", "query")
    with_teacher = evaluate_model(
        dual_model, listings, listings, attributes="teacher", show_progress=False
    )
    plain = evaluate_model(dual_model, listings, listings, show_progress=False)
    assert with_teacher.settings["attributes"] == "teacher"
    assert plain.settings["attributes"] == "none"


def test_teacher_attributes_change_the_listing_embeddings(listings, dual_model):
    attrs = attribute_values(listings, "teacher", "query")
    plain = encode_split(dual_model, listings, "listing", show_progress=False)
    with_attrs = encode_split(dual_model, listings, "listing", attrs, show_progress=False)
    changed = [not np.allclose(a, b, atol=1e-5) for a, b in zip(plain, with_attrs, strict=True)]
    assert changed == [bool(a) for a in attrs]


# ---------------------------------------------------------------------------------- report


def _runs():
    q, g, (qi, qp, qf), (gi, gp, gf) = _catalogue(20, 3, 4, 8, seed=7)
    a = evaluate_embeddings(q, g, qi, qp, gi, gp, qf, gf, name="model-a")
    b = evaluate_embeddings(q[:, ::-1].copy(), g, qi, qp, gi, gp, qf, gf, name="model | b")
    for run in (a, b):
        run.settings.update(query_modality="listing", gallery_modality="listing")
    return a, b


def test_report_files(tmp_path):
    a, b = _runs()
    chance = chance_levels(a)
    config = {"split": "test", "task": "listing", "attributes": "none", "depth": 100}
    paths = write_report(tmp_path, [a, b], chance, config)
    doc = json.loads(paths["metrics"].read_text())
    assert doc["recall@1"] == a.metrics["recall@1"]  # the main model's flat keys at the top
    assert list(doc["models"]) == ["model-a", "model | b"]
    assert doc["models"]["model | b"]["map@10"] == b.metrics["map@10"]
    assert doc["chance"]["recall@1"] == pytest.approx(chance["recall@1"])
    assert "recall_curve" not in doc["chance"] and doc["config"]["split"] == "test"
    report = paths["report"].read_text()
    table = [line for line in report.splitlines() if line.startswith("|")]
    assert len(table) == 2 + 2 + 1  # header, rule, two models, chance
    assert table[0].startswith("| model | query → gallery | R@1 | R@5 | R@10 | mAP@10 | MRR |")
    assert "model \\| b" in table[3]  # a pipe in a name does not break the table
    assert f"{a.metrics['recall@1']:.3f}" in table[2]
    assert "60 queries scored" not in report and "20 queries scored (0 excluded" in report
    with Image.open(paths["plot"]) as png:
        assert png.format == "PNG" and png.size[0] > 400
    curves = json.loads(paths["curves"].read_text())
    assert curves["model-a"] == a.recall_curve and len(curves["chance"]) == 50


def test_report_rejects_duplicate_names_and_formats_missing_values():
    a, _ = _runs()
    with pytest.raises(ValueError, match="model names must be unique"):
        metrics_document([a, a])
    table = markdown_table([a], {"recall@1": 0.01})
    assert table.splitlines()[-1].startswith("| chance (random ranking) | – | 0.010 | – |")


def test_model_display_name():
    assert model_display_name("/x/run1/") == "run1"
    assert model_display_name("/y/run1", taken=["run1"]) == "run1-2"
    assert model_display_name("/z/run1", taken=["run1", "run1-2"]) == "run1-3"


def test_run_object_keeps_kept_queries_only():
    q, g, (qi, qp, qf), (gi, gp, gf) = _catalogue(6, 2, 2, 4, seed=8)
    qp = ["nope", *qp[1:]]
    run = evaluate_embeddings(q, g, qi, qp, gi, gp, qf, gf)
    assert isinstance(run, RetrievalRun)
    assert len(run.rankings) == len(run.positives) == len(run.query_ids) == 5
    assert all(run.positives)
