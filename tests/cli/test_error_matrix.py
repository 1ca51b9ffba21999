"""Every command x every kind of bad input: exit status 2, one line on stderr naming the problem,
no traceback, and nothing the user had is changed (a checksum of every file under ``--out`` and of
every input, before and after).

Number checks come with a missing ``--data`` on purpose: the error must name the number, which
shows that numbers are validated before any expensive work (reading data, loading a model).
"""

from __future__ import annotations

import functools
import hashlib
import shutil
import tempfile
from pathlib import Path

import pytest
from tiny_models import saved_untrained_llava_checkpoint, tiny_catalog

SPLITS = ("train", "query", "gallery")


@functools.lru_cache(maxsize=1)
def inputs() -> dict[str, str]:
    """The inputs the cases point at, built once (read-only for the tests)."""
    from PIL import Image

    root = Path(tempfile.mkdtemp(prefix="afmrl-bad-inputs-"))
    paths = {"model": saved_untrained_llava_checkpoint(), "data": tiny_catalog()}
    paths["missing"] = str(root / "does-not-exist")
    (root / "empty").mkdir()
    paths["empty"] = str(root / "empty")
    (root / "notes").mkdir()
    (root / "notes" / "notes.txt").write_text("my notes, not a catalogue")
    paths["not_catalogue"] = str(root / "notes")
    (root / "csv").mkdir()
    Image.new("RGB", (16, 16), "red").save(root / "csv" / "a.png")
    rows = [f"l{i},p0,a.png,red mug,{split}" for i, split in enumerate(SPLITS)]
    (root / "csv" / "catalog.csv").write_text(
        "listing_id,product_id,image,name,split\n" + "\n".join(rows) + "\n"
    )
    paths["csv_missing_column"] = str(root / "csv")
    (root / "images").mkdir()
    (root / "images" / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (root / "images" / "empty.jpg").write_bytes(b"")
    (root / "images" / "notes.txt").write_text("not an image")
    bad = ("corrupt.jpg", "empty.jpg", "notes.txt")
    rows = [f"{s}{i},p{i},{name},mug {i},{s}" for s in SPLITS for i, name in enumerate(bad)]
    (root / "images" / "catalog.csv").write_text(
        "listing_id,product_id,image,title,split\n" + "\n".join(rows) + "\n"
    )
    paths["bad_images"] = str(root / "images")
    paths["corrupt_image"] = str(root / "images" / "corrupt.jpg")
    paths["empty_image"] = str(root / "images" / "empty.jpg")
    paths["text_file"] = str(root / "images" / "notes.txt")
    corrupt = root / "corrupt-model"
    shutil.copytree(paths["model"], corrupt)
    (corrupt / "model.safetensors").write_bytes(b"\x00" * 100)
    paths["corrupt_model"] = str(corrupt)
    return paths


#: command -> its arguments with {model}, {data}, {out} placeholders (data-free commands omit them).
COMMANDS = {
    "synth": ["--products", "30", "--out", "{out}"],
    "init": ["--data", "{data}", "--out", "{out}"],
    "train-extractor": ["--model", "{model}", "--data", "{data}", "--out", "{out}"],
    "extract": ["--model", "{model}", "--data", "{data}", "--out", "{out}"],
    "train-encoder": ["--model", "{model}", "--data", "{data}", "--out", "{out}"],
    "train-rar": ["--model", "{model}", "--data", "{data}", "--out", "{out}"],
    "cit": ["--model", "{model}", "--data", "{data}", "--out", "{out}", "--split", "test"],
    "index": ["--model", "{model}", "--data", "{data}", "--out", "{out}"],
    "evaluate": ["--model", "{model}", "--data", "{data}", "--out", "{out}"],
    "pipeline": ["--out", "{out}"],
}
#: command -> (a bad number flag, its value, what the message says)
NUMBERS = {
    "synth": [("--products", "0", "--products"), ("--teacher-drop", "1.5", "--teacher-drop"),
              ("--image-size", "32", "image_size")],
    "init": [("--embed-dim", "0", "--embed-dim"), ("--vocab-size", "-3", "--vocab-size"),
             ("--image-size", "100", "image_size must be a multiple of 32")],
    "train-extractor": [("--lr", "-1", "--lr"), ("--batch-size", "0", "--batch-size"),
                        ("--epochs", "0", "--epochs")],
    "extract": [("--batch-size", "0", "--batch-size"), ("--max-new-tokens", "0", "--max-new-tokens")],
    "train-encoder": [("--max-steps", "0", "--max-steps"), ("--lr", "-1", "--lr"),
                      ("--attribute-overlap", "1.5", "--attribute-overlap")],
    "train-rar": [("--group-size", "0", "--group-size"), ("--lr", "-1", "--lr"),
                  ("--recall-k-fraction", "1.5", "--recall-k-fraction")],
    "cit": [("--fraction", "0", "--fraction"), ("--max-steps", "-1", "--max-steps"),
            ("--batch-size", "-2", "--batch-size")],
    "index": [("--nprobe", "-3", "--nprobe"), ("--hnsw-m", "0", "--hnsw-m"),
              ("--batch-size", "0", "--batch-size")],
    "evaluate": [("--depth", "0", "--depth"), ("--batch-size", "-2", "--batch-size")],
    "pipeline": [("--products", "0", "--products")],
}  # fmt: skip
#: data-reading commands x (a bad --data, what the message says)
DATA_CASES = [
    ("missing", "no such file or folder"),
    ("empty", "has no catalog.csv or catalog.jsonl"),
    ("not_catalogue", "has no catalog.csv or catalog.jsonl"),
    ("csv_missing_column", "missing required column(s) 'title'"),
    ("bad_images", "all 3 rows were skipped"),
]
MODEL_CASES = [("missing", "no such folder"), ("corrupt_model", "cannot load the checkpoint")]


def _cases():
    for command, args in COMMANDS.items():
        for flag, value, says in NUMBERS[command]:
            yield pytest.param(command, "number", {"extra": [flag, value], "data": "missing"}, says,
                               id=f"{command}-number{flag}")  # fmt: skip
        yield pytest.param(
            command, "out", {"out": "file"}, "is not a folder", id=f"{command}-out-file"
        )
        yield pytest.param(
            command, "out", {"out": "user"}, "not empty", id=f"{command}-out-user-files"
        )
        if "{data}" in args:
            for case, says in DATA_CASES:
                if command == "init" and case == "bad_images":
                    continue  # init reads only the titles (tokenizer corpus): photos do not matter
                yield pytest.param(
                    command, "data", {"data": case}, says, id=f"{command}-data-{case}"
                )
            yield pytest.param(command, "out", {"out": "data"}, "overlaps the input",
                               id=f"{command}-out-is-input")  # fmt: skip
        if "{model}" in args:
            for case, says in MODEL_CASES:
                yield pytest.param(command, "model", {"model": case}, says,
                                   id=f"{command}-model-{case}")  # fmt: skip


def _checksums(*roots: str | Path) -> dict[str, str]:
    out = {}
    for root in roots:
        root = Path(root)
        files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
        for path in files:
            out[str(path)] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


@pytest.mark.parametrize(("command", "kind", "case", "says"), list(_cases()))
def test_bad_input_is_one_line_exit_2_and_loses_nothing(
    command, kind, case, says, tmp_path, capsys
):
    from afmrl.cli import main

    paths = inputs()
    out = tmp_path / "out"
    if case.get("out") == "file":
        out.write_text("a file the user keeps")
    elif case.get("out") == "user":
        out.mkdir()
        (out / "keep.txt").write_text("the user's notes")
    elif case.get("out") == "data":
        out = Path(paths["data"])
    values = {
        "model": paths[case.get("model", "model")],
        "data": paths[case.get("data", "data")],
        "out": str(out),
    }
    argv = [command, *(a.format(**values) for a in COMMANDS[command]), *case.get("extra", [])]
    before = _checksums(out, paths["model"], paths["data"]) if out.exists() else None
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"afmrl {command}: error: "), err
    assert says in lines[0], lines[0]
    assert "Traceback" not in err
    if before is not None:
        assert _checksums(out, paths["model"], paths["data"]) == before


