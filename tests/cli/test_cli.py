"""The command line stays light: `afmrl --help` must not pull in torch, transformers or datasets."""

from __future__ import annotations

import subprocess
import sys

HEAVY = ("torch", "transformers", "datasets", "trl", "peft", "gradio", "timm", "faiss", "evaluate")


def test_help_imports_nothing_heavy():
    code = (
        "import sys\n"
        "from afmrl.cli import build_parser\n"
        "build_parser().format_help()\n"
        f"print(','.join(m for m in {HEAVY!r} if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"heavy modules imported by the CLI parser: {out.stdout}"


def test_help_lists_every_command():
    from afmrl.cli import COMMANDS

    out = subprocess.run(
        [sys.executable, "-m", "afmrl.cli", "--help"], capture_output=True, text=True, check=True
    )
    for name in COMMANDS:
        assert name in out.stdout


def test_unknown_command_fails_cleanly():
    out = subprocess.run(
        [sys.executable, "-m", "afmrl.cli", "no-such-command"], capture_output=True, text=True
    )
    assert out.returncode == 2
    assert "invalid choice" in out.stderr
