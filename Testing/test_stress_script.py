"""scripts/stress_default_model.py's remaking of a real CT as another hospital would acquire it (the model runs
are measured, not tested: docs/default-model.md): thicker slices cover the same body, a cut scan keeps the
slices it says, and the manual masks follow the CT onto its new grid."""

from __future__ import annotations

import importlib.util
import sys

import numpy as np
import pytest
import SimpleITK as sitk

from realdata import DATA, REPO

CHAOS = DATA / "chaos-ct-case1"
pytestmark = pytest.mark.skipif(not CHAOS.exists(), reason=f"the CHAOS CT is not found at {CHAOS}")


@pytest.fixture(scope="module")
def chaos():
    sys.path.insert(0, str(REPO / "scripts"))
    spec = importlib.util.spec_from_file_location("stress_default_model", REPO / "scripts" / "stress_default_model.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    from eval_cases import chaos_truth

    from contrastseg.io import read_image

    image = read_image(CHAOS / "DICOM_anon")
    return script, image, chaos_truth(image)[6]


def test_thick_slices_cover_the_same_body_and_keep_the_liver_where_it_was(chaos):
    script, image, liver = chaos
    new, move = script.remake(image, "slices-5mm")
    assert new.GetSpacing()[2] == pytest.approx(5.0) and new.GetSize()[:2] == image.GetSize()[:2]
    extent = image.GetSize()[2] * image.GetSpacing()[2]
    assert abs(new.GetSize()[2] * 5.0 - extent) <= 5.0
    moved = move(liver)
    assert moved.shape == sitk.GetArrayFromImage(new).shape
    assert moved.sum() * 5.0 == pytest.approx(liver.sum() * image.GetSpacing()[2], rel=0.05)  # the same volume
    hu = sitk.GetArrayFromImage(new)
    assert 100 < hu[moved].mean() < 200  # enhanced liver under its moved mask, not air or fat


def test_a_scan_cut_from_the_top_keeps_the_lower_slices_by_height(chaos):
    script, image, liver = chaos
    from contrastseg.metrics import slice_heights

    h = slice_heights(image)
    new, move = script.remake(image, "top-cut-50")
    kept = slice_heights(new)
    assert kept.max() <= h.min() + 0.5 * (h.max() - h.min()) + 1e-6  # the upper half is gone
    assert kept.min() == pytest.approx(h.min())
    assert np.array_equal(sitk.GetArrayFromImage(new), sitk.GetArrayFromImage(image)[np.isin(h, kept)])
    assert np.array_equal(move(liver), liver[np.isin(h, kept)])
    shifted, same = script.remake(image, "hu+40")
    assert (sitk.GetArrayFromImage(shifted) - sitk.GetArrayFromImage(image) == 40).all() and same(liver) is liver


def test_a_scan_from_the_dome_starts_at_the_livers_top_slice(chaos):
    """"from-dome": the scan's top slice is the highest slice of the manual liver mask, nothing above it."""
    script, image, liver = chaos
    from contrastseg.metrics import slice_heights

    h = slice_heights(image)
    top = h[np.nonzero(liver.any(axis=(1, 2)))[0]].max()
    assert top < h.max() - 5.0  # CHAOS shows 14 mm above its liver: the variant must remove something
    new, move = script.remake(image, "from-dome", {6: liver})
    kept = slice_heights(new)
    assert kept.max() == pytest.approx(top) and kept.min() == pytest.approx(h.min())
    moved = move(liver)
    assert moved[np.argmax(slice_heights(new))].any() and moved.sum() == liver.sum()


def test_a_native_phase_moves_the_liver_under_its_mask_and_nothing_else(chaos):
    """"phase-native": the enhanced CHAOS liver (about 140 HU) comes down to a non-contrast liver's HU under its
    manual mask; away from the mask's edge every voxel keeps its HU; the grid and the masks stay as they were."""
    script, image, liver = chaos
    from scipy import ndimage

    new, move = script.remake(image, "phase-native", {6: liver})
    before, after = sitk.GetArrayFromImage(image), sitk.GetArrayFromImage(new)
    assert new.GetSize() == image.GetSize() and move(liver) is liver
    assert np.median(before[liver]) > 120 and 40 <= np.median(after[liver]) <= 75
    far = ~ndimage.binary_dilation(liver, iterations=3)
    assert np.array_equal(after[far], before[far])
