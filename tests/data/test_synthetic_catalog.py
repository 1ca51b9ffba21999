"""The synthetic catalogue: layout, leakage, difficulty, teacher noise, determinism, CLI."""

from __future__ import annotations

import collections
import itertools
import json
import re
import subprocess
import sys
from pathlib import Path

import datasets
import numpy as np
import pytest
from PIL import Image

from afmrl.data.synthetic import SPLITS, CatalogConfig, build_catalog, get_plan
from afmrl.data.synthetic.build import EVAL_COLUMNS, TRAIN_COLUMNS, content_fingerprint
from afmrl.data.synthetic.drawing import draw_item
from afmrl.data.synthetic.listing import render_view, teacher_text
from afmrl.data.synthetic.render import render_photo, sample_seller_style
from afmrl.data.synthetic.schema import CATEGORIES, COLOURS, attribute_keys, vocabulary
from modeling_afmrl.attributes import VALUE_SYNONYMS, normalize_value, parse_attributes

EVAL_SPLITS = ("validation_query", "validation_gallery", "query", "gallery")
CONFIG = CatalogConfig(products=90, seed=0)


@pytest.fixture(scope="session")
def built(tmp_path_factory):
    """One small catalogue (90 products, one process) with its preview, built once."""
    from datasets import load_from_disk

    out = tmp_path_factory.mktemp("catalog") / "cat"
    preview = out.parent / "sheet.png"
    summary = build_catalog(CONFIG, out, num_proc=1, preview=preview, log=lambda _: None)
    return out, summary, load_from_disk(str(out)), preview


def _eval_rows(
    dd, columns=("product_id", "family_id", "title", "gold_attributes", "teacher_attributes")
):
    rows = []
    for split in EVAL_SPLITS:
        table = dd[split].select_columns(list(columns)).to_dict()
        rows += [
            dict(zip(columns, vals, strict=True)) | {"split": split}
            for vals in zip(*table.values(), strict=True)
        ]
    return rows


def test_split_and_column_names(built):
    _, summary, dd, _ = built
    assert list(dd) == list(SPLITS)
    assert dd["train"].column_names == list(TRAIN_COLUMNS)
    for split in EVAL_SPLITS:
        assert dd[split].column_names == list(EVAL_COLUMNS)
    assert {s: dd[s].num_rows for s in SPLITS} == summary["rows"]
    raw = dd["train"].cast_column("image", datasets.Image(decode=False))[0]["image"]
    assert raw["bytes"][:2] == b"\xff\xd8", "images must be stored as JPEG bytes"
    row = dd["query"][0]
    assert row["image"].size == (128, 128) and row["image"].mode == "RGB"


def test_train_has_no_product_link_and_truth_matches_rows(built):
    out, _, dd, _ = built
    train = dd["train"]
    assert not {"product_id", "family_id", "gold_attributes"} & set(train.column_names)
    truth = [
        json.loads(line)
        for line in (out / "truth" / "train_listings.jsonl").read_text().splitlines()
    ]
    assert [t["listing_id"] for t in truth] == train["listing_id"]
    # Listing ids are opaque: no product or family number can be read off them.
    assert all(re.fullmatch(r"[0-9a-f]{16}", lid) for lid in train["listing_id"])
    # Several listings of one product are in train, unlinked (false negatives for a batch).
    per_product = collections.Counter(t["product_id"] for t in truth)
    assert min(per_product.values()) >= 2 and max(per_product.values()) <= 4
    # Rows are shuffled: neighbouring rows rarely belong to the same product.
    same_neighbour = sum(a["product_id"] == b["product_id"] for a, b in itertools.pairwise(truth))
    assert same_neighbour / len(truth) < 0.15


def test_train_pairs_come_from_another_seller_of_the_same_product(built):
    """Each train row's second view is another seller's listing of the same product (its main
    photo and title, i.e. another train row's first view); the truth file names that listing."""
    out, _, dd, _ = built
    train = dd["train"].cast_column("image", datasets.Image(decode=False))
    train = train.cast_column("pos_image", datasets.Image(decode=False))
    truth = [
        json.loads(line)
        for line in (out / "truth" / "train_listings.jsonl").read_text().splitlines()
    ]
    product_of = {t["listing_id"]: t["product_id"] for t in truth}
    first_view = {
        lid: (img["bytes"], title)
        for lid, img, title in zip(train["listing_id"], train["image"], train["title"], strict=True)
    }
    for t, img, title in zip(truth, train["pos_image"], train["pos_title"], strict=True):
        assert t["pos_listing_id"] != t["listing_id"], "a pair must never come from one seller"
        assert product_of[t["pos_listing_id"]] == t["product_id"]
        assert first_view[t["pos_listing_id"]] == (img["bytes"], title)
    # Every listing is the second view of exactly one other row (the next seller, cyclically).
    assert sorted(t["pos_listing_id"] for t in truth) == sorted(product_of)


