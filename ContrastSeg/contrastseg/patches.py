"""Organ patches (METHODS.md §1.3): 2D axial windows centred on voxels of one organ, with its attention mask.

Shared by supervised fine-tuning and the patch-based pretraining strategies. During training the attention
mask is the ground truth perturbed (dilated or eroded a few pixels, shifted) so the refined network learns
to correct an imperfect coarse mask, as it must at inference.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from .augment import vary_look
from .hints import prompt_attention
from .tissues import btcv_to_ts


@dataclass
class OrganIndex:
    """For one case: the (z, y, x) voxel coordinates of each organ present, for O(1) centre sampling."""

    coords: dict[int, np.ndarray]

    @classmethod
    def build(cls, labels: np.ndarray, organs: list[int], min_voxels: int = 20) -> "OrganIndex":
        coords = {}
        for c in organs:
            idx = np.argwhere(labels == c)
            if len(idx) >= min_voxels:
                coords[c] = idx.astype(np.int32)
        return cls(coords)


def crop2d(arr: np.ndarray, cy: int, cx: int, size: int, fill: float = 0.0) -> np.ndarray:
    """A size x size window of a 2D array centred at (cy, cx), padded with `fill` outside the array."""
    out = np.full((size, size), fill, dtype=arr.dtype)
    y0, x0 = cy - size // 2, cx - size // 2
    ys, xs = max(0, y0), max(0, x0)
    ye, xe = min(arr.shape[0], y0 + size), min(arr.shape[1], x0 + size)
    if ye > ys and xe > xs:
        out[ys - y0:ye - y0, xs - x0:xe - x0] = arr[ys:ye, xs:xe]
    return out


def perturb_mask(mask: np.ndarray, rng: np.random.Generator, max_radius: int = 3, max_shift: int = 3) -> np.ndarray:
    """Imitate a coarse model's mask: random dilation or erosion by up to `max_radius` px and a small shift."""
    r = int(rng.integers(-max_radius, max_radius + 1))
    if r > 0:
        mask = ndimage.binary_dilation(mask, iterations=r)
    elif r < 0:
        eroded = ndimage.binary_erosion(mask, iterations=-r)
        mask = eroded if eroded.any() else mask
    dy, dx = rng.integers(-max_shift, max_shift + 1, size=2)
    return np.roll(mask, (int(dy), int(dx)), axis=(0, 1))


def sample_patch(image: np.ndarray, labels: np.ndarray, index: OrganIndex, organ: int, rng: np.random.Generator,
                 size: int = 128, perturb: bool = True, attention_map: np.ndarray | None = None,
                 prompt_mm: float | None = None, augment: bool = False, intensity: str = "percentile",
                 structures: np.ndarray | None = None, spacing=(1.5, 1.5, 3.0)) -> tuple[np.ndarray, np.ndarray]:
    """One training patch for `organ`: input (2, size, size) = (image, attention), target (size, size) in {0,1}.

    The centre is a random voxel of `index`'s organ, so every patch holds some of it (METHODS §1.3). Without
    `attention_map` the attention is the (perturbed) truth and `index` indexes the truth; with it (a coarse
    network's label map on the same grid, the loop's refined training) `index` indexes that map, the
    attention is its organ mask as at inference, and the target may be empty (a coarse false positive).
    With `prompt_mm` (the grid's pixel size) the attention is prompt-like instead (`hints.prompt_attention`).
    With `augment` the window is taken at a random scale (0.8-1.25 of `size`, resized back: organs and hints
    appear larger or smaller) and its look varied in HU (`augment.vary_look`: a contrast phase per structure,
    from `structures` (TotalSegmentator ids) or the labels, a scanner's noise and blur, thicker slices), so a
    network trained on a few CTs meets other scanners' sizes and contrasts. `intensity` is the model's mode
    and `spacing` the grid's (x, y, z) mm.
    """
    z, cy, cx = index.coords[organ][rng.integers(len(index.coords[organ]))]
    window = max(16, int(round(size * rng.uniform(0.8, 1.25)))) if augment else size
    truth = crop2d(labels[z] == organ, cy, cx, window, False)
    if prompt_mm is not None:
        nz = int(np.clip(z + (1 if rng.random() < 0.5 else -1), 0, len(labels) - 1))
        attention = prompt_attention(truth, crop2d(labels[nz] == organ, cy, cx, window, False), organ, prompt_mm, rng)
    elif attention_map is not None:
        attention = crop2d(attention_map[z] == organ, cy, cx, window, False)
    else:
        attention = perturb_mask(truth, rng) if perturb else truth
    img = crop2d(image[z], cy, cx, window, 0.0)
    attention = attention.astype(np.float32)
    if augment:
        known = crop2d(structures[z], cy, cx, window, 0) if structures is not None else btcv_to_ts(crop2d(labels[z], cy, cx, window, 0))
        if rng.random() < 0.3 and 0 < z < len(image) - 1 and spacing[2] < 3.0:  # a thicker slice: its neighbours blend in
            w = rng.uniform(0.1, 0.33)
            img = (1 - 2 * w) * img + w * (crop2d(image[z - 1], cy, cx, window, 0.0) + crop2d(image[z + 1], cy, cx, window, 0.0))
        img = vary_look(img, known, intensity, (spacing[1], spacing[0]), rng)
        if window != size:
            factor = size / window
            img = ndimage.zoom(img, factor, order=1, grid_mode=True, mode="nearest")
            attention = ndimage.zoom(attention, factor, order=0, grid_mode=True, mode="nearest")
            truth = ndimage.zoom(truth, factor, order=0, grid_mode=True, mode="nearest")
    return np.stack([img, attention]), truth.astype(np.float32)
