"""One click on an organ of an unseen CT (issue 9's test): `contrastseg refine-organ` on IRCAD patient 1 (manual
masks, never trained on), starting from the default model's own segmentation, with the click where
scripts/click_eval.py puts it (the innermost voxel of the largest error, METHODS §10).

- a positive click in the missed part of a kidney (its segment's lower half cleared) adds the organ, above a
  floor measured with the bundled model, and every other organ keeps its voxels;
- a negative click in a false-positive component (one that touches no true voxel) removes all of it;
- a positive and a negative click closer than a ball's radius: the nearer one decides each voxel;
- a positive click deep inside a painted segment changes no voxel (only changes go back to the CT's grid);
- from the manual masks (issue 23): a kidney labelled as spleen is taken back by one positive click for the
  kidney, the spleen losing only voxels of the clicked component; the right kidney's label moved onto a wrong
  region (its largest piece, false) goes whole with one negative click, its true piece staying.

The CT and its masks are read in place from ../shared/data; what the test writes (segmentations of the CT)
goes to pytest's temporary folders and is deleted once read, since the IRCAD licence forbids keeping copies
or conversions of it.
"""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage

from contrastseg.cli import main
from realdata import IRCAD, needs_default_model, needs_ircad

pytestmark = [needs_ircad, needs_default_model()]
CT = IRCAD / "PATIENT_DICOM"
LEFT_KIDNEY, RIGHT_KIDNEY = 3, 2
CLICK_FLOOR = 0.78  # left kidney, its segment's lower half cleared, after one click: measured 0.832 from 0.664
#                    (2026-12-07, default model v0.3, 2 threads; v0.2 missed the kidney itself: 0.736 from 0.585)
ADDED_PRECISION = 0.85  # share of the voxels that click adds that are kidney: 0.884 (v0.2 on its own miss: 0.93)


@pytest.fixture(scope="module")
def start(tmp_path_factory):
    """(the default model's segmentation of IRCAD patient 1 as a file and an array, the manual masks); the file
    is deleted after the module's tests."""
    import shutil

    from contrastseg.io import read_image
    from contrastseg.metrics import load_truth

    folder = tmp_path_factory.mktemp("ircad")
    path = folder / "segmentation.nii"
    assert main(["segment", str(CT), "-o", str(path), "--threads", "2", "--progress", "none"]) == 0
    image = read_image(CT)
    yield path, sitk.GetArrayFromImage(sitk.ReadImage(str(path))), load_truth(IRCAD / "MASKS_DICOM.zip", image)
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="module")
def half_missing(start, tmp_path_factory):
    """The default model's segmentation with the left kidney's lower half cleared (a missed part the size of
    the misses of an unseen CT's kidney; v0.3 itself finds IRCAD's left kidney at 0.927): (path, array)."""
    path, before, _ = start
    zs = np.nonzero((before == LEFT_KIDNEY).any(axis=(1, 2)))[0]
    cut = before.copy()
    lower = cut[: int(np.median(zs))]
    lower[lower == LEFT_KIDNEY] = 0
    out = tmp_path_factory.mktemp("half") / "half.nii"
    image = sitk.GetImageFromArray(cut)
    image.CopyInformation(sitk.ReadImage(str(path)))
    sitk.WriteImage(image, str(out))
    yield out, cut
    out.unlink()


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2 * float((a & b).sum()) / float(a.sum() + b.sum())


def _innermost(region: np.ndarray, spacing_zyx) -> tuple[int, int, int]:
    """(z, y, x) of the voxel of `region` farthest from its boundary, in mm."""
    dist = ndimage.distance_transform_edt(region, sampling=spacing_zyx)
    return tuple(int(v) for v in np.unravel_index(dist.argmax(), dist.shape))


def _refine(tmp_path, labels, *prompt) -> np.ndarray:
    out = tmp_path / "refined.nii"
    assert main(["refine-organ", str(CT), "--labels", str(labels), "-o", str(out), *prompt, "--threads", "2",
                 "--progress", "none"]) == 0
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(out)))
    out.unlink()
    return labels


def _spacing(path) -> tuple[float, float, float]:
    return tuple(reversed(sitk.ReadImage(str(path)).GetSpacing()))