def test_same_seller_train_pairs_ablation():
    """``train_pairs="same_seller"`` (the ablation) pairs a listing with its own second photo."""
    from afmrl.data.synthetic.build import make_row

    config = CatalogConfig(products=CONFIG.products, seed=0, train_pairs="same_seller")
    plan = get_plan(config)
    products, slots = plan.split_listings("train")
    p, k = int(products[0]), int(slots[0])
    row = make_row(plan, "train", p, k)
    assert row["pos_title"] == render_view(plan, p, k, 1).title
    assert row["pos_image"]["bytes"] == render_view(plan, p, k, 1).jpeg
    assert row["image"]["bytes"] != row["pos_image"]["bytes"]
    cross = make_row(get_plan(CONFIG), "train", p, k)
    assert cross["image"] == row["image"] and cross["pos_image"] != row["pos_image"]
    with pytest.raises(ValueError, match="train_pairs"):
        CatalogConfig(train_pairs="augmented").validate()


def test_products_and_families_disjoint_across_splits(built):
    out, _, dd, _ = built
    truth = [
        json.loads(line)
        for line in (out / "truth" / "train_listings.jsonl").read_text().splitlines()
    ]
    groups = {"train": ({t["product_id"] for t in truth}, {t["family_id"] for t in truth})}
    for name, (q, g) in {"validation": EVAL_SPLITS[:2], "test": EVAL_SPLITS[2:]}.items():
        groups[name] = (
            set(dd[q]["product_id"]) | set(dd[g]["product_id"]),
            set(dd[q]["family_id"]) | set(dd[g]["family_id"]),
        )
    for (a, (pa, fa)), (b, (pb, fb)) in itertools.combinations(groups.items(), 2):
        assert not pa & pb, f"products shared between {a} and {b}"
        assert not fa & fb, f"families shared between {a} and {b}"
    assert sum(len(p) for p, _ in groups.values()) == CONFIG.products
    all_ids = [lid for s in SPLITS for lid in dd[s]["listing_id"]]
    assert len(all_ids) == len(set(all_ids))


@pytest.mark.parametrize("prefix", ["validation_", ""])
def test_queries_have_positives_and_same_family_hard_negatives(built, prefix):
    _, _, dd, _ = built
    query, gallery = dd[f"{prefix}query"], dd[f"{prefix}gallery"]
    assert len(set(query["product_id"])) == query.num_rows, "one query listing per product"
    gallery_products = collections.defaultdict(set)
    for p, f in zip(gallery["product_id"], gallery["family_id"], strict=True):
        gallery_products[f].add(p)
    with_family_negative = 0
    for p, f in zip(query["product_id"], query["family_id"], strict=True):
        assert p in gallery_products[f], f"query product {p} has no positive in the gallery"
        with_family_negative += bool(gallery_products[f] - {p})
    assert with_family_negative / query.num_rows >= 0.9


def test_family_members_differ_in_exactly_one_attribute(built):
    _, _, dd, _ = built
    gold = {}
    families = collections.defaultdict(set)
    for row in _eval_rows(dd):
        parsed = parse_attributes(row["gold_attributes"])
        assert parsed.valid
        gold[row["product_id"]] = parsed.attributes
        families[row["family_id"]].add(row["product_id"])
    assert sum(len(m) >= 2 for m in families.values()) >= 0.9 * len(families)
    axes = set()
    for members in families.values():
        for a, b in itertools.combinations(sorted(members), 2):
            differing = [k for k in gold[a] if gold[a][k] != gold[b][k]]
            assert set(gold[a]) == set(gold[b]) and len(differing) == 1, (gold[a], gold[b])
            axes.add(differing[0])
    # Across families no two products are identical.
    signatures = [tuple(sorted(g.items())) for g in gold.values()]
    assert len(signatures) == len(set(signatures))
    # The whole plan (train included), which also shows families vary many different axes.
    plan = get_plan(CONFIG)
    for fam in plan.families:
        attrs = [plan.product_attributes(p) for p in plan.family_products(fam.index)]
        for a, b in itertools.combinations(attrs, 2):
            assert sum(a[k] != b[k] for k in a) == 1
        axes.add(fam.axis)
    assert {"colour", "brand", "pattern", "size"} <= axes and len(axes) >= 7


