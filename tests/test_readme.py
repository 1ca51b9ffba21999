"""The README's examples run as written, offline, in a scratch folder.

Every ```python block runs in one namespace, in order; every ```bash line that starts with
``afmrl`` runs as a command. The scratch folder holds what the examples name: the quickstart's
published model (``outputs/quickstart/afmrl-model``; here an untrained embedded default), a photo
``shoe.jpg`` and a user catalogue ``my_catalog/`` with its own column names. The Hub is patched at its boundary (a
push is recorded, not sent). The one block that needs the Hub to download backbones says so on its
first line and is not run.
"""

from __future__ import annotations

import csv
import os
import re
import subprocess
import sys

import pytest
from tiny_models import REPO, FakeHub

NEEDS_HUB = "# needs the Hugging Face Hub"


def readme_blocks() -> list[tuple[str, str]]:
    """``(language, code)`` of every fenced block of the README, in order."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    return re.findall(r"^```(\w+)\n(.*?)^```$", text, flags=re.S | re.M)


def test_the_readme_has_runnable_examples():
    blocks = readme_blocks()
    python = [code for lang, code in blocks if lang == "python"]
    assert len(python) >= 3 and sum(code.startswith(NEEDS_HUB) for code in python) == 1
    assert any(
        line.startswith("afmrl ")
        for lang, code in blocks
        if lang == "bash"
        for line in code.splitlines()
    )


@pytest.mark.slow
def test_readme_examples_run(tmp_path, monkeypatch):
    from PIL import Image

    from afmrl.defaults import build_embedded_default

    monkeypatch.chdir(tmp_path)
    build_embedded_default(
        tmp_path / "outputs" / "quickstart" / "afmrl-model", progress=lambda _: None
    )
    Image.new("RGB", (160, 120), "navy").save("shoe.jpg")
    (tmp_path / "my_catalog").mkdir()
    with open("my_catalog/catalog.csv", "w", newline="") as f:
        rows = csv.writer(f)
        rows.writerow(["listing_id", "photo", "product_name"])
        for i, colour in enumerate(("navy", "red", "teal")):
            Image.new("RGB", (32, 32), colour).save(f"my_catalog/{i}.png")
            rows.writerow([f"l{i}", f"{i}.png", f"{colour} runner sneaker"])
    hub = FakeHub.install(monkeypatch)

    namespace: dict = {}
    ran = 0
    for lang, code in readme_blocks():
        if lang == "python" and not code.startswith(NEEDS_HUB):
            exec(compile(code, "README.md", "exec"), namespace)
            ran += 1
        elif lang == "bash":
            for line in code.splitlines():
                if line.startswith("afmrl "):
                    argv = line.split()[1:]
                    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
                    proc = subprocess.run([sys.executable, "-m", "afmrl.cli", *argv], env=env,
                                          capture_output=True, text=True, timeout=600)  # fmt: skip
                    assert proc.returncode == 0, (line, proc.stderr[-2000:])
                    ran += 1
    assert ran >= 4
    # What the examples promise.
    assert len(namespace["catalog"]["train"]) == 3
    assert tuple(namespace["emb"].shape) == (1, 256) and tuple(namespace["small"].shape) == (1, 64)
    assert namespace["listings"].shape == namespace["photos"].shape == namespace["titles"].shape
    assert hub.repos == ["my-org/afmrl-shoes"] and "model.safetensors" in hub.commits[0]["files"]
    assert (tmp_path / "outputs" / "catalog" / "fingerprint.json").is_file()
