"""The RAR training curve: mean reward per step (and its moving average), valid-format rate."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from afmrl.io import atomic_path


def moving_average(values: Sequence[float], window: int) -> np.ndarray:
    """``[N]`` trailing mean over up to ``window`` values (the first ones over fewer)."""
    x = np.asarray(values, dtype=np.float64)
    if not len(x):
        return x
    csum = np.cumsum(np.insert(x, 0, 0.0))
    ends = np.arange(1, len(x) + 1)
    starts = np.maximum(0, ends - max(int(window), 1))
    return (csum[ends] - csum[starts]) / (ends - starts)


def curve_summary(history: Sequence[Mapping[str, float]], parts: int = 4) -> list[dict[str, float]]:
    """Mean reward, gain over the SFT attributes, valid-format rate and attribute count over
    ``parts`` equal spans of steps."""
    if not history:
        return []
    spans = np.array_split(np.arange(len(history)), min(parts, len(history)))
    out = []
    for span in spans:
        rows = [history[i] for i in span]
        out.append(
            {
                "first_step": int(rows[0]["step"]),
                "last_step": int(rows[-1]["step"]),
                "reward": float(np.mean([r["reward"] for r in rows])),
                "gain_over_sft": float(
                    np.nanmean([r.get("rar/gain_over_sft", np.nan) for r in rows])
                )
                if any("rar/gain_over_sft" in r for r in rows)
                else float("nan"),
                "valid_format": float(np.mean([r.get("rar/valid_format", np.nan) for r in rows])),
                "attribute_count": float(
                    np.mean([r.get("rar/attribute_count", np.nan) for r in rows])
                ),
            }
        )
    return out


def plot_reward_curve(
    path: str | os.PathLike,
    runs: Mapping[str, Sequence[Mapping[str, float]]],
    window: int = 20,
    title: str = "RAR: mean reward per GRPO step",
) -> Path:
    """One line per run: the per-step mean reward (faint) and its ``window``-step moving average,
    the gain over the SFT attributes of the same listings, the valid-format rate. Written
    atomically as PNG."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    path = Path(path)
    fig, (top, middle, bottom) = plt.subplots(
        3, 1, figsize=(7, 7), dpi=120, sharex=True, gridspec_kw={"height_ratios": [3, 2, 1]}
    )
    try:
        for i, (name, history) in enumerate(runs.items()):
            steps = [h["step"] for h in history]
            reward = [h["reward"] for h in history]
            colour = f"C{i}"
            top.plot(steps, reward, color=colour, alpha=0.25, linewidth=0.8)
            top.plot(steps, moving_average(reward, window), color=colour, linewidth=1.8, label=name)
            gain = [h.get("rar/gain_over_sft", np.nan) for h in history]
            gain = np.nan_to_num(np.asarray(gain, dtype=np.float64))
            middle.plot(steps, moving_average(gain, window), color=colour, linewidth=1.6)
            valid = [h.get("rar/valid_format", np.nan) for h in history]
            bottom.plot(steps, moving_average(valid, window), color=colour, linewidth=1.4)
        top.set_ylabel(f"mean reward ({window}-step avg)")
        top.grid(alpha=0.3)
        top.set_title(title)
        top.legend(fontsize=8, loc="lower right")
        middle.axhline(0.0, color="k", linewidth=0.8, linestyle=":")
        middle.set_ylabel("gain over SFT attrs")
        middle.grid(alpha=0.3)
        bottom.set_ylabel("valid format")
        bottom.set_xlabel("GRPO step")
        bottom.grid(alpha=0.3)
        fig.tight_layout()
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png")
    finally:
        plt.close(fig)
    return path


__all__ = ["curve_summary", "moving_average", "plot_reward_curve"]