def test_gold_attributes_use_the_schema(built):
    _, _, dd, _ = built
    for row in _eval_rows(dd):
        attrs = parse_attributes(row["gold_attributes"]).attributes
        assert sorted(attrs) == sorted(attribute_keys(attrs["category"]))
        for key, value in attrs.items():
            assert value in vocabulary(key, attrs["category"]), (key, value)


def test_titles_omit_attributes_use_synonyms_and_hide_image_only_details(built):
    _, _, dd, _ = built
    rows = _eval_rows(dd)
    used_variant = 0
    colour_omitted = 0
    for row in rows:
        attrs = parse_attributes(row["gold_attributes"]).attributes
        title = row["title"].lower()
        words = set(re.findall(r"[a-z]+", title))
        assert attrs["brand"] not in words, (
            "the brand is printed on the product, never in the title"
        )
        assert not re.search(r"\b(pack|packs|pcs|pieces|set of)\b", title), (
            "the pack count is image-only"
        )
        variants = [
            v for v in VALUE_SYNONYMS[attrs["colour"]] if re.search(rf"\b{re.escape(v)}\b", title)
        ]
        if variants:
            used_variant += 1
            assert all(normalize_value(v) == attrs["colour"] for v in variants)
        elif not re.search(rf"\b{re.escape(attrs['colour'])}\b", title):
            colour_omitted += 1
    assert used_variant > 0.1 * len(rows), "sellers must write synonyms (navy / dark blue)"
    assert colour_omitted > 0, "some titles leave the colour out"
    # Size is only in titles and a minority of titles omit it (checked on the whole plan).
    plan = get_plan(CONFIG)
    mentioned = [
        render_view(plan, p, k, 0).mentioned
        for p in range(0, CONFIG.products, 3)
        for k in range(int(plan.product_n_sellers[p]))
    ]
    no_size = sum("size" not in m for m in mentioned) / len(mentioned)
    assert 0.02 < no_size < 0.35, no_size
    assert any("neckline" not in m and "handle" not in m for m in mentioned)


def test_teacher_noise_follows_the_flags():
    config = CatalogConfig(products=1500, seed=3, teacher_drop=0.3, teacher_wrong=0.15)
    plan = get_plan(config)
    title_has_size = frozenset(["size"])
    dropped = wrong = kept = total = 0
    for p in range(config.products):
        gold = plan.product_attributes(p)
        for k in range(int(plan.product_n_sellers[p])):
            teacher = parse_attributes(teacher_text(plan, p, k, title_has_size)).attributes
            for key, value in gold.items():
                total += 1
                if key not in teacher:
                    dropped += 1
                    continue
                kept += 1
                wrong += teacher[key] != value
                assert teacher[key] in vocabulary(key, gold["category"])
    assert abs(dropped / total - 0.3) < 0.02
    assert abs(wrong / kept - 0.15) < 0.02


def test_teacher_noise_in_the_dataset_and_size_unknown_when_title_omits_it(built):
    _, _, dd, _ = built
    dropped = wrong = kept = total = 0
    for row in _eval_rows(dd):
        gold = parse_attributes(row["gold_attributes"]).attributes
        teacher = parse_attributes(row["teacher_attributes"]).attributes
        for key, value in gold.items():
            if key == "size":
                continue
            total += 1
            if key in teacher:
                kept += 1
                wrong += teacher[key] != value
            else:
                dropped += 1
    assert abs(dropped / total - CONFIG.teacher_drop) < 0.05
    assert abs(wrong / kept - CONFIG.teacher_wrong) < 0.04
    plan = get_plan(CONFIG)
    for p in range(12):
        view = render_view(plan, p, 0, 0)
        if "size" not in view.mentioned:
            assert (
                "size" not in parse_attributes(teacher_text(plan, p, 0, view.mentioned)).attributes
            )


def test_visible_attributes_change_the_drawing_and_size_does_not():
    """Every attribute except size must change the pixels; size must not (it is title-only)."""
    rng = np.random.default_rng(0)
    style = sample_seller_style(rng, "shop")
    for cat in CATEGORIES:
        base = {k: vocabulary(k, cat.name)[0] for k in attribute_keys(cat.name)}
        base |= {"category": cat.name, "colour": "red", "secondary_colour": "navy"}
        for key in attribute_keys(cat.name):
            if key == "category":
                continue
            other = next(
                v for v in vocabulary(key, cat.name) if v != base[key] and v not in ("red", "navy")
            )
            changed = base | {key: other}
            if key == "count":
                a = render_photo(base, style, (0,), 128, np.random.default_rng(1))
                b = render_photo(changed, style, (0,), 128, np.random.default_rng(1))
            else:
                a, b = draw_item(base, 160, (0,)), draw_item(changed, 160, (0,))
            diff = np.abs(np.asarray(a, dtype=np.int16) - np.asarray(b, dtype=np.int16)).max(
                axis=-1
            )
            if key == "size":
                assert diff.max() == 0, f"{cat.name}: size must not be drawn"
            else:
                assert (diff > 40).sum() > 20, f"{cat.name}: changing {key} is not visible"