@pytest.mark.parametrize(
    ("image", "says"),
    [("missing", "no such file"), ("corrupt_image", "cannot decode image"),
     ("empty_image", "cannot decode image"), ("text_file", "cannot decode image")],
)  # fmt: skip
def test_search_refuses_a_bad_photo(image, says, tmp_path, capsys):
    from afmrl.cli import main

    paths = inputs()
    assert main(["index", "--model", paths["model"], "--data", paths["data"],
                 "--out", str(tmp_path / "i"), "--no-progress"]) == 0  # fmt: skip
    capsys.readouterr()
    argv = ["search", "--index", str(tmp_path / "i"), "--image", paths[image], "--title", "mug"]
    assert main(argv) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and says in lines[0], lines


@pytest.mark.parametrize(
    ("index", "says"),
    [("missing", "is not an index folder"), ("empty", "holds no complete index"),
     ("not_catalogue", "holds no complete index")],
)  # fmt: skip
def test_search_refuses_a_bad_index(index, says, capsys):
    from afmrl.cli import main

    assert main(["search", "--index", inputs()[index], "--title", "mug", "-k", "3"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and says in lines[0], lines
    assert main(["search", "--index", inputs()["empty"], "--title", "mug", "-k", "0"]) == 2
    assert "-k/--top-k: expected a positive integer" in capsys.readouterr().err