def test_one_click_in_the_missed_part_of_a_kidney_adds_it(tmp_path, start, half_missing):
    _, _, truth = start
    path, before = half_missing
    kidney = truth[LEFT_KIDNEY]
    missed, n = ndimage.label(kidney & (before != LEFT_KIDNEY))
    largest = missed == np.bincount(missed.ravel())[1:].argmax() + 1
    z, y, x = _innermost(largest, _spacing(path))
    after = _refine(tmp_path, path, "--organ", "left_kidney", "--point-ijk", f"{x},{y},{z}")
    dice_before, dice_after = _dice(before == LEFT_KIDNEY, kidney), _dice(after == LEFT_KIDNEY, kidney)
    print(f"left kidney: Dice {dice_before:.3f} -> {dice_after:.3f} after one click")
    assert dice_after > CLICK_FLOOR and dice_after > dice_before + 0.1, (dice_before, dice_after)
    others = (before != LEFT_KIDNEY) & (before != 0)
    lost = others & (after != before)  # another organ loses voxels only to the clicked kidney (issue 23)
    assert (after[lost] == LEFT_KIDNEY).all()
    # a positive click only adds: the current segment keeps every voxel
    assert (after[before == LEFT_KIDNEY] == LEFT_KIDNEY).all()
    # the click adds the missed part it points at, not the re-prediction's leaks along the rest of the border
    added = (after == LEFT_KIDNEY) & (before != LEFT_KIDNEY)
    precision = float((added & kidney).sum()) / float(added.sum())
    print(f"  {int(added.sum())} voxels added, {precision:.3f} of them kidney")
    assert precision > ADDED_PRECISION, precision


def test_a_click_well_inside_a_painted_segment_changes_nothing(tmp_path, start):
    """A positive click deep inside a well-found organ has nothing new to add: the label map comes back
    identical, voxel for voxel. The organ here is the manual liver mask on the CT's 0.57 mm grid, as a segment
    painted or corrected in Slicer is: the whole organ's round trip through the 1.5 mm refined grid redrew
    its edge (the model's own segment survives that trip, having come from that grid)."""
    path, before, truth = start
    liver = truth[6] & ((before == 0) | (before == 6))
    current = np.where(before == 6, 0, before).astype(before.dtype)
    current[liver] = 6
    painted = tmp_path / "painted.nii"
    image = sitk.GetImageFromArray(current)
    image.CopyInformation(sitk.ReadImage(str(path)))
    sitk.WriteImage(image, str(painted))
    z, y, x = _innermost(liver, _spacing(path))
    try:
        after = _refine(tmp_path, painted, "--organ", "liver", "--point-ijk", f"{x},{y},{z}")
    finally:
        painted.unlink()
    assert liver.sum() > 100_000 and np.array_equal(after, current)


def test_where_a_positive_and_a_negative_ball_overlap_the_nearer_click_decides(tmp_path, start, half_missing):
    """A positive click beside an earlier negative one (closer than a ball's radius) is what a user does to bring
    back what the negative click took: the voxel clicked positive must end up in the organ."""
    _, _, truth = start
    path, before = half_missing
    kidney = truth[LEFT_KIDNEY]
    missed, _ = ndimage.label(kidney & (before != LEFT_KIDNEY))
    z, y, x = _innermost(missed == np.bincount(missed.ravel())[1:].argmax() + 1, _spacing(path))
    step = int(round(8.0 / _spacing(path)[2]))  # the negative click 8 mm to the side: within the 15 mm balls
    after = _refine(tmp_path, path, "--organ", "left_kidney", "--point-ijk", f"{x},{y},{z}",
                    "--neg-point-ijk", f"{x + step},{y},{z}")
    assert after[z, y, x] == LEFT_KIDNEY
    assert not (after[z, y, x + step - 1: x + step + 2] == LEFT_KIDNEY).any()  # and the negative one's is not
    others = (before != LEFT_KIDNEY) & (before != 0)
    lost = others & (after != before)
    assert (after[lost] == LEFT_KIDNEY).all()  # other organs lose voxels only to the clicked kidney


