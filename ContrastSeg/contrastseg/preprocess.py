"""Preprocessing of METHODS.md §1.1: canonical orientation, resampling, HU clipping and percentile scaling.

The networks see every volume in the same orientation (array axes z, y, x running inferior->superior,
posterior->anterior, left->right, i.e. RAS in nibabel's convention), so left and right organs stay
distinguishable whatever orientation the file was stored in.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk

HU_WINDOW = (-175.0, 250.0)
# Intensity modes a model card names (`preprocessing.intensity`); a card without one was trained with the first.
# - "percentile": the window, then scaled by the volume's 1st and 99th percentiles (METHODS §1.1 as written);
# - "soft-top": the same window mapped to [0, 1] by fixed HU, then HU above it compressed (slope 1/4) up to
#   SOFT_TOP_MAX: an enhanced kidney or aorta (200-400 HU) stays below bone (700+) instead of both saturating
#   at the window's top, and a fixed mapping lets training change an organ's HU as a contrast phase would.
INTENSITY_MODES = ("percentile", "soft-top")
SOFT_TOP_SLOPE = 0.25
SOFT_TOP_MAX = 1.5  # reached at 250 + 0.5 * 425 / 0.25 = 1100 HU


def intensity_of(card: dict) -> str:
    """The intensity mode a model card was trained with."""
    return (card.get("preprocessing") or {}).get("intensity", "percentile")


def to_canonical(image: sitk.Image) -> sitk.Image:
    """Reorient (permute/flip axes, no interpolation) so that index axes point to Right, Anterior, Superior.

    Oblique directions are rounded to the nearest axes by DICOMOrient; the world geometry is unchanged.
    """
    return sitk.DICOMOrient(image, "RAS")


def canonical_geometry(image: sitk.Image) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Size, spacing, origin and direction (3x3) that `to_canonical(image)` would have, without allocating it.

    DICOMOrient only permutes and flips the index axes, and which ones depends on the direction alone: it is
    asked of a 2x2x2 image with the same direction, and the signed permutation applied to the real geometry.
    A working grid can then be resampled straight from the stored image (no reoriented copy of a large CT).
    """
    direction = np.array(image.GetDirection(), dtype=float).reshape(3, 3)
    proxy = sitk.Image([2, 2, 2], sitk.sitkUInt8)
    proxy.SetDirection(image.GetDirection())
    new_direction = np.array(to_canonical(proxy).GetDirection(), dtype=float).reshape(3, 3)
    perm = np.rint(np.linalg.solve(direction, new_direction))  # new_direction = direction @ perm
    axis = np.argmax(np.abs(perm), axis=0)  # new axis k is input axis axis[k], flipped where sign[k] < 0
    sign = perm[axis, np.arange(3)]
    size, spacing = np.array(image.GetSize()), np.array(image.GetSpacing(), dtype=float)
    origin = np.array(image.GetOrigin(), dtype=float)
    for k in range(3):
        if sign[k] < 0:  # a flipped axis starts at the input's last voxel along it
            origin = origin + (size[axis[k]] - 1) * spacing[axis[k]] * direction[:, axis[k]]
    return size[axis], spacing[axis], origin, new_direction


def canonical_spacing(image: sitk.Image) -> tuple[float, float, float]:
    """The spacing (x, y, z) of `to_canonical(image)`."""
    return tuple(float(v) for v in canonical_geometry(image)[1])


def canonical_slices(image: sitk.Image, zs: list[int]) -> np.ndarray:
    """Axial slices `zs` of `to_canonical(image)`, (len(zs), y, x), without reorienting the whole volume: each
    is sampled on its own one-slice canonical grid, which falls on the stored voxels (nearest neighbour)."""
    size, spacing, origin, direction = canonical_geometry(image)
    out = []
    for z in zs:
        start = origin + direction[:, 2] * spacing[2] * z
        one = sitk.Resample(image, [int(size[0]), int(size[1]), 1], sitk.Transform(), sitk.sitkNearestNeighbor,
                            start.tolist(), spacing.tolist(), direction.ravel().tolist(), 0, image.GetPixelID())
        out.append(sitk.GetArrayFromImage(one)[0])
    return np.stack(out)


def _grid_for(size, spacing, origin, direction, new_spacing) -> tuple[list[int], list[float], list[float]]:
    """Size, origin and spacing of a grid at `new_spacing` over the same world extent (the centre kept fixed)."""
    new_spacing = np.array(new_spacing, dtype=float)
    new_size = np.maximum(1, np.round(np.asarray(size) * np.asarray(spacing) / new_spacing)).astype(int)
    # keep the centre of the volume fixed: shift the origin by half the change of voxel size
    new_origin = np.asarray(origin, dtype=float) + np.asarray(direction).reshape(3, 3) @ ((new_spacing - spacing) / 2)
    return [int(v) for v in new_size], new_origin.tolist(), new_spacing.tolist()


