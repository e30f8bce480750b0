"""Dice, HD95 and ASSD against values computed by hand on tiny masks (METHODS.md §6); the share of an organ named as
another organ, and where along the body an organ's errors lie (on tiny masks and on the real CHAOS geometry)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from contrastseg.metrics import errors_by_height, evaluate, organ_metrics, slice_heights

SPACING = (2.0, 0.5, 0.5)  # z, y, x mm


def vol():
    return np.zeros((12, 12, 12), dtype=bool)


def test_identical_masks():
    a = vol()
    a[3:7, 4:8, 4:9] = True
    m = organ_metrics(a, a.copy(), SPACING)
    assert m["dice"] == 1.0 and m["hd95"] == 0.0 and m["assd"] == 0.0


def test_single_voxels_three_slices_apart():
    p, t = vol(), vol()
    p[2, 5, 5] = True
    t[5, 5, 5] = True  # 3 slices x 2 mm = 6 mm
    m = organ_metrics(p, t, SPACING)
    assert m["dice"] == 0.0
    assert m["hd95"] == pytest.approx(6.0) and m["assd"] == pytest.approx(6.0)


def test_half_overlap_percentile_and_symmetric_mean():
    p, t = vol(), vol()
    p[4, 5, 5] = True
    t[4, 5, 5] = True
    t[4, 5, 9] = True  # 4 voxels x 0.5 mm = 2 mm from the shared voxel
    m = organ_metrics(p, t, SPACING)
    assert m["dice"] == pytest.approx(2 * 1 / 3, abs=1e-4)
    # truth->pred distances {0, 2}: 95th percentile (linear) = 1.9; pred->truth {0}; HD95 = max = 1.9
    assert m["hd95"] == pytest.approx(1.9, abs=0.01)
    # symmetric mean over all three surface voxels: (0 + 0 + 2) / 3
    assert m["assd"] == pytest.approx(2 / 3, abs=0.01)


def test_absent_organs_are_skipped_and_one_sided_ones_score_zero():
    pred = np.zeros((12, 12, 12), dtype=np.uint8)
    pred[2:4, 2:4, 2:4] = 6
    truth = {6: pred == 6, 1: np.zeros_like(pred, dtype=bool), 2: vol()}
    truth[2][8:10, 8:10, 8:10] = True
    res = evaluate(pred, truth, SPACING)
    assert set(res["organs"]) == {"liver", "right_kidney"}  # spleen absent on both sides: skipped
    assert res["organs"]["liver"]["dice"] == 1.0
    rk = res["organs"]["right_kidney"]
    assert rk["dice"] == 0.0 and rk["hd95"] is None and rk["truth_voxels"] == 8
    assert res["mean_dice"] == 0.5


def test_named_as_another_organ_leaves_out_voxels_the_reference_names_twice():
    """IRCAD-like: a vein mask runs through the liver mask; a vein voxel called liver inside the liver's mask is
    not a confusion, one outside it is."""
    liver, vein = vol(), vol()
    liver[2:10, 2:10, 2:10] = True
    vein[0:12, 5:7, 5:7] = True  # 48 voxels, 32 of them inside the liver mask
    pred = np.zeros((12, 12, 12), dtype=np.uint8)
    pred[liver] = 6
    pred[0:2, 5:7, 5:7] = 6  # 8 vein voxels outside the liver mask called liver
    pred[10:12, 5:7, 5:7] = 2  # 8 called right kidney
    res = evaluate(pred, {6: liver, 9: vein}, SPACING)["organs"]
    vein_m = res["inferior_vena_cava"]
    assert vein_m["named_as"] == {"liver": round(8 / 48, 4), "right_kidney": round(8 / 48, 4)}
    assert vein_m["as_other"] == pytest.approx(16 / 48, abs=1e-3)
    assert res["liver"]["as_other"] == 0.0  # the liver's voxels are liver
    alone = evaluate(pred, {9: vein}, SPACING)["organs"]["inferior_vena_cava"]
    assert alone["named_as"]["liver"] == round(40 / 48, 4)  # without the liver's mask every one counts


def _dice(a, b):
    return 2 * (a & b).sum() / (a.sum() + b.sum())


def test_errors_by_height_puts_each_error_in_its_slab_and_says_what_fixing_it_gives():
    """Slices 2 mm apart, head at high z: the organ's top is slice 8. False voxels above the top, a miss in its
    top slab, a stretch named as the vein lower down; each lands in its slab, and a slab's `dice_if_right` is
    the Dice of the prediction with that slab replaced by the truth."""
    liver, vein = vol(), vol()
    liver[1:9, 2:10, 2:10] = True
    vein[0:12, 0:2, 0:2] = True
    pred = np.zeros((12, 12, 12), dtype=np.uint8)
    pred[liver] = 6
    pred[9:12, 2:10, 2:10] = 6  # 192 false voxels in the 6 mm above the top
    pred[7:9, 2:4, 2:10] = 0  # 32 missed in the top 4 mm
    pred[2:4, 2:10, 2:6] = 9  # 64 named as the vein, 10-14 mm below the top
    truth = {6: liver, 9: vein}
    heights = np.arange(12) * 2.0
    rows = {r["from_mm"]: r for r in errors_by_height(pred, truth, 6, heights, slab_mm=8.0)}
    assert rows[0.0]["false"] == 192 and rows[0.0]["missed"] == 0
    assert rows[-8.0]["missed"] == 32 and rows[-8.0]["false"] == 0  # heights -8 < h <= 0: slices 5-8
    assert rows[-16.0]["missed"] == 64 and rows[-16.0]["named_as_other"] == 64
    for start, z in ((0.0, slice(9, 12)), (-8.0, slice(5, 9)), (-16.0, slice(1, 5))):
        fixed = pred == 6
        fixed[z] = liver[z]
        assert rows[start]["dice_if_right"] == pytest.approx(_dice(fixed, liver), abs=1e-4)
    fixed = pred == 6
    fixed[5:] = liver[5:]  # slab -8 and the one above it right
    assert rows[-8.0]["dice_if_right_from_top"] == pytest.approx(_dice(fixed, liver), abs=1e-4)
    assert rows[-16.0]["dice_if_right_from_top"] == 1.0  # every slab right
    assert sum(r["false"] for r in rows.values()) == int(((pred == 6) & ~liver).sum())
    assert errors_by_height(pred, {9: vein, 6: vol()}, 6, heights) == []  # no true voxel: nothing to place


def test_slice_heights_follow_the_patient_axis_and_refuse_non_axial_slices():
    import SimpleITK as sitk

    from contrastseg.errors import ContrastSegError

    img = sitk.Image(4, 4, 5, sitk.sitkInt16)
    img.SetSpacing((1.0, 1.0, 2.5))
    img.SetOrigin((0.0, 0.0, 100.0))
    img.SetDirection((1, 0, 0, 0, 1, 0, 0, 0, -1))  # slices stored head to foot
    assert slice_heights(img).tolist() == [100.0, 97.5, 95.0, 92.5, 90.0]
    img.SetDirection((1, 0, 0, 0, 0, 1, 0, -1, 0))  # coronal slices
    with pytest.raises(ContrastSegError, match="not axial"):
        slice_heights(img)


CHAOS = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "chaos-ct-case1"


@pytest.mark.skipif(not CHAOS.exists(), reason=f"the CHAOS CT is not found at {CHAOS}")
def test_errors_by_height_on_a_real_ct_find_false_liver_above_its_top():
    """CHAOS's DICOM geometry and manual liver mask: false liver painted in the 3 slices above the mask's top
    (by patient height, whatever the stored order) is all in the slab above the top, and fixing that slab
    gives back Dice 1; the organ's own slabs hold no error."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
    from eval_cases import chaos_truth

    from contrastseg.io import read_image

    image = read_image(CHAOS / "DICOM_anon")
    truth = chaos_truth(image)
    heights = slice_heights(image)
    assert np.all(np.diff(heights) != 0)
    liver = truth[6]
    z_top = int(np.argmax(np.where(liver.any((1, 2)), heights, -np.inf)))
    above = np.argsort(heights)  # slices by height; the three just above the top
    above = above[np.searchsorted(heights[above], heights[z_top]) + 1:][:3]
    pred = liver.astype(np.uint8) * 6
    pred[above] = liver[z_top] * 6
    rows = errors_by_height(pred, truth, 6, heights, slab_mm=16.0)
    assert rows[0]["from_mm"] == 0.0 and rows[0]["false"] == 3 * int(liver[z_top].sum()) > 0
    assert rows[0]["dice_if_right"] == 1.0
    assert all(r["false"] == 0 and r["missed"] == 0 for r in rows[1:])