def _with_false_piece(tmp_path, path, before, truth) -> tuple:
    """The segmentation with a ball of the liver (12 mm radius, at least 25 mm from the right kidney) labelled right
    kidney: the false piece the network itself made on IRCAD (52 789 voxels of the liver above the kidney) before
    Segment kept one main piece per solid organ. (path, array)."""
    spacing = _spacing(path)
    liver = before == 6
    far = ndimage.distance_transform_edt(before != RIGHT_KIDNEY, sampling=spacing) > 25.0
    depth = ndimage.distance_transform_edt(liver, sampling=spacing)
    centre = np.unravel_index(np.argmax(np.where(far & ~truth[RIGHT_KIDNEY], depth, 0)), liver.shape)
    grid = np.ogrid[tuple(slice(0, n) for n in liver.shape)]
    ball = sum(((g - c) * s) ** 2 for g, c, s in zip(grid, centre, spacing)) <= 12.0 ** 2
    out = before.copy()
    out[ball & liver] = RIGHT_KIDNEY
    image = sitk.GetImageFromArray(out)
    image.CopyInformation(sitk.ReadImage(str(path)))
    written = tmp_path / "with-false-piece.nii"
    sitk.WriteImage(image, str(written))
    return written, out


def test_a_negative_click_removes_a_false_positive_component(tmp_path, start):
    truth = start[2]
    path, before = _with_false_piece(tmp_path, *start)
    organ = before == RIGHT_KIDNEY
    cc, n = ndimage.label(organ)
    sizes = np.bincount(cc.ravel())
    # the largest component counts as the organ itself when no positive hint says otherwise: only the ball goes
    false = [i for i in range(1, n + 1) if i != sizes[1:].argmax() + 1 and not (truth[RIGHT_KIDNEY] & (cc == i)).any()]
    assert false, "the right kidney with a piece of the liver labelled as it has a false component"
    component = cc == max(false, key=lambda i: sizes[i])
    z, y, x = _innermost(component, _spacing(path))
    after = _refine(tmp_path, path, "--organ", "right_kidney", "--neg-point-ijk", f"{x},{y},{z}")
    assert not (after[component] == RIGHT_KIDNEY).any()  # all of it, not only the click's ball
    rest = organ & ~component
    assert (after[rest] == RIGHT_KIDNEY).mean() > 0.95  # the rest stays (less the click's ball where it reaches)
    dice_before, dice_after = _dice(organ, truth[RIGHT_KIDNEY]), _dice(after == RIGHT_KIDNEY, truth[RIGHT_KIDNEY])
    print(f"right kidney: a false component of {int(component.sum())} voxels removed, Dice {dice_before:.3f} -> {dice_after:.3f}")
    assert dice_after > dice_before
    others = ~organ
    assert np.array_equal(after[others], before[others])

    # with a positive click as well (the organ re-segmented on the refined grid): the false component still goes,
    # and the organ's largest component, the body the negative click must never delete, stays
    missed, _ = ndimage.label(truth[RIGHT_KIDNEY] & ~organ)
    pz, py, px = _innermost(missed == np.bincount(missed.ravel())[1:].argmax() + 1, _spacing(path))
    both = _refine(tmp_path, path, "--organ", "right_kidney", "--point-ijk", f"{px},{py},{pz}",
                   "--neg-point-ijk", f"{x},{y},{z}")
    body = cc == sizes[1:].argmax() + 1
    assert (both[component] != RIGHT_KIDNEY).mean() > 0.95  # gone, less what the re-segmentation may regrow at its edge
    assert (both[body] == RIGHT_KIDNEY).mean() > 0.95
    print(f"  with a positive click too: Dice {_dice(both == RIGHT_KIDNEY, truth[RIGHT_KIDNEY]):.3f}")
    organs = others & (before != 0)
    lost = organs & (both != before)  # other organs lose voxels only to the kidney the positive click pointed at
    assert (both[lost] == RIGHT_KIDNEY).all()


@pytest.fixture(scope="module")
def manual(tmp_path_factory):
    """(the CT's grid as an image, a label map of the manual masks: spleen, both kidneys, liver) of IRCAD
    patient 1, built in memory; written files are deleted after the module's tests."""
    import shutil

    from contrastseg.io import read_image
    from contrastseg.metrics import load_truth

    image = read_image(CT)
    truth = load_truth(IRCAD / "MASKS_DICOM.zip", image)
    labels = np.zeros(truth[6].shape, dtype=np.uint8)
    for organ in (6, 1, RIGHT_KIDNEY, LEFT_KIDNEY):
        labels[truth[organ]] = organ
    folder = tmp_path_factory.mktemp("ircad-manual")
    yield image, labels, truth, folder
    shutil.rmtree(folder, ignore_errors=True)


def _write(labels: np.ndarray, image, path):
    out = sitk.GetImageFromArray(labels.astype(np.uint8))
    out.CopyInformation(image)
    sitk.WriteImage(out, str(path))
    return path