def resample_like(image: sitk.Image, reference: sitk.Image, interpolator=sitk.sitkNearestNeighbor, default: float = 0.0) -> sitk.Image:
    """Resample `image` onto `reference`'s grid through world coordinates (any orientation on either side)."""
    return sitk.Resample(image, reference, sitk.Transform(), interpolator, default, image.GetPixelID())


def normalize(hu: np.ndarray, mode: str = "percentile") -> np.ndarray:
    """HU to the networks' scale in `mode` (INTENSITY_MODES): the abdominal window at about [0, 1].

    In place on one float32 copy: a refined grid of a long CT is hundreds of MB per copy.
    """
    if mode == "soft-top":
        return from_hu(hu, mode)
    if mode != "percentile":
        raise ValueError(f"unknown intensity mode {mode!r}; known: {INTENSITY_MODES}")
    clipped = np.clip(hu, *HU_WINDOW).astype(np.float32, copy=False)
    p1, p99 = (float(v) for v in np.percentile(clipped[:: max(1, clipped.shape[0] // 32)], [1, 99]))
    if p99 - p1 < 1e-3:
        p1, p99 = HU_WINDOW
    clipped -= np.float32(p1)
    clipped /= np.float32(p99 - p1)
    return clipped


def from_hu(hu: np.ndarray, mode: str) -> np.ndarray:
    """HU to the network scale by the fixed mapping of `mode` (for "percentile", the typical volume's: its 1st
    and 99th percentiles fall at the window's ends). Augmentation works in HU and comes back through this."""
    width = HU_WINDOW[1] - HU_WINDOW[0]
    top = SOFT_TOP_MAX if mode == "soft-top" else 1.0
    out = np.array(hu, dtype=np.float32, ndmin=1) - np.float32(HU_WINDOW[0])
    out /= np.float32(width)
    if top > 1.0:
        over = out > 1.0
        out[over] = 1.0 + (out[over] - 1.0) * np.float32(SOFT_TOP_SLOPE)
    out = np.clip(out, 0.0, top, out=out)
    return out if np.ndim(hu) else out[0]


def to_hu(x: np.ndarray, mode: str) -> np.ndarray:
    """The inverse of `from_hu` (exact inside its range; clipped HU stay at the range's ends)."""
    x = np.asarray(x, dtype=np.float32)
    if mode == "soft-top":
        x = np.where(x > 1.0, 1.0 + (x - 1.0) / np.float32(SOFT_TOP_SLOPE), x)
    return x * np.float32(HU_WINDOW[1] - HU_WINDOW[0]) + np.float32(HU_WINDOW[0])


@dataclass
class Prepared:
    """A volume on a working grid: the normalised array (z, y, x) and the SimpleITK grid it lives on."""

    array: np.ndarray
    grid: sitk.Image  # geometry carrier (same size/spacing/origin/direction as `array`)


def prepare(image: sitk.Image, spacing: tuple[float, float, float], intensity: str = "percentile") -> Prepared:
    """Canonical orientation + resampling to `spacing` + normalisation: the input to a network.

    One linear resampling from the stored image straight onto the canonical grid (the same samples a
    reoriented copy would give, without the copy). Voxels outside the scan are filled with -1024 HU (air)
    before normalising (`intensity`: the model card's mode, `intensity_of`). The returned grid is a uint8 carrier of the geometry only.
    """
    size, old_spacing, origin, direction = canonical_geometry(image)
    new_size, new_origin, new_spacing = _grid_for(size, old_spacing, origin, direction, spacing)
    resampled = sitk.Resample(image, new_size, sitk.Transform(), sitk.sitkLinear, new_origin, new_spacing,
                              direction.ravel().tolist(), -1024.0, sitk.sitkFloat32)
    array = normalize(sitk.GetArrayViewFromImage(resampled), intensity)
    grid = sitk.Image(new_size, sitk.sitkUInt8)
    grid.CopyInformation(resampled)
    return Prepared(array, grid)


def inplane_spacing(image: sitk.Image, inplane: float) -> tuple[float, float, float]:
    """Spacing for the refined stage: `inplane` mm across x and y, the CT's slice spacing (along its canonical
    z axis) kept: the refined network works per axial slice."""
    return (inplane, inplane, canonical_spacing(image)[2])


def labels_to_grid(labels_array: np.ndarray, grid: sitk.Image, target: sitk.Image) -> np.ndarray:
    """Move a label array living on `grid` onto `target`'s grid by nearest neighbour; returns (z, y, x) uint8."""
    return sitk.GetArrayFromImage(labels_onto(labels_array, grid, target))


def labels_onto(labels_array: np.ndarray, grid: sitk.Image, target: sitk.Image) -> sitk.Image:
    """`labels_to_grid` as a uint8 image carrying `target`'s geometry (no array copy of a large CT's grid)."""
    src = sitk.GetImageFromArray(labels_array.astype(np.uint8, copy=False))
    src.CopyInformation(grid)
    return resample_like(src, target, sitk.sitkNearestNeighbor, 0)
