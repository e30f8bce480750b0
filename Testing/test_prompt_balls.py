"""The geometry of a click's ball (clicks.py): its size fitted to where it lands, which click decides where
a positive and a negative ball overlap, and how a change made on the refined grid goes back onto a finer CT
(prompt_merge.py). Synthetic masks on a small grid, since this is arithmetic on shapes; the same rules on
real CT are in test_prompts.py and test_prompts_ircad.py, the lobes of negative clicks in test_clicks.py."""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from scipy import ndimage

from contrastseg import prompt_merge
from contrastseg.clicks import MIN_BALL_MM, bounding_box
from contrastseg.clicks import ball as _ball
from contrastseg.clicks import depth as _depth
from contrastseg.clicks import fitted_ball as _fitted_ball
from contrastseg.clicks import nearer_negative
from contrastseg.preprocess import labels_to_grid

SPACING = (1.0, 1.0, 2.0)  # x, y, z mm


def block() -> np.ndarray:
    mask = np.zeros((30, 80, 80), dtype=bool)
    mask[5:25, 10:70, 10:70] = True
    return mask


def test_depth_is_the_distance_to_the_nearest_voxel_outside():
    mask = block()
    assert _depth(mask, np.array([15, 40, 40]), 40.0, SPACING) == 20.0  # 10 slices of 2 mm to z = 25
    assert _depth(mask, np.array([15, 11, 40]), 40.0, SPACING) == 2.0
    assert _depth(mask, np.array([15, 5, 40]), 40.0, SPACING) == 0.0  # outside
    # only as far as asked: a window of about reach_mm, beyond it counts as outside
    assert 10.0 <= _depth(mask, np.array([15, 40, 40]), 10.0, SPACING) < 20.0


def test_outside_the_distance_to_the_mask():
    mask = block()
    assert _depth(mask, np.array([15, 7, 40]), 40.0, SPACING, outside=True) == 3.0  # 3 voxels of 1 mm to y = 10
    assert _depth(mask, np.array([15, 40, 40]), 40.0, SPACING, outside=True) == 0.0  # inside
    assert _depth(np.zeros_like(mask), np.array([15, 40, 40]), 10.0, SPACING, outside=True) >= 10.0  # none within reach


def test_the_end_of_the_scan_is_not_an_edge_of_the_organ():
    mask = np.ones((6, 40, 40), dtype=bool)  # an organ that runs out of the scan at every side
    for centre in ([0, 20, 20], [5, 0, 39]):
        assert _depth(mask, np.array(centre), 10.0, SPACING) >= 10.0


def test_a_ball_fits_where_the_click_lands():
    mask, full = block(), 20.0
    size = lambda radius, c: int(_ball(mask.shape, np.array(c), radius, SPACING).sum())  # noqa: E731
    assert _fitted_ball(mask, np.array([15, 40, 40]), full, SPACING).sum() == size(full, [15, 40, 40])  # deep: full
    assert _fitted_ball(mask, np.array([15, 5, 40]), full, SPACING).sum() == size(full, [15, 5, 40])  # outside: full
    rim = _fitted_ball(mask, np.array([15, 11, 40]), full, SPACING)  # 2 mm deep: a 4 mm ball, the smallest
    assert rim.sum() == size(MIN_BALL_MM, [15, 11, 40]) and rim.sum() < size(full, [15, 11, 40]) / 50
    mid = _fitted_ball(mask, np.array([15, 16, 40]), full, SPACING)  # 7 mm deep: 14 mm
    assert mid.sum() == size(14.0, [15, 16, 40])


def test_a_negative_click_just_off_the_segment_takes_a_rim_of_it():
    """On the refined grid a click on a thin rim of a fine CT's segment can land just outside the segment: it
    must take a rim (its distance to the segment plus the smallest ball), not a full ball of the organ behind."""
    mask, full = block(), 20.0
    size = lambda radius, c: int(_ball(mask.shape, np.array(c), radius, SPACING).sum())  # noqa: E731
    near = _fitted_ball(mask, np.array([15, 8, 40]), full, SPACING, beside=True)  # 2 mm off the segment: 6 mm
    assert near.sum() == size(2.0 + MIN_BALL_MM, [15, 8, 40])
    assert (near & mask).sum() < 0.05 * (_ball(mask.shape, np.array([15, 8, 40]), full, SPACING) & mask).sum()
    far = np.array([15, 40, 40])  # no segment within reach: the full ball
    assert _fitted_ball(np.zeros_like(mask), far, full, SPACING, beside=True).sum() == size(full, far)
    inside = np.array([15, 16, 40])  # inside the segment, `beside` changes nothing
    assert np.array_equal(_fitted_ball(mask, inside, full, SPACING, beside=True), _fitted_ball(mask, inside, full, SPACING))


