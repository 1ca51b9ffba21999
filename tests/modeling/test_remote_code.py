"""Checkpoints load as remote code: in a fresh process, from another directory, without the repo.

The child interpreter runs with ``-S`` (no ``site``: the editable install's ``.pth`` finder is not
loaded) and only the venv's site-packages on ``sys.path``, so ``import modeling_afmrl`` is
impossible there; it asserts that, loads the checkpoint through ``AutoModel`` / ``AutoProcessor``
and ``SentenceTransformer`` with ``trust_remote_code=True``, and writes its embeddings to an
``.npz`` that the parent compares with the original model's.
"""

from __future__ import annotations

import ast
import json
import os
import site
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from tiny_models import TITLES, sample_images, tiny_model

torch.set_num_threads(1)

REMOTE_FILES = {
    "configuration_afmrl.py",
    "modeling_afmrl.py",
    "processing_afmrl.py",
    "attributes.py",
    "modeling_timm_llava.py",
}
ALLOWED_ROOTS = {"transformers", "torch", "timm", "PIL", "numpy"} | set(sys.stdlib_module_names)
PROJECT_PACKAGES = {"modeling_afmrl", "afmrl", "trainers", "benchmarks", "hub_cards"}

CHILD = r"""
import importlib.util, json, os, sys
site_dirs, spec_path = sys.argv[1:3]
sys.path[:0] = json.loads(site_dirs)
assert importlib.util.find_spec("modeling_afmrl") is None, "the repo is importable in the child"
spec = json.load(open(spec_path))

import numpy as np
import torch
from PIL import Image
from sentence_transformers import SentenceTransformer
from transformers import AutoModel, AutoProcessor

torch.set_num_threads(1)
cache = os.path.realpath(os.environ["HF_MODULES_CACHE"])
images, titles = spec["images"], spec["titles"]
pil = [Image.open(p) for p in images]
for ckpt, out in spec["jobs"]:
    model = AutoModel.from_pretrained(ckpt, trust_remote_code=True).eval()
    processor = AutoProcessor.from_pretrained(ckpt, trust_remote_code=True)
    for obj in (model, processor):
        module = type(obj).__module__
        assert module.startswith("transformers_modules."), module
        assert os.path.realpath(sys.modules[module].__file__).startswith(cache), module
    assert type(processor).__name__ == "AFMRLProcessor"
    model.processor = processor
    results = {
        "both": model.encode(images=images, texts=titles, batch_size=4),
        "text": model.encode(texts=titles),
        "image": model.encode(images=images),
    }
    st = SentenceTransformer(ckpt, trust_remote_code=True, device="cpu")
    results["st_text"] = st.encode(titles, convert_to_tensor=True)
    results["st_image"] = st.encode(pil, convert_to_tensor=True)
    results["st_both"] = st.encode(
        [{"image": im, "text": t} for im, t in zip(pil, titles)], convert_to_tensor=True
    )
    np.savez(out, **{k: v.float().cpu().numpy() for k, v in results.items()})
leaked = [m for m in sys.modules if m == "modeling_afmrl" or m.startswith("modeling_afmrl.")]
assert not leaked, leaked
print("child ok")
"""


def _write_images(folder: Path) -> list[str]:
    """The sample photos as files (PNG keeps RGBA/P/L/I;16; CMYK goes to TIFF)."""
    paths = []
    for i, image in enumerate(sample_images()):
        path = folder / f"img{i}.{'tiff' if image.mode == 'CMYK' else 'png'}"
        image.save(path)
        paths.append(str(path))
    return paths


def _run_child(tmp_path: Path, spec: dict) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    spec_path = tmp_path / "spec.json"
    spec_path.write_text(json.dumps(spec))
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(tmp_path),
        "HF_HOME": str(tmp_path / "hf_home"),
        "HF_MODULES_CACHE": str(tmp_path / "hf_modules"),
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "OMP_NUM_THREADS": "1",
    }
    proc = subprocess.run(
        [sys.executable, "-S", "-c", CHILD, json.dumps(site.getsitepackages()), str(spec_path)],
        cwd=elsewhere,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0 and "child ok" in proc.stdout, proc.stderr[-4000:]


@pytest.mark.slow  # a cold interpreter importing torch + transformers + sentence-transformers
def test_fresh_process_loads_each_family_as_remote_code_with_equal_embeddings(tmp_path):
    images = _write_images(tmp_path)
    titles = TITLES[: len(images)]
    expected, jobs = {}, []
    for family in ("dual", "vlm"):
        model = tiny_model(family, extractor=family == "dual")
        model.save_pretrained(tmp_path / family)
        expected[family] = {
            "both": model.encode(images=images, texts=titles),
            "text": model.encode(texts=titles),
            "image": model.encode(images=images),
        }
        jobs.append((str(tmp_path / family), str(tmp_path / f"{family}.npz")))
    _run_child(tmp_path, {"images": images, "titles": titles, "jobs": jobs})
    for family, (_, out) in zip(expected, jobs, strict=True):
        with np.load(out, allow_pickle=False) as got:
            for key, want in expected[family].items():
                want = want.numpy()
                assert np.abs(got[key] - want).max() < 1e-5, (family, key)
                assert np.abs(got[f"st_{key}"] - want).max() < 1e-5, (family, "ST", key)
            # Different listings get different embeddings (the comparison is not vacuous).
            assert np.abs(got["both"][0] - got["both"][1]).max() > 1e-3


def test_loading_without_trust_remote_code_is_refused(tmp_path):
    from transformers import AutoModel

    tiny_model("dual").save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="trust_remote_code"):
        AutoModel.from_pretrained(tmp_path, trust_remote_code=False)


