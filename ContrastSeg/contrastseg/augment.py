"""Training-time intensity augmentation shared by the coarse crops (3D) and the refined patches (2D).

With only a few training CTs a network must not learn one scanner's contrast: each organ may be brightened
or darkened on its own (other contrast phases: e.g. kidneys enhanced up to the window's top), and the whole
image gets a random gamma (0.6-1.6), contrast, offset and noise. Images are the preprocessed ones (HU window
scaled to about [0, 1]); `top` is where enhancement saturates: the volume's maximum (the window's upper end)
for a coarse crop, the slice's maximum for a refined patch (cheaper per patch; v0.2 was trained so).
"""

from __future__ import annotations

import numpy as np


def jitter_intensity(img: np.ndarray, labels: np.ndarray, top: float, rng: np.random.Generator) -> np.ndarray:
    """`img` (any shape, float) with random per-organ shifts (half the time), gamma, contrast, offset and noise;
    `labels` is the label map on the same grid (0 background)."""
    img = img.astype(np.float32, copy=True)
    if rng.random() < 0.5:
        for organ in np.unique(labels[labels > 0]):
            mask = labels == organ
            img[mask] = np.clip(img[mask] + rng.uniform(-0.15, 0.35), 0, top)
    img = np.clip(img, 0, None) ** rng.uniform(0.6, 1.6)
    img = img * rng.uniform(0.85, 1.15) + rng.uniform(-0.08, 0.08) + rng.normal(0, 0.02, size=img.shape)
    return img.astype(np.float32)
