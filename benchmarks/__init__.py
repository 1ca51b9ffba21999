"""Speed and memory benchmarks (scripts; the product code lives in ``afmrl``, ``trainers`` and
``modeling_afmrl``). :func:`build_inputs` gives the training benchmarks their inputs."""

from __future__ import annotations

from pathlib import Path


def build_inputs(model: str | None, data: str | None, workdir: Path) -> tuple[str, str]:
    """``(model, data)``: the given paths, or a 300-product synthetic catalogue and an embedded
    default (``afmrl synth`` / ``afmrl init``, about 30 s) written under ``workdir``."""
    from afmrl.cli import main as cli

    if data is None:
        data = str(workdir / "catalog")
        if cli(["synth", "--out", data, "--products", "300", "--num-proc", "1"]) != 0:
            raise SystemExit("could not build the catalogue")
    if model is None:
        model = str(workdir / "model")
        if cli(["init", "--out", model, "--data", data]) != 0:
            raise SystemExit("could not build the embedded default")
    return model, data