@pytest.fixture(scope="module")
def saved_files(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("ckpt")
    tiny_model("dual", extractor=True).save_pretrained(folder)
    return folder


def test_checkpoint_ships_every_remote_file_with_auto_map(saved_files):
    shipped = {p.name for p in saved_files.glob("*.py")}
    assert shipped >= REMOTE_FILES
    for path in saved_files.glob("*.py"):  # every relative import resolves to a shipped sibling
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level > 0:
                assert f"{node.module}.py" in shipped, (path.name, node.module)
    config = json.loads((saved_files / "config.json").read_text())
    assert config["auto_map"] == {
        "AutoConfig": "configuration_afmrl.AFMRLConfig",
        "AutoModel": "modeling_afmrl.AFMRLModel",
    }
    processor = json.loads((saved_files / "processor_config.json").read_text())
    assert processor["auto_map"] == {"AutoProcessor": "processing_afmrl.AFMRLProcessor"}
    assert (saved_files / "extractor_processor" / "processor_config.json").is_file()
    assert not list(saved_files.rglob("*.bin")) and not list(saved_files.rglob("*.pt*"))


def test_sentence_transformers_files_come_from_its_own_save(saved_files):
    """Written by the installed sentence-transformers (its version recorded), and it loads them."""
    import sentence_transformers
    from sentence_transformers import SentenceTransformer

    st_config = json.loads((saved_files / "config_sentence_transformers.json").read_text())
    assert st_config["__version__"]["sentence_transformers"] == sentence_transformers.__version__
    modules = json.loads((saved_files / "modules.json").read_text())
    assert [m["type"] for m in modules] == [
        "sentence_transformers.base.modules.transformer.Transformer"
    ]
    model = SentenceTransformer(str(saved_files), trust_remote_code=True, device="cpu")
    text = model.encode(["navy mug"], convert_to_tensor=True)
    image = model.encode([sample_images()[0]], convert_to_tensor=True)
    both = model.encode([{"image": sample_images()[0], "text": "navy mug"}], convert_to_tensor=True)
    assert text.shape == image.shape == both.shape == (1, 64)
    assert not torch.allclose(text, image)


def _imports(tree: ast.AST, in_function: bool = False, in_try: bool = False):
    """Yield ``(node, in_function, in_try)`` for every import statement."""
    for child in ast.iter_child_nodes(tree):
        if isinstance(child, (ast.Import, ast.ImportFrom)):
            yield child, in_function, in_try
        yield from _imports(
            child,
            in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)),
            in_try or isinstance(child, ast.Try),
        )


def _roots(node: ast.Import | ast.ImportFrom) -> list[str]:
    if isinstance(node, ast.ImportFrom):
        return [] if node.level > 0 else [node.module.split(".")[0]]
    return [alias.name.split(".")[0] for alias in node.names]


def test_remote_files_import_only_allowed_packages(saved_files):
    repo_files = {p.name: p for p in (Path(__file__).parents[2] / "modeling_afmrl").glob("*.py")}
    files = [saved_files / name for name in sorted(REMOTE_FILES)]
    files += [p for name, p in repo_files.items() if name != "__init__.py"]
    for path in files:
        for node, in_function, in_try in _imports(ast.parse(path.read_text())):
            for root in _roots(node):
                where = f"{path.name}:{node.lineno} imports {root}"
                assert root not in PROJECT_PACKAGES, f"{where} (use a relative import)"
                if not in_function:
                    assert root in ALLOWED_ROOTS, f"{where} at top level"
                elif not in_try:
                    # transformers' check_imports requires these at load time too.
                    assert root in ALLOWED_ROOTS, f"{where} outside a try block"


def test_import_checker_catches_a_bad_import(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("import os\nimport datasets\n\ndef f():\n    from afmrl import cli\n")
    found = [(_roots(n)[0], f) for n, f, _ in _imports(ast.parse(bad.read_text()))]
    assert found == [("os", False), ("datasets", False), ("afmrl", True)]
    assert "datasets" not in ALLOWED_ROOTS and "afmrl" in PROJECT_PACKAGES


def test_sample_image_files_keep_their_modes(tmp_path):
    modes = [Image.open(p).mode for p in _write_images(tmp_path)]
    assert modes == ["RGB", "RGBA", "P", "L", "CMYK", "I;16"]