def test_rows_are_redrawn_identically_and_preview_written(built):
    from afmrl.data.synthetic.build import make_row

    _, _, dd, preview = built
    plan = get_plan(CONFIG)
    products, slots = plan.split_listings("query")
    row = make_row(plan, "query", int(products[0]), int(slots[0]))
    stored = dd["query"].cast_column("image", datasets.Image(decode=False))[0]
    assert row["image"]["bytes"] == stored["image"]["bytes"]
    assert row["title"] == stored["title"]
    sheet = Image.open(preview)
    assert sheet.format == "PNG" and sheet.width > 800 and sheet.height > 400
    # The sheet shows real photos: many distinct colours, not a blank canvas.
    assert len(sheet.convert("RGB").getcolors(maxcolors=1 << 20) or []) > 1000


def test_same_seed_same_fingerprint_any_num_proc_and_seed_changes_it(built, tmp_path):
    from datasets import load_from_disk

    out, summary, dd, _ = built
    on_disk = json.loads((out / "fingerprint.json").read_text())
    assert on_disk["sha256"] == summary["fingerprint"] == content_fingerprint(dd)
    again = build_catalog(CONFIG, tmp_path / "again", num_proc=2, log=lambda _: None)
    assert again["fingerprint"] == summary["fingerprint"]
    other = build_catalog(
        CatalogConfig(products=CONFIG.products, seed=1),
        tmp_path / "seed1",
        num_proc=1,
        log=lambda _: None,
    )
    assert other["fingerprint"] != summary["fingerprint"]
    assert load_from_disk(str(tmp_path / "seed1"))["train"]["title"] != dd["train"]["title"]


def test_bad_input_gets_a_clear_error(tmp_path, capsys):
    from afmrl.cli import main

    assert main(["synth", "--out", str(tmp_path / "a"), "--products", "5"]) == 2
    assert "products" in capsys.readouterr().err
    assert main(["synth", "--out", str(tmp_path / "a"), "--teacher-drop", "1.5"]) == 2
    assert "--teacher-drop" in capsys.readouterr().err
    assert main(["synth", "--out", str(tmp_path / "a"), "--teacher-drop", "1"]) == 2
    assert "teacher_drop" in capsys.readouterr().err
    assert main(["synth", "--out", str(tmp_path / "a"), "--train-pairs", "mixed"]) == 2
    assert "--train-pairs: invalid choice: 'mixed'" in capsys.readouterr().err
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    assert main(["synth", "--out", str(tmp_path / "busy"), "--products", "40"]) == 2
    assert "not empty" in capsys.readouterr().err
    assert (tmp_path / "busy" / "notes.txt").read_text() == "mine"


@pytest.mark.slow
def test_cli_twice_same_fingerprint_seed_one_differs(tmp_path):
    def synth(out: Path, seed: int) -> str:
        cmd = [sys.executable, "-m", "afmrl.cli", "synth", "--out", str(out), "--products", "200"]
        cmd += ["--seed", str(seed)]
        res = subprocess.run(cmd, capture_output=True, text=True, check=True)
        printed = re.search(r"fingerprint ([0-9a-f]{64})", res.stdout).group(1)
        assert json.loads((out / "fingerprint.json").read_text())["sha256"] == printed
        return printed

    a, b = synth(tmp_path / "A", 0), synth(tmp_path / "B", 0)
    assert a == b
    assert synth(tmp_path / "C", 1) != a
    # A fresh process that only loads the saved DatasetDict recomputes the same fingerprint.
    code = (
        "import sys, datasets\n"
        "from afmrl.data.synthetic import content_fingerprint\n"
        "print(content_fingerprint(datasets.load_from_disk(sys.argv[1])))\n"
    )
    res = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "B")],
        capture_output=True,
        text=True,
        check=True,
    )
    assert res.stdout.strip() == a


def test_colour_palette_is_distinct():
    """Named colours must be tellable apart (the colour axis is a hard negative, not noise)."""
    rgb = np.array(list(COLOURS.values()), dtype=float)
    dist = np.linalg.norm(rgb[:, None] - rgb[None], axis=-1)
    np.fill_diagonal(dist, np.inf)
    assert len(COLOURS) >= 10 and dist.min() > 40
