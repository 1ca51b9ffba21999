"""Shared fixtures of the demo tests: the tiny catalogue, a private calibrated copy of the tiny
LLaVA-extractor checkpoint, and (for the slow tests) a running ``afmrl demo`` on loopback."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from tiny_models import REPO, saved_untrained_llava_checkpoint, tiny_catalog


@pytest.fixture(scope="session")
def catalogue() -> str:
    """30 products at 64 px (11 gallery rows, 5 validation queries)."""
    return tiny_catalog()


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory) -> Path:
    """A private copy of the tiny checkpoint with a (random) LLaVA extractor: calibration writes
    into it, and its untrained extractor writes malformed attributes, as an untrained one does."""
    out = tmp_path_factory.mktemp("demo-model") / "model"
    shutil.copytree(saved_untrained_llava_checkpoint(), out)
    return out


@pytest.fixture(scope="session")
def calibrated(checkpoint: Path, catalogue: str) -> Path:
    """``checkpoint`` with ``calibration.json`` written by ``afmrl calibrate``."""
    from afmrl.cli import main

    argv = ["calibrate", "--model", str(checkpoint), "--data", catalogue, "--no-progress"]
    assert main(argv) == 0
    return checkpoint


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class DemoServer:
    """An ``afmrl demo`` subprocess; ``url`` once it serves."""

    def __init__(self, argv: list[str], log: Path) -> None:
        self.log = log
        env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "afmrl.cli", "demo", *argv],
            cwd=REPO,
            stdout=open(log, "w"),  # noqa: SIM115 (closed with the process)
            stderr=subprocess.STDOUT,
            env=env,
        )
        self.url = self._wait()

    def _wait(self, timeout: float = 240) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.log.read_text()
            for line in text.splitlines():
                if line.startswith("[demo] running on "):
                    return line.split()[3]
            if self.proc.poll() is not None:
                raise AssertionError(f"afmrl demo exited with {self.proc.returncode}:\n{text}")
            time.sleep(0.5)
        self.stop()
        raise AssertionError(f"afmrl demo did not start in {timeout} s:\n{self.log.read_text()}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture(scope="session")
def demo_server(calibrated: Path, catalogue: str, tmp_path_factory) -> Iterator[DemoServer]:
    """``afmrl demo`` on 127.0.0.1 over the tiny gallery, with the calibrated checkpoint."""
    folder = tmp_path_factory.mktemp("demo-server")
    argv = ["--model", str(calibrated), "--data", catalogue, "--cache", str(folder / "cache"),
            "--port", str(free_port()), "--no-progress"]  # fmt: skip
    server = DemoServer(argv, folder / "demo.log")
    yield server
    server.stop()
