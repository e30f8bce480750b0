"""Paired view augmentation (METHODS §2): random resized crop (area 0.3-0.7), rotation within ±30°, flip.

One random affine per view moves all channels of that view together, so the attention mask stays on the
image it belongs to. It runs batched in torch (`affine_grid` + `grid_sample`) on whatever device the
batch is on: on a GPU the augmentation is GPU-resident and costs next to nothing.

Patches are cut with context around them (`context_size`, about 128·sqrt(2)), and the crop is taken from
the central `size` window, so a rotated view is filled with real anatomy rather than zeros at its corners.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F


def context_size(size: int) -> int:
    """Side of the window to cut around a patch centre so rotations of the central `size` crop stay inside."""
    return int(math.ceil(size * math.sqrt(2) / 2) * 2)


def random_affines(n: int, rng: np.random.Generator, scale=(0.3, 0.7), ratio=(3 / 4, 4 / 3), max_rotation: float = 30.0,
                   flip: bool = True, context: float = 1.0) -> np.ndarray:
    """(n, 2, 3) `affine_grid` matrices mapping output coordinates to input coordinates (both in [-1, 1]).

    A crop of area fraction s and aspect ratio r of the central window (of relative size `context` <= 1 of
    the input) is placed at random inside it, rotated about its centre and optionally mirrored left-right.
    """
    out = np.zeros((n, 2, 3), dtype=np.float32)
    for i in range(n):
        s = rng.uniform(*scale)
        r = math.exp(rng.uniform(math.log(ratio[0]), math.log(ratio[1])))
        w, h = min(1.0, math.sqrt(s * r)), min(1.0, math.sqrt(s / r))
        cx, cy = rng.uniform(-(1 - w), 1 - w), rng.uniform(-(1 - h), 1 - h)
        a = math.radians(rng.uniform(-max_rotation, max_rotation))
        f = -1.0 if flip and rng.random() < 0.5 else 1.0
        rot = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
        out[i, :, :2] = context * rot @ np.diag([w * f, h])
        out[i, :, 2] = context * np.array([cx, cy])
    return out


def apply_affines(x: torch.Tensor, theta: torch.Tensor, size: int, mask_channels: tuple[int, ...] = (1,)) -> torch.Tensor:
    """Resample `x` (n, c, H, W) through `theta` (n, 2, 3) to (n, c, size, size); mask channels re-binarised.

    All channels go through the same sampling grid (bilinear); a mask channel is thresholded at 0.5
    afterwards, which is the nearest-neighbour decision on the same geometry.
    """
    grid = F.affine_grid(theta.to(x.dtype), [x.shape[0], x.shape[1], size, size], align_corners=False)
    out = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    for c in mask_channels:
        out[:, c] = (out[:, c] >= 0.5).to(out.dtype)
    return out


def two_views(x: torch.Tensor, rng: np.random.Generator, size: int, **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
    """Two independently augmented views of each patch of `x` (n, c, H, W), H = W >= size (context around)."""
    context = size / x.shape[-1]
    t1 = torch.from_numpy(random_affines(len(x), rng, context=context, **kwargs)).to(x.device)
    t2 = torch.from_numpy(random_affines(len(x), rng, context=context, **kwargs)).to(x.device)
    return apply_affines(x, t1, size), apply_affines(x, t2, size)


def center(x: torch.Tensor, size: int) -> torch.Tensor:
    """The central size x size window of (n, c, H, W): the un-augmented patch."""
    o = (x.shape[-1] - size) // 2
    return x[..., o:o + size, o:o + size]
