"""Training-time intensity augmentation shared by the coarse crops (3D) and the refined patches (2D).

With only a few training CTs a network must not learn one scanner's contrast. The work is done in HU (the
model's intensity mapping is inverted, preprocess.to_hu): each structure may move to another contrast phase
(phases.py), the whole image gets another scanner's calibration, noise, blur and slice thickness, and the
mapped result a random gamma.
"""

from __future__ import annotations

import numpy as np


def vary_look(img: np.ndarray, structures: np.ndarray, intensity: str, spacing, rng: np.random.Generator,
              phase: float = 0.8) -> np.ndarray:
    """A normalised image (2D patch or 3D crop, in the model's `intensity` mode) as another phase and scanner
    would show it: in HU, each structure (`structures`, TotalSegmentator ids) moved to a random contrast phase
    with probability `phase`, then `jitter_hu`, then back and a random gamma a third of the time."""
    from .phases import simulate_phase
    from .preprocess import from_hu, to_hu

    hu = to_hu(img, intensity)
    if rng.random() < phase:
        hu, _ = simulate_phase(hu, structures, rng, spacing)
    x = from_hu(jitter_hu(hu, rng, float(min(spacing)), in_plane_axes=2), intensity)
    return gamma_window(x, rng) if rng.random() < 0.3 else x


def jitter_hu(hu: np.ndarray, rng: np.random.Generator, voxel_mm: float, in_plane_axes: int = 2) -> np.ndarray:
    """Another scanner's look, in HU: calibration (scale 0.92-1.08, offset +-25 HU), noise (0-25 HU, sometimes
    grainy), blur (a softer kernel) and, for 3D arrays, thicker slices (a z blur for 0.5-5 mm slices seen on a
    `voxel_mm` grid). The last `in_plane_axes` axes are in-plane; a 3D array's first axis is z."""
    from scipy import ndimage

    out = hu.astype(np.float32, copy=True) * np.float32(rng.uniform(0.92, 1.08)) + np.float32(rng.uniform(-25, 25))
    sigma = [0.0] * out.ndim
    if rng.random() < 0.35:
        sigma[-in_plane_axes:] = [rng.uniform(0.3, 1.0)] * in_plane_axes
    if out.ndim == 3 and rng.random() < 0.35:
        thickness = rng.uniform(0.5, 5.0)
        sigma[0] = max(0.0, thickness - voxel_mm) / (2.355 * voxel_mm) + sigma[0]
    if any(s > 0.05 for s in sigma):
        out = ndimage.gaussian_filter(out, sigma)
    if rng.random() < 0.7:
        noise = rng.normal(0, rng.uniform(3, 25), size=out.shape).astype(np.float32)
        if rng.random() < 0.4:
            noise = ndimage.gaussian_filter(noise, 0.7) * np.float32(2.0)
        out += noise
    return out


def gamma_window(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A random gamma (0.7-1.4) on the window's part of the network scale ([0, 1]; above it unchanged)."""
    g = np.float32(rng.uniform(0.7, 1.4))
    low = x <= 1.0
    x[low] = np.clip(x[low], 0, 1) ** g
    return x
