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


def to_canonical(image: sitk.Image) -> sitk.Image:
    """Reorient (permute/flip axes, no interpolation) so that index axes point to Right, Anterior, Superior.

    Oblique directions are rounded to the nearest axes by DICOMOrient; the world geometry is unchanged.
    """
    return sitk.DICOMOrient(image, "RAS")


def resample(image: sitk.Image, spacing: tuple[float, float, float], interpolator=sitk.sitkLinear, default: float = 0.0) -> sitk.Image:
    """Resample `image` to `spacing` (x, y, z mm) over the same world extent, keeping origin and direction."""
    old_spacing = np.array(image.GetSpacing())
    old_size = np.array(image.GetSize())
    new_spacing = np.array(spacing, dtype=float)
    new_size = np.maximum(1, np.round(old_size * old_spacing / new_spacing)).astype(int)
    # keep the centre of the volume fixed: shift the origin by half the change of voxel size
    origin = np.array(image.GetOrigin()) + np.array(image.GetDirection()).reshape(3, 3) @ ((new_spacing - old_spacing) / 2)
    return sitk.Resample(
        image, [int(s) for s in new_size], sitk.Transform(), interpolator, origin.tolist(), new_spacing.tolist(),
        image.GetDirection(), default, image.GetPixelID(),
    )


def resample_like(image: sitk.Image, reference: sitk.Image, interpolator=sitk.sitkNearestNeighbor, default: float = 0.0) -> sitk.Image:
    """Resample `image` onto `reference`'s grid through world coordinates (any orientation on either side)."""
    return sitk.Resample(image, reference, sitk.Transform(), interpolator, default, image.GetPixelID())


def normalize(hu: np.ndarray) -> np.ndarray:
    """Clip to the abdominal window and scale by the volume's 1st and 99th percentiles to about [0, 1]."""
    clipped = np.clip(hu, *HU_WINDOW).astype(np.float32)
    p1, p99 = np.percentile(clipped[:: max(1, clipped.shape[0] // 32)], [1, 99])
    if p99 - p1 < 1e-3:
        p1, p99 = HU_WINDOW
    return ((clipped - p1) / (p99 - p1)).astype(np.float32)


@dataclass
class Prepared:
    """A volume on a working grid: the normalised array (z, y, x) and the SimpleITK grid it lives on."""

    array: np.ndarray
    grid: sitk.Image  # geometry carrier (same size/spacing/origin/direction as `array`)


def prepare(image: sitk.Image, spacing: tuple[float, float, float]) -> Prepared:
    """Canonical orientation + resampling to `spacing` + normalisation: the input to a network.

    Voxels outside the scan are filled with -1024 HU (air) before normalising.
    """
    canonical = to_canonical(image)
    resampled = resample(canonical, spacing, sitk.sitkLinear, default=-1024.0)
    return Prepared(normalize(sitk.GetArrayFromImage(resampled)), resampled)


def inplane_spacing(image: sitk.Image, inplane: float) -> tuple[float, float, float]:
    """Spacing for the refined stage: `inplane` mm across x and y, the slice spacing kept (2D per slice)."""
    return (inplane, inplane, image.GetSpacing()[2])


def labels_to_grid(labels_array: np.ndarray, grid: sitk.Image, target: sitk.Image) -> np.ndarray:
    """Move a label array living on `grid` onto `target`'s grid by nearest neighbour; returns (z, y, x) uint8."""
    src = sitk.GetImageFromArray(labels_array.astype(np.uint8))
    src.CopyInformation(grid)
    return sitk.GetArrayFromImage(resample_like(src, target, sitk.sitkNearestNeighbor, 0))