def test_a_kidney_labelled_spleen_is_taken_back_by_one_positive_click(manual):
    """The issue's case: most of a kidney named spleen. One positive click for the right kidney in the middle of
    it brings the kidney back from the spleen; the spleen loses voxels of that component only, the true spleen
    keeps every voxel, and the other organs lose nothing but what became kidney."""
    image, labels, truth, folder = manual
    before = np.where(labels == RIGHT_KIDNEY, 1, labels)  # a second spleen component: the kidney
    path = _write(before, image, folder / "kidney-as-spleen.nii")
    z, y, x = _innermost(truth[RIGHT_KIDNEY], _spacing(path))
    try:
        after = _refine(folder, path, "--organ", "right_kidney", "--point-ijk", f"{x},{y},{z}")
    finally:
        path.unlink()
    kidney = after == RIGHT_KIDNEY
    dice = _dice(kidney, truth[RIGHT_KIDNEY])
    from_spleen = (before == 1) & kidney
    print(f"right kidney from the spleen: Dice 0 -> {dice:.3f} after one click, {int(from_spleen.sum())} voxels taken")
    assert dice > 0.5, dice  # measured 0.659 (2026-12-07, default model v0.2): the organ, not a piece of it
    assert (after[truth[1] & (before == 1)] == 1).all()  # the clicked organ took nothing of the true spleen
    lost = (before != 0) & (before != RIGHT_KIDNEY) & (after != before)
    assert (after[lost] == RIGHT_KIDNEY).all()  # voxels change owner only to the clicked organ
    spleen_lost = (before == 1) & (after != 1)
    assert spleen_lost.any() and (spleen_lost & truth[RIGHT_KIDNEY]).sum() > 0.99 * spleen_lost.sum()  # the clicked component


def _moved(kidney: np.ndarray, occupied: np.ndarray, spacing) -> np.ndarray:
    """The kidney's mask moved 60-120 mm in-plane onto voxels no organ holds (the first such place found)."""
    for mm in (80, 100, 120, 60):
        for axis in (1, 2):
            for sign in (-1, 1):
                shift = sign * int(round(mm / spacing[axis]))
                moved = np.roll(kidney, shift, axis=axis)
                if not (moved & occupied).any():
                    edge = np.zeros_like(kidney)
                    index = [slice(None)] * 3
                    index[axis] = slice(0, abs(shift)) if shift > 0 else slice(shift, None)
                    edge[tuple(index)] = True
                    if not (moved & edge).any():  # nothing wrapped round the array's end
                        return moved
    raise AssertionError("no free place for the moved kidney")


def test_a_false_largest_piece_goes_with_one_negative_click(manual):
    """The right kidney's label moved onto a place no organ holds: the organ's largest piece is false, the lower
    third of the true kidney (left in place) its other piece. One negative click in the middle of the false piece
    removes all of it, and nothing else (the rule before kept the largest piece always: only the click's ball
    went)."""
    image, labels, truth, folder = manual
    kidney = truth[RIGHT_KIDNEY]
    spacing = tuple(reversed(image.GetSpacing()))
    zs = np.nonzero(kidney.any(axis=(1, 2)))[0]
    true_part = kidney.copy()
    true_part[zs.min() + (zs.max() - zs.min()) // 3:] = False  # the lower third stays where it is
    before = np.where(labels == RIGHT_KIDNEY, 0, labels)
    false_piece = _moved(kidney, (before != 0) | ndimage.binary_dilation(true_part, iterations=3), spacing)
    before[false_piece | true_part] = RIGHT_KIDNEY
    cc, _ = ndimage.label(before == RIGHT_KIDNEY)
    sizes = np.bincount(cc.ravel())[1:]
    assert (cc == sizes.argmax() + 1)[false_piece].all()  # the false piece is the organ's largest
    path = _write(before, image, folder / "kidney-moved.nii")
    z, y, x = _innermost(false_piece, spacing)
    try:
        after = _refine(folder, path, "--organ", "right_kidney", "--neg-point-ijk", f"{x},{y},{z}")
    finally:
        path.unlink()
    print(f"right kidney's false largest piece: {int((after[false_piece] == RIGHT_KIDNEY).sum())} of "
          f"{int(false_piece.sum())} voxels left after one negative click")
    assert not (after[false_piece] == RIGHT_KIDNEY).any()
    assert (after[true_part] == RIGHT_KIDNEY).all()
    rest = before != RIGHT_KIDNEY
    assert np.array_equal(after[rest], before[rest])
