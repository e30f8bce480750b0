"""Preprocessing (METHODS.md §1.1): orientation-independence, world extent and intensity scaling on real CT."""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from contrastseg.io import read_image
from contrastseg.io import world_bounds
from contrastseg.preprocess import HU_WINDOW, normalize, prepare, to_canonical
from realdata import TS, needs_data

pytestmark = needs_data


def reoriented(image: sitk.Image) -> sitk.Image:
    """The same voxels stored another way: axes permuted (z, x, y) and two of them flipped."""
    return sitk.Flip(sitk.PermuteAxes(image, [2, 0, 1]), [True, False, True])


def test_canonical_orientation_is_independent_of_storage():
    img = read_image(TS / "example_ct_sm.nii.gz")
    odd = reoriented(img)
    assert odd.GetSize() != img.GetSize()
    a, b = to_canonical(img), to_canonical(odd)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(a), sitk.GetArrayFromImage(b))
    np.testing.assert_allclose(a.GetOrigin(), b.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(np.array(a.GetDirection()).reshape(3, 3), np.diag([-1, -1, 1]), atol=1e-6)


def test_prepare_keeps_the_world_extent():
    img = read_image(TS / "example_ct_dicom")
    low = prepare(img, (3.0, 3.0, 3.0)).grid
    assert np.allclose(low.GetSpacing(), 3.0)
    # the same world box, up to the rounding of the voxel count (the centre is kept fixed)
    np.testing.assert_allclose(world_bounds(low), world_bounds(img), atol=1.5 + 1e-3)
    extent = np.array(img.GetSize()) * np.array(img.GetSpacing())
    np.testing.assert_allclose(np.sort(np.array(low.GetSize()) * 3.0), np.sort(extent), atol=3.0)


def test_normalize_window_and_percentiles():
    hu = sitk.GetArrayFromImage(read_image(TS / "example_ct_sm.nii.gz"))
    x = normalize(hu)
    assert x.dtype == np.float32
    assert -0.05 <= x.min() and x.max() <= 1.5
    clipped = np.clip(hu, *HU_WINDOW)
    p1, p99 = np.percentile(clipped, [1, 99])
    assert np.isclose(np.median(x[(hu > 40) & (hu < 60)]), (50 - p1) / (p99 - p1), atol=0.05)


def test_prepare_gives_canonical_grid_at_spacing():
    img = read_image(TS / "example_ct_dicom")
    p = prepare(img, (3.0, 3.0, 3.0))
    assert p.array.shape == tuple(reversed(p.grid.GetSize()))
    assert np.allclose(p.grid.GetSpacing(), 3.0)
    air = p.array[:, :3, :3]
    assert np.all(air <= 0.01)  # outside the body: clipped at -175 HU -> ~0
