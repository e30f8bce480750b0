"""Charts: per-organ Dice bars and training curves (PNG, written atomically)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from .outputs import atomic_path  # noqa: E402


def save_figure(fig, path: str | Path) -> Path:
    """Write a matplotlib figure as PNG atomically (never a half-written picture: it is read back to its end
    marker before it takes its name) and free it, also when the write fails."""
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=110, format="png")
    finally:
        plt.close(fig)
    return Path(path)


def dice_bars(dice: dict[str, float], path: str | Path, title: str = "") -> Path:
    fig, ax = plt.subplots(figsize=(max(4, 0.6 * len(dice) + 1.5), 3.2))
    names = list(dice)
    ax.bar(range(len(names)), [dice[n] for n in names], color="#4c72b0")
    ax.set_xticks(range(len(names)), names, rotation=40, ha="right", fontsize=8)
    ax.set_ylim(0, 1)
    ax.set_ylabel("Dice")
    ax.set_title(title, fontsize=9)
    for i, n in enumerate(names):
        ax.text(i, dice[n] + 0.02, f"{dice[n]:.2f}", ha="center", fontsize=7)
    fig.tight_layout()
    return save_figure(fig, path)


def training_curves(history: list[dict], path: str | Path, title: str = "") -> Path:
    """Loss (and learning rate) against step from a run's history.jsonl records."""
    fig, ax = plt.subplots(figsize=(5, 3.2))
    steps = [h["step"] for h in history]
    ax.plot(steps, [h["loss"] for h in history], lw=0.8, color="#4c72b0", label="loss")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    if history:
        ax2 = ax.twinx()
        ax2.plot(steps, [h["lr"] for h in history], lw=0.8, color="#dd8452", label="lr")
        ax2.set_ylabel("learning rate", color="#dd8452")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return save_figure(fig, path)
