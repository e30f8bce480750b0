"""The embedding plot written after pretraining: PCA of encoder features, coloured by organ and by phase.

It shows at a glance what the pretraining taught: organ-aware losses (SupCon, CE) should separate organs,
DCC and SimCLR less so, and a phase split shows the encoder keys on contrast. The probe patches are drawn
with a fixed seed from the run's own data, so plots of different strategies on one dataset are comparable.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from ..plots import save_figure  # noqa: E402
from ..organs import BY_ID  # noqa: E402
from .augment import center  # noqa: E402
from .heads import pooled  # noqa: E402

PHASE_COLOURS = ["#4c72b0", "#dd8452", "#55a868", "#c44e52", "#8172b3", "#937860"]


def pca2(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """First two principal components of the rows of `features`, and their explained-variance ratios."""
    x = features - features.mean(0, keepdims=True)
    _, s, vt = np.linalg.svd(x, full_matrices=False)
    var = s ** 2
    return x @ vt[:2].T, var[:2] / max(var.sum(), 1e-12)


def plot(points: np.ndarray, ratios: np.ndarray, organs: np.ndarray, phases: list[str], path: Path, title: str) -> Path:
    fig, axes = plt.subplots(1, 2, figsize=(9, 4))
    for o in sorted(set(organs.tolist())):
        sel = organs == o
        colour = np.array(BY_ID[o].color) / 255 if o in BY_ID else (0.5, 0.5, 0.5)
        axes[0].scatter(points[sel, 0], points[sel, 1], s=8, color=colour, label=BY_ID[o].name if o in BY_ID else str(o), alpha=0.8)
    names = sorted(set(phases))
    ph = np.array(phases)
    for i, name in enumerate(names):
        sel = ph == name
        axes[1].scatter(points[sel, 0], points[sel, 1], s=8, color=PHASE_COLOURS[i % len(PHASE_COLOURS)], label=name, alpha=0.8)
    for ax, what in zip(axes, ("organ", "phase")):
        ax.set_xlabel(f"PC1 ({ratios[0] * 100:.0f}%)")
        ax.set_ylabel(f"PC2 ({ratios[1] * 100:.0f}%)")
        ax.set_title(f"by {what}", fontsize=9)
        ax.legend(fontsize=6, markerscale=1.5, loc="best")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return save_figure(fig, path)


@torch.no_grad()
def encoder_embedding(encoder, sampler, n: int, device: torch.device, path: Path, title: str, seed: int = 12345) -> dict:
    """Pooled encoder features of `n` organ patches (un-augmented centres) -> PCA plot; returns a summary."""
    encoder.eval().to(device)
    batch = sampler.sample(np.random.default_rng(seed), n)
    x = center(torch.from_numpy(batch.x), sampler.size)
    feats = np.concatenate([pooled(encoder, x[i:i + 32].to(device)).cpu().numpy() for i in range(0, n, 32)])
    points, ratios = pca2(feats)
    phases = [sampler.phases[p] for p in batch.phase]
    plot(points, ratios, batch.organ, phases, path, title)
    return {"patches": n, "explained_variance": [round(float(r), 3) for r in ratios],
            "organ_separation": round(_separation(feats, batch.organ), 3)}


@torch.no_grad()
def coarse_embedding(net, cases, crop, n: int, device: torch.device, path: Path, title: str, spec, seed: int = 12345) -> dict:
    """Voxel features of the coarse U-Net's last decoder map on organ-centred crops (no augmentation; `spec`
    the inputs.InputSpec the network takes) -> PCA plot."""
    from ..train.crops import from_case, sample

    net.eval().to(device)
    rng = np.random.default_rng(seed)
    feats, organs, phases = [], [], []
    per_case = max(1, n // len(cases))
    for c in cases:
        img, lab = sample(from_case(c, spec), tuple(crop), rng, spec, 1.0)
        _, f = net(torch.from_numpy(img)[None].to(device), return_features=True)
        f = f[-1][0].permute(1, 2, 3, 0).reshape(-1, f[-1].shape[1]).cpu().numpy()
        labs = lab.reshape(-1)
        present = [o for o in np.unique(labs) if o > 0]
        if not present:
            continue
        take = np.concatenate([rng.choice(np.flatnonzero(labs == o), min(per_case // len(present), int((labs == o).sum())), replace=False)
                               for o in present])
        feats.append(f[take])
        organs.append(labs[take])
        phases += [c.phase or "unknown"] * len(take)
    if not feats:
        return {"voxels": 0}
    feats, organs = np.concatenate(feats), np.concatenate(organs)
    points, ratios = pca2(feats)
    plot(points, ratios, organs, phases, path, title)
    return {"voxels": len(feats), "explained_variance": [round(float(r), 3) for r in ratios],
            "organ_separation": round(_separation(feats, organs), 3)}


def _separation(features: np.ndarray, labels: np.ndarray) -> float:
    """Mean cosine similarity within organs minus between organs (a one-number reading of the plot)."""
    f = features / np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-12)
    sim = f @ f.T
    same = labels[:, None] == labels[None, :]
    off = ~np.eye(len(f), dtype=bool)
    within, between = sim[same & off], sim[~same]
    if not len(within) or not len(between):
        return float("nan")
    return float(within.mean() - between.mean())
