"""``load_catalog``: every input form lands in the data contract; bad rows are skipped and counted.

Tiny catalogues are built here with PIL: solid-colour images whose pixels are checked after loading,
so a row that lands in the wrong split or with the wrong image is caught.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from datasets import Dataset, DatasetDict, Features, Image, Value
from PIL import Image as PILImage

from afmrl.data.catalog import CatalogReport, load_catalog, parse_column_mapping

COLOURS = {
    "007": (200, 30, 30),
    "008": (30, 200, 30),
    "009": (30, 30, 200),
    "q1": (250, 250, 0),
    "g1": (0, 250, 250),
    "g2": (250, 0, 250),
}


def _write_image(path: Path, rgb: tuple[int, int, int], fmt: str = "PNG") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    PILImage.new("RGB", (24, 16), rgb).save(path, format=fmt)


def _write_csv(path: Path, rows: list[dict]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def _pixel(image) -> tuple[int, int, int]:
    return image.convert("RGB").getpixel((5, 5))


@pytest.fixture
def csv_catalog(tmp_path: Path) -> Path:
    """A folder with images/ and a catalog.csv holding train, query and gallery rows."""
    root = tmp_path / "shop"
    rows = []
    for lid in ("007", "008", "009"):
        _write_image(root / "images" / f"{lid}.png", COLOURS[lid])
        rows.append(
            {"listing_id": lid, "image": f"images/{lid}.png", "title": f"shirt {lid}", "split": ""}
        )
    rows[2]["split"] = "train"  # an explicit split and an empty one both mean train
    for lid, split in (
        ("q1", "query"),
        ("g1", "gallery"),
        ("g2", "gallery"),
    ):
        _write_image(root / "images" / f"{lid}.jpg", COLOURS[lid], fmt="JPEG")
        rows.append({"listing_id": lid, "image": f"images/{lid}.jpg", "title": lid, "split": split})
    for row in rows:
        row["product_id"] = {"q1": "p1", "g1": "p1", "g2": "p2"}.get(row["listing_id"], "")
    _write_csv(root / "catalog.csv", rows)
    return root


def _assert_contract(dd: DatasetDict) -> None:
    for split, ds in dd.items():
        assert isinstance(ds.features["image"], Image) and ds.features["image"].decode, split
        for row in ds:
            assert _pixel(row["image"]) == pytest.approx(COLOURS[row["listing_id"]], abs=6)


def test_csv_folder_splits_relative_paths_and_string_ids(
    csv_catalog: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # paths are relative to the CSV, not to the working directory
    dd, report = load_catalog(csv_catalog, cache_dir=tmp_path / "cache", return_report=True)
    assert sorted(dd) == ["gallery", "query", "train"]
    assert dd["train"]["listing_id"] == ["007", "008", "009"]  # "007" must not become 7
    assert "split" not in dd["train"].column_names
    assert dd["gallery"]["product_id"] == ["p1", "p2"]
    _assert_contract(dd)
    assert report.format == "csv"
    assert report.rows == report.kept == {"gallery": 2, "query": 1, "train": 3}
    assert report.num_skipped == 0


def test_splits_selection_and_renaming(csv_catalog: Path, tmp_path: Path) -> None:
    dd = load_catalog(csv_catalog, splits=["query"], cache_dir=tmp_path / "cache")
    assert list(dd) == ["query"]
    dd = load_catalog(
        csv_catalog, splits={"validation_gallery": "gallery"}, cache_dir=tmp_path / "cache"
    )
    assert list(dd) == ["validation_gallery"] and dd["validation_gallery"].num_rows == 2
    with pytest.raises(ValueError, match=r"no split 'test'.*splits found"):
        load_catalog(csv_catalog, splits={"query": "test"}, cache_dir=tmp_path / "cache")


def test_unknown_split_name_is_a_clear_error(tmp_path: Path) -> None:
    _write_image(tmp_path / "a.png", COLOURS["007"])
    _write_csv(
        tmp_path / "catalog.csv",
        [{"listing_id": "a", "image": "a.png", "title": "t", "split": "test"}],
    )
    with pytest.raises(ValueError, match=r"split 'test' is not a contract split.*'query'"):
        load_catalog(tmp_path, cache_dir=tmp_path / "cache")


def test_jsonl_file_path_all_rows_train(tmp_path: Path) -> None:
    rows = []
    for lid in ("007", "008"):
        _write_image(tmp_path / "pics" / f"{lid}.png", COLOURS[lid])
        rows.append(
            {
                "listing_id": lid,
                "image": f"pics/{lid}.png",
                "title": f"mug {lid}",
                "pos_image": f"pics/{lid}.png",
                "pos_title": f"coffee mug {lid}",
                "teacher_attributes": "category: mug",
            }
        )
    path = tmp_path / "listings.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    dd, report = load_catalog(path, cache_dir=tmp_path / "cache", return_report=True)
    assert list(dd) == ["train"] and report.format == "jsonl"
    assert isinstance(dd["train"].features["pos_image"], Image)
    _assert_contract(dd)
    row = dd["train"][1]
    assert _pixel(row["pos_image"]) == COLOURS["008"]
    assert row["pos_title"] == "coffee mug 008" and row["teacher_attributes"] == "category: mug"


def test_saved_datasetdict_round_trip(csv_catalog: Path, tmp_path: Path) -> None:
    first = load_catalog(csv_catalog, cache_dir=tmp_path / "cache")
    first.save_to_disk(str(tmp_path / "saved"))
    # save_to_disk embeds the image bytes: the copy must not depend on the original files.
    for image in (csv_catalog / "images").iterdir():
        image.unlink()
    second, report = load_catalog(tmp_path / "saved", return_report=True)
    assert report.format == "save_to_disk" and report.num_skipped == 0
    assert sorted(second) == sorted(first)
    for split in first:
        assert second[split]["listing_id"] == first[split]["listing_id"]
        assert second[split]["title"] == first[split]["title"]
    _assert_contract(second)


def test_single_saved_dataset_is_train(tmp_path: Path) -> None:
    _write_image(tmp_path / "a.png", COLOURS["007"])
    ds = Dataset.from_dict(
        {"listing_id": ["007"], "image": [str(tmp_path / "a.png")], "title": ["a"]}
    ).cast_column("image", Image())
    ds.save_to_disk(str(tmp_path / "one"))
    dd = load_catalog(tmp_path / "one")
    assert list(dd) == ["train"]
    _assert_contract(dd)


def test_missing_required_column_names_it_and_lists_found(tmp_path: Path) -> None:
    _write_image(tmp_path / "a.png", COLOURS["007"])
    _write_csv(tmp_path / "catalog.csv", [{"listing_id": "a", "image": "a.png", "name": "t"}])
    with pytest.raises(ValueError) as err:
        load_catalog(tmp_path, cache_dir=tmp_path / "cache")
    message = str(err.value)
    assert "split 'train'" in message and "'title'" in message
    assert "columns found: ['listing_id', 'image', 'name']" in message


def test_eval_split_requires_product_id(csv_catalog: Path, tmp_path: Path) -> None:
    dd = load_catalog(csv_catalog, cache_dir=tmp_path / "cache")
    dd["query"].remove_columns("product_id").save_to_disk(str(tmp_path / "q"))
    DatasetDict({"query": dd["query"].remove_columns("product_id")}).save_to_disk(
        str(tmp_path / "qq")
    )
    with pytest.raises(
        ValueError, match=r"split 'query' is missing required column\(s\) 'product_id'"
    ):
        load_catalog(tmp_path / "qq")
    # A single saved Dataset is train, where product_id is not required.
    assert load_catalog(tmp_path / "q")["train"].num_rows == 1


def test_bad_rows_are_skipped_counted_and_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    _write_image(tmp_path / "good1.png", COLOURS["007"])
    _write_image(tmp_path / "good2.jpg", COLOURS["008"], fmt="JPEG")
    (tmp_path / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 definitely not a jpeg" * 10)
    # Truncated inside the scan data: the header opens fine, only decoding finds the damage.
    PILImage.effect_noise((128, 128), 64).convert("RGB").save(tmp_path / "noise.jpg")
    jpeg = (tmp_path / "noise.jpg").read_bytes()
    (tmp_path / "truncated.jpg").write_bytes(jpeg[: len(jpeg) * 3 // 4])
    (tmp_path / "notes.png").write_text("a text file named like an image")
    rows = [
        ("007", "good1.png", "red shirt"),
        ("bad1", "corrupt.jpg", "corrupt bytes"),
        ("bad2", "truncated.jpg", "half a jpeg"),
        ("bad3", "notes.png", "not an image"),
        ("bad4", "gone.png", "missing file"),
        ("bad5", "good1.png", "   "),
        ("bad6", "", "no image at all"),
        ("008", "good2.jpg", "green shirt"),
    ]
    _write_csv(
        tmp_path / "catalog.csv",
        [{"listing_id": lid, "image": img, "title": title} for lid, img, title in rows],
    )
    with caplog.at_level(logging.WARNING, logger="afmrl.data.catalog"):
        dd, report = load_catalog(tmp_path, cache_dir=tmp_path / "cache", return_report=True)
    assert dd["train"]["listing_id"] == ["007", "008"]
    _assert_contract(dd)
    assert report.rows == {"train": 8} and report.kept == {"train": 2}
    assert report.skipped == {
        "train": {
            "image: unreadable": 3,
            "image: missing file": 1,
            "image: missing": 1,
            "title: empty": 1,
        }
    }
    assert report.num_skipped == 6
    assert "train: 2/8 rows kept" in report.summary() and "title: empty 1" in report.summary()
    assert any("skipped 6 rows" in r.getMessage() for r in caplog.records)
    # Without the image check only titles and ids are checked.
    _, fast = load_catalog(
        tmp_path, cache_dir=tmp_path / "cache", check_images=False, return_report=True
    )
    assert fast.skipped == {"train": {"title: empty": 1}}


def test_corrupt_embedded_bytes_are_skipped(tmp_path: Path) -> None:
    _write_image(tmp_path / "a.png", COLOURS["q1"])
    features = Features(
        {
            "listing_id": Value("string"),
            "product_id": Value("string"),
            "image": Image(),
            "title": Value("string"),
        }
    )
    good = {"bytes": (tmp_path / "a.png").read_bytes(), "path": None}
    gallery = Dataset.from_dict(
        {
            "listing_id": ["q1", "g9", "g8"],
            "product_id": ["p1", "p1", None],
            "image": [good, {"bytes": b"\x89PNG\r\n\x1a\n garbage", "path": None}, good],
            "title": ["a", "b", "c"],
        },
        features=features,
    )
    DatasetDict({"gallery": gallery}).save_to_disk(str(tmp_path / "dd"))
    dd, report = load_catalog(tmp_path / "dd", return_report=True)
    assert dd["gallery"]["listing_id"] == ["q1"]
    assert report.skipped == {"gallery": {"image: unreadable": 1, "product_id: missing": 1}}


def test_all_rows_bad_is_an_error(tmp_path: Path) -> None:
    _write_csv(tmp_path / "catalog.csv", [{"listing_id": "a", "image": "x.png", "title": "t"}])
    with pytest.raises(ValueError, match=r"split 'train': all 1 rows were skipped"):
        load_catalog(tmp_path, cache_dir=tmp_path / "cache")


def test_column_mapping_renames_to_contract_names(tmp_path: Path) -> None:
    _write_image(tmp_path / "img" / "007.png", COLOURS["007"])
    _write_csv(
        tmp_path / "products.csv",
        [{"sku": "007", "photo": "img/007.png", "product_name": "red tee", "part": "train"}],
    )
    mapping = parse_column_mapping(
        ["listing_id=sku", "image = photo", "title=product_name", "split=part"]
    )
    assert mapping == {
        "listing_id": "sku",
        "image": "photo",
        "title": "product_name",
        "split": "part",
    }
    dd = load_catalog(tmp_path / "products.csv", columns=mapping, cache_dir=tmp_path / "cache")
    assert dd["train"].column_names == ["listing_id", "image", "title"]
    assert dd["train"][0]["title"] == "red tee"
    _assert_contract(dd)
    # A mapped column that is not there: the error names both names.
    with pytest.raises(ValueError, match=r"'title' \(mapped from 'name'\).*columns found"):
        load_catalog(
            tmp_path / "products.csv",
            columns={**mapping, "title": "name"},
            cache_dir=tmp_path / "cache",
        )


@pytest.mark.parametrize(
    ("items", "message"),
    [
        (["title"], "expected CONTRACT=YOURS"),
        (["=name"], "expected CONTRACT=YOURS"),
        (["title="], "expected CONTRACT=YOURS"),
        (["titel=name"], "'titel': not a contract column"),
        (["title=a", "title=b"], "mapped twice"),
        (["title=a", "pos_title=a"], r"\['a'\] mapped to more than one"),
    ],
)
def test_parse_column_mapping_errors(items: list[str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_column_mapping(items)


def test_missing_local_path_is_file_not_found(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no such file or folder"):
        load_catalog(str(tmp_path / "nope.csv"))
    (tmp_path / "empty_folder").mkdir()
    with pytest.raises(FileNotFoundError, match=r"no catalog.csv or catalog.jsonl"):
        load_catalog(tmp_path / "empty_folder")


def test_hub_id_offline_gives_a_clear_error(tmp_path: Path) -> None:
    # A fresh process with the Hub switched off: no network is touched, the message says why.
    code = textwrap.dedent(
        """
        from afmrl.data.catalog import load_catalog
        try:
            load_catalog("afmrl-tests/no-such-catalog")
        except FileNotFoundError as err:
            print("ERROR:", err)
        """
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    env["HF_HOME"] = str(tmp_path / "hf")  # an empty cache: nothing to fall back on
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert "ERROR: could not load catalogue 'afmrl-tests/no-such-catalog'" in out.stdout
    assert "no local file or folder by that name" in out.stdout
    assert "not reachable offline (HF_HUB_OFFLINE=1)" in out.stdout


def test_report_summary_without_skips() -> None:
    report = CatalogReport(source="x", format="csv", rows={"train": 3}, kept={"train": 3})
    assert report.summary() == "train: 3/3 rows kept" and report.num_skipped == 0
