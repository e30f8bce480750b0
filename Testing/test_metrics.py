"""Dice, HD95 and ASSD against values computed by hand on tiny masks (METHODS.md §6)."""

from __future__ import annotations

import numpy as np
import pytest

from contrastseg.metrics import evaluate, organ_metrics

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