def test_where_balls_overlap_the_nearer_click_decides():
    # a flipped grid (LPS direction diag(-1, -1, 1)): the world points are computed through the direction matrix
    grid = sitk.Image(80, 80, 30, sitk.sitkUInt8)
    grid.SetSpacing(SPACING)
    grid.SetOrigin((40.0, -12.0, 100.0))
    grid.SetDirection((-1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0))
    shape = (30, 80, 80)
    positive, negative = np.array([15, 40, 34]), np.array([15, 40, 42])  # 8 mm apart in x, balls of 10 mm
    world = lambda zyx: grid.TransformIndexToPhysicalPoint([int(v) for v in zyx[::-1]])  # noqa: E731
    pos, neg = [world(positive)], [world(negative)]
    excluded = _ball(shape, negative, 10.0, SPACING)
    balls = _ball(shape, positive, 10.0, SPACING)
    assert excluded[tuple(positive)]  # the positive point lies inside the negative ball
    kept = nearer_negative(grid, pos, neg, excluded, balls)
    assert not kept[tuple(positive)] and not kept[15, 40, 37] and kept[15, 40, 39] and kept[tuple(negative)]
    assert np.array_equal(kept[:, :, 39:], excluded[:, :, 39:])  # the negative side keeps its whole ball
    assert np.array_equal(nearer_negative(grid, [], neg, excluded, balls), excluded)
    # where no positive ball reaches, the negative ball stays whole, even its voxels nearer to the positive point
    small = _ball(shape, positive, 1.0, SPACING)
    assert excluded[15, 40, 36] and not small[15, 40, 36]  # 2 mm from the positive point, 6 from the negative
    assert nearer_negative(grid, pos, neg, excluded, small)[15, 40, 36]
    assert not nearer_negative(grid, pos, neg, excluded, balls)[15, 40, 36]


def _onto_ct(pred, now, excluded, fine, ct, before) -> np.ndarray:
    """The organ on the CT's grid after a change made on the refined grid, as refine_organ maps it back."""
    change = prompt_merge.change_map(pred, now, pred & ~now, excluded)
    box = bounding_box(change > 0)
    if box is None:
        return before
    box = prompt_merge.mapped_box(box, fine, ct)
    moved = prompt_merge.onto_grid(change, fine, ct, box)
    out = before.copy()
    out[box] = (before[box] | (moved == prompt_merge.ADDED) | (moved == prompt_merge.SEAM)) & (moved != prompt_merge.REMOVED)
    return out


def _grids() -> tuple[sitk.Image, sitk.Image]:
    """A CT at 0.5 mm in-plane and its refined grid at 1.5 mm, over the same 60 x 60 x 15 mm."""
    ct, fine = sitk.Image(120, 120, 10, sitk.sitkUInt8), sitk.Image(40, 40, 10, sitk.sitkUInt8)
    ct.SetSpacing((0.5, 0.5, 1.5))
    fine.SetSpacing((1.5, 1.5, 1.5))
    return ct, fine


def _painted() -> np.ndarray:
    """An organ on the CT's grid: a block with a rim one CT voxel wide (x = 80), and a separate blob. The block's
    lower edge (y = 78) lies where the 1.5 mm grid's voxel reaches a CT voxel beyond it (y = 79)."""
    organ = np.zeros((10, 120, 120), dtype=bool)
    organ[:, 20:79, 20:81] = True
    organ[:, 95:105, 95:105] = True
    return organ


def test_only_the_change_goes_back_onto_the_ct_and_leaves_no_sliver_or_seam():
    ct, fine = _grids()
    before = _painted()
    now = labels_to_grid(before.astype(np.uint8), ct, fine) > 0
    nothing = np.zeros_like(now)
    assert now[:, 17, 26].all() and not now[:, 17, 27].any()  # the rim at x = 80 is lost on the 1.5 mm grid
    # unchanged: the segment keeps every voxel, rim included
    assert np.array_equal(_onto_ct(now, now, nothing, fine, ct, before), before)
    # the blob removed (a negative click's component): none of its voxels stays, rim slivers included
    cc, _ = ndimage.label(now)
    kept = now & (cc != cc[5, 33, 33])
    out = _onto_ct(kept, now, nothing, fine, ct, before)
    assert not out[:, 90:110, 90:110].any() and np.array_equal(out[:, :90, :90], before[:, :90, :90])
    # an addition below the block joins it without a seam: the CT row between the old edge and the addition
    # (y = 79, background, its refined voxel inside the segment) was left open
    added = now.copy()
    added[:, 27:33, 10:21] = True
    out = _onto_ct(added, now, nothing, fine, ct, before)
    assert out[before].all() and out[:, 79, 31:61].all() and out[:, 80:97, 31:61].all()
    # a negative click on the rim, which lies outside the refined segment: the clicked voxel goes, a rim's
    # worth of the organ behind it, not a full ball
    click = np.array([5, 17, 27])
    assert not now[tuple(click)]
    ball = _fitted_ball(now, click, 21.0, fine.GetSpacing(), beside=True)
    out = _onto_ct(now & ~ball, now, ball, fine, ct, before)
    full = _ball(now.shape, click, 21.0, fine.GetSpacing())
    taken, full_taken = before.sum() - out.sum(), before.sum() - _onto_ct(now & ~full, now, full, fine, ct, before).sum()
    assert not out[5, 50, 80] and out[5, 50, 60] and taken < full_taken / 5, (taken, full_taken)
