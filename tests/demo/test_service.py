"""The demo without a UI: loading as a Space does, the cached gallery, search with the attribute
diff, compare with the calibrated probability, and ``afmrl calibrate`` / ``afmrl demo`` errors."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from tiny_models import REPO

from afmrl.cli import main
from afmrl.demo.gallery import open_gallery
from afmrl.demo.loading import load_calibration, load_space_model
from afmrl.demo.service import DemoService, Listing, attribute_diff
from afmrl.errors import MissingPathError, UserError


@pytest.fixture(scope="module")
def gallery_split(catalogue):
    from datasets import load_from_disk

    return load_from_disk(catalogue)["gallery"]


@pytest.fixture(scope="module")
def model(calibrated):
    return load_space_model(calibrated)


@pytest.fixture(scope="module")
def service(model, gallery_split, tmp_path_factory) -> DemoService:
    cache = tmp_path_factory.mktemp("gallery-cache")
    gallery = open_gallery(model, gallery_split, cache, attributes="teacher", examples=3,
                           show_progress=False, log=lambda _: None)  # fmt: skip
    calibration, note = load_calibration(model)
    assert calibration is not None, note
    return DemoService(model, gallery, calibration, note)


# ----------------------------------------------------------------------------------- loading


def test_loads_through_the_auto_classes_with_remote_code(model):
    from modeling_afmrl import AFMRLModel

    assert type(model).__name__ == "AFMRLModel"
    assert not isinstance(model, AFMRLModel)  # the checkpoint's own code, as on a Space
    assert model.extractor is not None and not model.training


def test_load_errors_are_one_line(tmp_path):
    with pytest.raises(MissingPathError, match="no such checkpoint folder"):
        load_space_model(tmp_path / "missing")
    with pytest.raises(UserError, match="not an AFMRL checkpoint folder"):
        load_space_model(tmp_path)


def test_calibration_of_other_weights_is_not_used(calibrated, tmp_path):
    other = tmp_path / "other"
    shutil.copytree(calibrated, other)
    data = json.loads((other / "calibration.json").read_text())
    data["model_fingerprint"] = "0" * 64
    (other / "calibration.json").write_text(json.dumps(data))
    calibration, note = load_calibration(load_space_model(other))
    assert calibration is None and "other weights" in note
    (other / "calibration.json").unlink()
    calibration, note = load_calibration(load_space_model(other))
    assert calibration is None and "afmrl calibrate" in note


# ----------------------------------------------------------------------------------- gallery


def _tree(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def test_gallery_is_built_once_and_reused(model, gallery_split, tmp_path):
    lines: list[str] = []
    first = open_gallery(model, gallery_split, tmp_path, show_progress=False, log=lines.append)
    assert not first.reused and any("indexing 11 gallery listings" in line for line in lines)
    before = _tree(first.folder)
    lines.clear()
    again = open_gallery(model, gallery_split, tmp_path, show_progress=False, log=lines.append)
    assert again.reused and again.folder == first.folder and not lines
    assert _tree(again.folder) == before  # nothing rebuilt or rewritten
    assert again.index.count == len(gallery_split) == len(again.listings)
    assert Path(again.photo(gallery_split[0]["listing_id"])).is_file()
    assert all(Path(photo).is_file() for photo, _ in again.examples)
    # other data (or weights, or attribute setting) -> another folder, the first one untouched
    other = open_gallery(model, gallery_split.select(range(5)), tmp_path, show_progress=False,
                         log=lines.append)  # fmt: skip
    assert other.folder != first.folder and _tree(first.folder) == before


def test_a_gallery_killed_before_its_marker_is_finished_on_restart(model, gallery_split, tmp_path):
    first = open_gallery(model, gallery_split, tmp_path, show_progress=False, log=lambda _: None)
    (first.folder / "gallery.json").unlink()
    shutil.rmtree(first.folder / "photos")
    again = open_gallery(model, gallery_split, tmp_path, show_progress=False, log=lambda _: None)
    assert not again.reused and (again.folder / "photos").is_dir()


# ------------------------------------------------------------------------------------ search


def test_gallery_photo_finds_itself_and_explains_why(service, gallery_split):
    row = gallery_split[4]
    result = service.search(row["image"], row["title"], row["teacher_attributes"], k=5)
    top = result.candidates[0]
    assert top.id == row["listing_id"] and top.score == pytest.approx(1.0, abs=1e-4)
    assert result.attributes_source == "given"
    assert not top.diff.differ and top.diff.agree  # same attributes: all agree
    assert top.probability is not None and top.identical is not None
    assert all(Path(c.photo).is_file() for c in result.candidates)
    assert [c.rank for c in result.candidates] == [1, 2, 3, 4, 5]
    others = [c for c in result.candidates[1:] if c.attributes]
    assert any(c.diff.differ for c in others)  # near-identical products differ somewhere


def test_editing_one_attribute_changes_the_ranking(service, gallery_split):
    row = gallery_split[4]
    k = service.gallery.index.count
    ranking = [
        c.id for c in service.search(row["image"], row["title"], "colour: red", k).candidates
    ]
    edited = [
        c.id for c in service.search(row["image"], row["title"], "colour: navy", k).candidates
    ]
    assert sorted(ranking) == sorted(edited) and ranking != edited


def test_untrained_extractor_says_so_and_typed_attributes_are_checked(service, gallery_split):
    row = gallery_split[0]
    result = service.search(row["image"], row["title"], "", k=3)
    assert result.attributes == "" and result.attributes_source == "none"
    assert any("no well-formed attributes" in note for note in result.notes)
    with pytest.raises(UserError, match="key: value"):
        service.search(row["image"], row["title"], "just some words", k=3)
    with pytest.raises(UserError, match="photo and/or a title"):
        service.search(None, "  ", None, k=3)
    with pytest.raises(UserError, match="between 1 and"):
        service.search(None, "mug", None, k=0)


def test_title_only_search_has_no_probability(service):
    result = service.search(None, "navy mug", "colour: navy", k=3)
    assert len(result.candidates) == 3 and result.candidates[0].probability is None
    assert any("photo and a title" in note for note in result.notes)


def test_attribute_diff():
    diff = attribute_diff("colour: navy; size: m; count: 2", "color: dark blue; size: l; brand: x")
    assert diff.agree == {"colour": "navy"}  # synonyms normalised
    assert diff.differ == {"size": ("m", "l")}
    assert diff.only_left == {"count": "2"} and diff.only_right == {"brand": "x"}
    assert diff.rows()[0] == ("size", "m", "l", "differs")
    assert attribute_diff("garbage", None).rows() == []


# ----------------------------------------------------------------------------------- compare


def test_compare_identical_and_different_listings(service, gallery_split):
    a, b = gallery_split[2], gallery_split[7]
    same = service.compare(
        Listing(a["image"], a["title"], a["teacher_attributes"]),
        Listing(a["image"], a["title"], a["teacher_attributes"]),
    )
    assert same.score == pytest.approx(1.0, abs=1e-4)
    calibration = service.calibration
    assert same.probability == pytest.approx(float(calibration.probability(same.score)))
    assert same.identical == (same.probability >= calibration.threshold)
    other = service.compare(Listing(a["image"], a["title"]), Listing(b["image"], b["title"]))
    assert other.score < same.score and other.probability <= same.probability
    with pytest.raises(UserError, match="listing B"):
        service.compare(Listing(a["image"], a["title"]), Listing(None, ""))


# ------------------------------------------------------------------------- afmrl calibrate


def test_calibrate_writes_a_calibration_for_these_weights(calibrated, catalogue):
    from afmrl.models import model_fingerprint

    data = json.loads((calibrated / "calibration.json").read_text())
    assert data["method"] == "isotonic" and 0 <= data["threshold"] <= 1
    assert data["encoding"]["attributes"] == "generated"  # auto: the checkpoint has an extractor
    assert data["fitted_on"]["split"] == "validation" and data["fitted_on"]["positives"] > 0
    assert data["model_fingerprint"] == model_fingerprint(load_space_model(calibrated))
    assert np.all(np.diff(data["params"]["x"]) >= 0)


def test_calibrate_test_split_and_other_output(calibrated, catalogue, tmp_path, capsys):
    out = tmp_path / "cal.json"
    argv = ["calibrate", "--model", str(calibrated), "--data", catalogue, "--out", str(out),
            "--method", "platt", "--attributes", "teacher", "--candidates", "0", "--test",
            "--no-progress"]  # fmt: skip
    assert main(argv) == 0
    data = json.loads(out.read_text())
    assert data["method"] == "platt" and data["encoding"]["attributes"] == "teacher"
    assert data["fitted_on"]["population"] == "every (query, gallery) pair"
    assert {"ece", "precision", "recall"} <= set(data["test"])
    assert "test:" in capsys.readouterr().out


def _run(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "afmrl.cli", *argv], cwd=REPO,
                          capture_output=True, text=True, timeout=300)  # fmt: skip


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["calibrate", "--model", "{missing}", "--data", "{data}"], "no such folder"),
        (["calibrate", "--model", "{model}", "--data", "{missing}"], "does-not-exist"),
        (["calibrate", "--model", "org/name", "--data", "{data}"], "pass --out"),
        (["calibrate", "--model", "{model}", "--data", "{data}", "--candidates", "-1"],
         "--candidates"),
        (["demo", "--model", "{missing}", "--data", "{data}"], "no such checkpoint folder"),
        (["demo", "--model", "{model}", "--data", "{missing}"], "does-not-exist"),
        (["demo", "--model", "{model}", "--data", "{data}", "--port", "70000"], "--port"),
        (["demo", "--model", "{model}", "--data", "{data}", "--split", "nope"], "nope"),
    ],
)  # fmt: skip
def test_command_errors_are_one_line(argv, expected, checkpoint, catalogue, tmp_path):
    values = {
        "model": str(checkpoint),
        "data": catalogue,
        "missing": str(tmp_path / "does-not-exist"),
    }
    before = _tree(checkpoint)
    proc = _run(*(a.format(**values) for a in argv), "--cache", str(tmp_path / "cache")) \
        if argv[0] == "demo" else _run(*(a.format(**values) for a in argv))  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert lines[0].startswith(f"afmrl {argv[0]}: error:") and expected in lines[0]
    assert _tree(checkpoint) == before
