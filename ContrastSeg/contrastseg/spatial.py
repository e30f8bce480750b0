"""Random spatial transforms of 3D training crops: scale, rotation and elastic deformation in one resampling.

A crop is sampled from the whole volume through one sampling grid (torch `grid_sample`), so a rotated or
shrunken crop has real anatomy in its corners instead of padding, and the image, its labels and every other
map share exactly one transform (labels by nearest neighbour: they stay aligned with the image). There is
no mirroring: which side an organ lies on is part of its name. Volumes are (z, y, x) with isotropic voxels.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F


@dataclass
class SpatialRanges:
    """How far a random transform may go (all off: the crop is cut straight from the volume)."""

    scale: tuple[float, float] = (0.8, 1.25)  # isotropic zoom, log-uniform
    anisotropy: float = 0.1  # each axis scaled by a further 1 +- this
    yaw_deg: float = 15.0  # in-plane rotation (the patient turned on the table)
    tilt_deg: float = 6.0  # about the two in-plane axes (a tilted gantry or patient)
    elastic_voxels: float = 2.0  # peak displacement of the smooth deformation


IDENTITY = SpatialRanges(scale=(1.0, 1.0), anisotropy=0.0, yaw_deg=0.0, tilt_deg=0.0, elastic_voxels=0.0)


def _rotation(yaw: float, pitch: float, roll: float) -> np.ndarray:
    """Rotation of (z, y, x) vectors: yaw about z, pitch about x, roll about y (radians)."""
    cz, sz, cp, sp, cr, sr = np.cos(yaw), np.sin(yaw), np.cos(pitch), np.sin(pitch), np.cos(roll), np.sin(roll)
    about_z = np.array([[1, 0, 0], [0, cz, -sz], [0, sz, cz]])
    about_x = np.array([[cp, -sp, 0], [sp, cp, 0], [0, 0, 1]])
    about_y = np.array([[cr, 0, -sr], [0, 1, 0], [sr, 0, cr]])
    return about_z @ about_x @ about_y


def source_coordinates(out_shape: tuple[int, int, int], centre: np.ndarray, rng: np.random.Generator,
                       ranges: SpatialRanges, src_shape: tuple[int, int, int]) -> torch.Tensor:
    """(1, D, H, W, 3) float32: where in the source volume (`src_shape`, z, y, x) each crop voxel is sampled
    from, as `grid_sample` wants it ((x, y, z), -1 and 1 the end voxels' centres): an affine map of the crop's
    cached base grid plus the elastic field upsampled from a coarse grid."""
    lo, hi = np.log(ranges.scale[0]), np.log(ranges.scale[1])
    scale = np.exp(rng.uniform(lo, hi)) * (1 + rng.uniform(-ranges.anisotropy, ranges.anisotropy, size=3))
    deg = np.pi / 180
    rot = _rotation(rng.uniform(-1, 1) * ranges.yaw_deg * deg, rng.uniform(-1, 1) * ranges.tilt_deg * deg,
                    rng.uniform(-1, 1) * ranges.tilt_deg * deg)
    voxel = rot * (1.0 / scale)[None, :]  # source voxel offset per crop voxel offset (z, y, x); zoom >1: larger
    half_out = (np.asarray(out_shape, float) - 1) / 2
    half_src = np.maximum(np.asarray(src_shape, float) - 1, 1) / 2
    norm = voxel * half_out[None, :] / half_src[:, None]  # normalised source per normalised crop coordinate
    # crop voxel i sits at centre - n // 2 + i when untransformed (whole voxels: a straight cut is not blurred)
    middle = np.asarray(centre, float) - (np.asarray(out_shape) // 2) + half_out
    shift = (middle - half_src) / half_src
    theta = np.zeros((3, 4))
    theta[:, :3] = norm[::-1, ::-1]  # (x, y, z) order on both sides
    theta[:, 3] = shift[::-1]
    grid = (_base_grid(tuple(out_shape)) @ torch.from_numpy(theta.T.astype(np.float32)))[None]
    if ranges.elastic_voxels > 0:
        amp = rng.uniform(0, ranges.elastic_voxels) / 1.5
        coarse_shape = tuple(max(2, n // 16) for n in out_shape)
        coarse = torch.from_numpy(rng.normal(size=(1, 3, *coarse_shape)).astype(np.float32))
        coarse *= torch.from_numpy((amp / half_src[::-1]).astype(np.float32)).view(1, 3, 1, 1, 1)  # voxels -> (x, y, z) norm
        field = F.interpolate(coarse, size=out_shape, mode="trilinear", align_corners=True)
        grid = grid + field.permute(0, 2, 3, 4, 1)
    return grid


@lru_cache(maxsize=8)
def _base_grid(shape: tuple[int, int, int]) -> torch.Tensor:
    """(D, H, W, 4): each crop voxel's normalised (x, y, z, 1), made once per crop size (torch's affine_grid
    rebuilds it each call, the larger part of a crop's cost on a CPU)."""
    axes = [torch.linspace(-1, 1, n) if n > 1 else torch.zeros(1) for n in shape]
    z, y, x = torch.meshgrid(*axes, indexing="ij")
    return torch.stack([x, y, z, torch.ones_like(x)], dim=-1)


def voxel_coordinates(grid: torch.Tensor, src_shape: tuple[int, int, int], axis: int) -> np.ndarray:
    """The source voxel coordinate along `axis` (0 z, 1 y, 2 x) of each crop voxel, (D, H, W)."""
    n = src_shape[axis]
    return ((grid[0, ..., 2 - axis].numpy() + 1) * ((n - 1) / 2)).astype(np.float32)


def warp(volumes: torch.Tensor, grid: torch.Tensor, nearest: bool = False) -> torch.Tensor:
    """Sample `volumes` (C, z, y, x) float at `grid` (source_coordinates); 0 outside. Returns (C, D, H, W)."""
    return F.grid_sample(volumes[None], grid, mode="nearest" if nearest else "bilinear", padding_mode="zeros",
                         align_corners=True)[0]
