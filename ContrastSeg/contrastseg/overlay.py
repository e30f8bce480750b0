"""Pictures people would rather look at than read: a segmentation drawn over axial CT slices.

Slices are shown in the radiological convention (patient's right on the image's left, anterior up),
whatever the file's orientation, because both image and labels are first put in canonical orientation.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import SimpleITK as sitk  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402

from .plots import save_figure  # noqa: E402
from .organs import BY_ID  # noqa: E402
from .preprocess import canonical_slices, canonical_spacing, to_canonical  # noqa: E402


def pick_slices(labels: np.ndarray, count: int) -> list[int]:
    """Axial slices spread over the labelled z-range (the middle slice if nothing is labelled)."""
    zs = np.nonzero(labels.any(axis=(1, 2)))[0]
    if len(zs) == 0:
        return [labels.shape[0] // 2]
    lo, hi = zs.min(), zs.max()
    return sorted({int(round(v)) for v in np.linspace(lo + 0.1 * (hi - lo), hi - 0.1 * (hi - lo), count)})


def render_overlay(image: sitk.Image, labels: sitk.Image, path: str | Path, count: int = 4, title: str | None = None) -> Path:
    """Write a PNG of `count` axial slices with organs in their colours and a legend; returns the path."""
    lab = sitk.GetArrayFromImage(to_canonical(labels))[:, ::-1, ::-1]
    sx, sy, _ = canonical_spacing(image)
    slices = pick_slices(lab, count)
    # only the shown slices of the CT are reoriented: a whole float32 copy of a long CT is over 0.5 GB
    img = dict(zip(slices, canonical_slices(image, slices)[:, ::-1, ::-1]))
    lut = np.zeros((256, 4), dtype=np.float32)
    for oid, organ in BY_ID.items():
        lut[oid, :3] = np.array(organ.color) / 255
        lut[oid, 3] = 0.45
    fig, axes = plt.subplots(1, len(slices), figsize=(3.2 * len(slices), 3.6), squeeze=False)
    for ax, z in zip(axes[0], slices):
        ax.imshow(np.clip(img[z], -160, 240), cmap="gray", aspect=sy / sx, interpolation="bilinear")
        ax.imshow(lut[lab[z]], aspect=sy / sx, interpolation="nearest")
        ax.set_title(f"slice {z}", fontsize=9)
        ax.text(0.02, 0.5, "R", color="w", transform=ax.transAxes, fontsize=9)
        ax.text(0.95, 0.5, "L", color="w", transform=ax.transAxes, fontsize=9)
        ax.axis("off")
    present = [BY_ID[i] for i in sorted(set(np.unique(lab).tolist()) - {0}) if i in BY_ID]
    if present:
        fig.legend(handles=[Patch(color=np.array(o.color) / 255, label=o.name) for o in present],
                   loc="lower center", ncol=min(7, len(present)), fontsize=8, frameon=False)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, 0.08 if present else 0, 1, 0.95 if title else 1))
    return save_figure(fig, path)
