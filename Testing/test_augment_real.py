"""The default model's training augmentation on real CT (issue: a model that names organs on other hospitals' CTs).

An organ's HU moves only inside that organ's label; laterality is never flipped; a label map stays aligned with
its image after every spatial transform; a CT painted from labels alone has each tissue where its label is.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from realdata import DATA, TS, needs_data

from contrastseg.dataset import Entry, prepare_case
from contrastseg.inputs import InputSpec, body_centre_x, body_of
from contrastseg.organs import TOTALSEGMENTATOR_TO_BTCV
from contrastseg.phases import PHASES, paint_ct, simulate_phase
from contrastseg.preprocess import from_hu, to_hu
from contrastseg.spatial import SpatialRanges, _rotation
from contrastseg.tissues import BODY, TS_IDS
from contrastseg.train.crops import CropAugment, from_case, painted_source, sample

S0009 = DATA / "totalsegmentator-s0009"
LABELS_ONLY = DATA / "totalsegmentator-labels-only"
SPEC = InputSpec("soft-top", ("image", "lateral"))
pytestmark = needs_data


@pytest.fixture(scope="module")
def example_case():
    entry = Entry("ts-ct", TS / "example_ct.nii.gz", TS / "example_seg_fast_force_split.nii.gz",
                  TOTALSEGMENTATOR_TO_BTCV, None, {})
    return prepare_case(entry, (3.0, 3.0, 3.0), intensity="soft-top")


def test_phase_moves_hu_only_inside_the_structures(example_case):
    """Every voxel outside the shifted structures keeps its HU exactly; the kidneys reach their phase's HU."""
    hu = to_hu(example_case.image, "soft-top")
    structures = example_case.structures
    rng = np.random.default_rng(3)
    out, phase = simulate_phase(hu, structures, rng, (3.0, 3.0, 3.0), phase="portal", oral=0.0)
    from contrastseg.phases import _INDEX
    from contrastseg.tissues import TISSUE_OF, TISSUE_NAMES

    tissue = TISSUE_OF[structures]
    shifted = np.isin(tissue, [_INDEX[n] for n in PHASES["portal"] if n in TISSUE_NAMES])
    assert shifted.any() and (~shifted).any()
    np.testing.assert_array_equal(out[~shifted], hu[~shifted])
    kidneys = np.isin(structures, [TS_IDS["kidney_right"], TS_IDS["kidney_left"]])
    lo, hi = PHASES["portal"]["kidney"]
    assert np.median(hu[kidneys]) < 60  # a non-contrast CT: the kidneys start near 20 HU
    assert lo - 60 <= np.median(out[kidneys]) <= hi  # medulla may sit up to 50 HU under the cortex
    bone = np.isin(tissue, [_INDEX["bone"]])
    np.testing.assert_array_equal(out[bone], hu[bone])


def test_arterial_kidney_has_a_bright_cortex(example_case):
    hu = to_hu(example_case.image, "soft-top")
    kidney = example_case.structures == TS_IDS["kidney_left"]
    out, _ = simulate_phase(hu, example_case.structures, np.random.default_rng(0), (3.0, 3.0, 3.0), phase="arterial", oral=0.0)
    from scipy import ndimage

    rim = kidney & ~ndimage.binary_erosion(kidney, iterations=2)
    core = ndimage.binary_erosion(kidney, iterations=3)
    assert core.sum() > 20
    assert np.median(out[rim]) > np.median(out[core]) + 40  # corticomedullary contrast


def test_rotation_never_mirrors():
    rng = np.random.default_rng(0)
    for _ in range(200):
        r = _rotation(*rng.uniform(-np.pi, np.pi, size=3))
        assert np.isclose(np.linalg.det(r), 1.0)


def test_laterality_survives_every_transform(example_case):
    """In every augmented crop holding both kidneys, the right kidney lies on the right of the left one, and
    the lateral channel says so (patient right positive)."""
    src = from_case(example_case, SPEC)
    aug = CropAugment(spatial=SpatialRanges(yaw_deg=30.0, tilt_deg=10.0, elastic_voxels=3.0), fov=0.0)
    rng = np.random.default_rng(5)
    both = 0
    for _ in range(40):
        x, y = sample(src, (32, 80, 80), rng, SPEC, 1.0, aug)
        right, left = y == 2, y == 3
        if right.sum() < 30 or left.sum() < 30:
            continue
        both += 1
        assert x[1][right].mean() > 0 > x[1][left].mean()
    assert both >= 5


def test_labels_stay_aligned_with_the_image(example_case):
    """A source whose image is its own label map (scaled) comes out of any spatial transform still equal to
    its labels wherever the labels are not at an edge: image and labels share one transform."""
    labels = example_case.labels
    fake = example_case.__class__(example_case.id, labels.astype(np.float32) / 13.0, labels, example_case.spacing, None,
                                  example_case.annotated, None)
    src = from_case(fake, InputSpec("percentile", ("image",)))
    aug = CropAugment(spatial=SpatialRanges(yaw_deg=20.0, tilt_deg=8.0, elastic_voxels=3.0), phase=0.0, scanner=0.0,
                      fov=0.0, gamma=0.0)
    rng = np.random.default_rng(1)
    for _ in range(10):
        x, y = sample(src, (32, 64, 64), rng, InputSpec("percentile", ("image",)), 1.0, aug)
        from scipy import ndimage

        interior = ndimage.minimum_filter(y, 5) == ndimage.maximum_filter(y, 5)  # crop voxels span up to 1.4 source voxels
        assert interior.sum() > 1000
        same = np.abs(x[0][interior] * 13.0 - y[interior]) < 1e-3
        assert same.mean() > 0.999  # the few others: bilinear blending at the volume's own edge


def test_unaugmented_crop_is_a_straight_cut(example_case):
    """Without augmentation a crop is the volume's own voxels (not interpolated between them)."""
    import torch

    from contrastseg.spatial import IDENTITY, source_coordinates, voxel_coordinates, warp

    shape = example_case.image.shape
    centre = np.array([40, 50, 60])
    grid = source_coordinates((16, 32, 32), centre, np.random.default_rng(0), IDENTITY, shape)
    for axis, n in enumerate((16, 32, 32)):
        expected = centre[axis] - n // 2 + np.arange(n)
        got = voxel_coordinates(grid, shape, axis)
        np.testing.assert_allclose(np.moveaxis(got, axis, 0)[:, 0, 0], expected, atol=1e-3)
    x = warp(torch.from_numpy(example_case.image)[None], grid)[0].numpy()
    np.testing.assert_allclose(x, example_case.image[32:48, 34:66, 44:76], atol=1e-4)


def test_structure_folder_reads_all_btcv_organs():
    from contrastseg.io import read_image, read_labels
    import SimpleITK as sitk

    ct = read_image(S0009 / "ct.nii.gz")
    labels = sitk.GetArrayFromImage(read_labels(S0009 / "segmentations", ct))
    assert sorted(int(v) for v in np.unique(labels) if v) == list(range(1, 14))


def test_painted_ct_puts_each_tissue_under_its_label(tmp_path: Path):
    """s0004 has labels and no CT (one of its masks has a direction ITK refuses: read from the file)."""
    src = painted_source(LABELS_ONLY / "s0004" / "segmentations", 3.0, tmp_path)
    assert (src.structures == TS_IDS["thyroid_gland"]).any()
    assert (src.structures == BODY).sum() > 0.2 * (src.structures > 0).sum()
    rng = np.random.default_rng(0)
    z = int(np.argwhere(src.labels == 6)[:, 0].mean())  # a slice through the liver
    block = src.structures[z - 8:z + 8]
    hu = paint_ct(block, rng, (3.0, 3.0, 3.0), random_share=0.0)
    outside, lung = block == 0, np.isin(block, [TS_IDS[n] for n in TS_IDS if n.startswith("lung")])
    liver = block == TS_IDS["liver"]
    assert np.median(hu[outside]) < -800
    if lung.sum() > 100:
        assert np.median(hu[lung]) < -600
    assert 0 < np.median(hu[liver]) < 160
    # body centre of the painted subject lies inside its body
    centre = body_centre_x(src.structures > 0)
    assert 0.25 * src.structures.shape[2] < centre < 0.75 * src.structures.shape[2]


def test_context_crops_centre_on_the_heart_and_keep_it_background(tmp_path: Path, example_case):
    """Crops centred on a neighbour the liver is confused with (the heart) teach what the organs are not."""
    from contrastseg.train.crops import NO_AUGMENT

    heart = TS_IDS["heart"]
    src = painted_source(LABELS_ONLY / "s0004" / "segmentations", 3.0, tmp_path)
    around = src.context_voxels([heart])
    assert len(around) > 1000 and (src.structures[tuple(around.T)] == heart).all()
    assert len(from_case(example_case, SPEC).context_voxels([heart])) == 0  # no heart in that label map
    rng = np.random.default_rng(1)
    size = (16, 32, 32)
    centres = []
    for _ in range(20):
        x, labels = sample(src, size, rng, SPEC, aug=NO_AUGMENT, around=around)
        assert x.shape == (2, *size) and labels.shape == size
        centres.append(int(labels[8, 16, 16]))
    assert centres.count(0) >= 16  # the heart and around it: background, not liver
    liver = [int(sample(src, size, rng, SPEC, aug=NO_AUGMENT, around=src.fg[6])[1][8, 16, 16]) for _ in range(10)]
    assert liver.count(6) >= 6  # the same path centred on the liver finds the liver


def test_body_centre_on_real_ct(example_case):
    centre = body_centre_x(body_of(example_case.image, "soft-top"))
    assert 0.35 * example_case.image.shape[2] < centre < 0.65 * example_case.image.shape[2]


def test_soft_top_keeps_enhancement_below_bone():
    hu = np.array([-1000.0, 40.0, 200.0, 300.0, 700.0, 1500.0])
    x = from_hu(hu, "soft-top")
    assert x[0] == 0 and 0 < x[1] < x[2] < x[3] < x[4] <= x[5] == 1.5
    assert x[3] > 1.0 and x[4] - x[3] > 0.05  # an enhanced kidney at 300 HU and bone at 700 HU differ
    np.testing.assert_allclose(to_hu(x[1:5], "soft-top"), hu[1:5], atol=1e-3)


def test_cards_name_the_inputs_the_engine_knows():
    """The torch-free card check keeps its own copy of the input names and intensity modes: the same lists."""
    from contrastseg import inputs, preprocess, scan_ends
    from contrastseg.models import card
    from contrastseg.models.card import CardError, check_card
    from contrastseg.paths import default_model
    import json

    assert card.COARSE_INPUTS == inputs.COARSE_INPUTS and card.INTENSITY_MODES == preprocess.INTENSITY_MODES
    assert card.SCAN_TOP_MODES == scan_ends.SCAN_TOP_MODES
    good = json.loads((default_model() / "card.json").read_text())
    for bad in (dict(good, coarse=dict(good["coarse"], inputs=["lateral"])),
                dict(good, coarse=dict(good["coarse"], inputs=["image", "colour"])),
                dict(good, preprocessing=dict(good.get("preprocessing", {}), intensity="log")),
                dict(good, coarse=dict(good["coarse"], scan_top="pad"))):
        with pytest.raises(CardError):
            check_card(bad, "test")
    check_card(dict(good, coarse=dict(good["coarse"], inputs=["image", "lateral"]),
                    preprocessing=dict(good.get("preprocessing", {}), intensity="soft-top")), "test")


def test_a_field_of_view_cut_along_the_body_falls_inside_the_crop_when_asked(example_case):
    """With `fov_plane="crop"` a scan's end drawn for a crop (a plane across the body's axis) lies inside that
    crop, whatever part of the CT the crop comes from: the crop shows both the anatomy and where the scan stops.
    Drawn anywhere in the scan's height (v0.3's "scan"), some ends miss their crop."""
    import torch

    from contrastseg.spatial import source_coordinates
    from contrastseg.train.crops import _draw_fov, _outside

    shape = example_case.image.shape
    rng = np.random.default_rng(3)
    planes, missed = 0, 0
    for i in range(60):
        centre = np.array([rng.integers(0, shape[0]), shape[1] // 2, shape[2] // 2])
        grid = source_coordinates((32, 48, 48), centre, rng, SpatialRanges(yaw_deg=20.0, tilt_deg=8.0), shape)
        plane = np.random.default_rng(i).random() < 2 / 3  # _draw_fov's first draw: a plane, or a circle
        grid = torch.as_tensor(grid)
        outside, anywhere = (_outside(_draw_fov(grid, shape, np.random.default_rng(i), where), grid, shape, shape[2] / 2)
                             for where in ("crop", "scan"))
        if plane:
            planes += 1
            assert outside.any() and (~outside).any(), f"crop {i}: the cut misses the crop"
            missed += int(anywhere.all() or not anywhere.any())
    assert planes >= 20 and missed > 0


def test_edge_ends_repeat_the_end_slice_where_air_ends_show_air(example_case):
    """`ends="edge"`: a crop reaching past the scan's top shows the top slice again (image, lateral channel and
    labels), as infer.coarse_probabilities(pad_ends) shows the network a real scan's end; `ends="air"` (v0.3)
    shows air there and no organ. A drawn end (a scan that stops above a slice) is held the same way."""
    import torch

    from contrastseg.spatial import IDENTITY, source_coordinates, voxel_coordinates, warp
    from contrastseg.train.crops import _hold_z

    src = from_case(example_case, SPEC)
    depth = example_case.image.shape[0]
    top = np.array([[depth - 1, 50, 60]])
    crops = {}
    for ends in ("air", "edge"):
        aug = CropAugment(spatial=IDENTITY, phase=0.0, scanner=0.0, fov=0.0, gamma=0.0, ends=ends)
        crops[ends] = sample(src, (32, 64, 64), np.random.default_rng(5), SPEC, 1.0, aug, around=top)
    grid = source_coordinates((32, 64, 64), top[0] + np.random.default_rng(5).integers(-8, 9, size=3),
                              np.random.default_rng(0), IDENTITY, example_case.image.shape)
    z = voxel_coordinates(grid, example_case.image.shape, 0)[:, 0, 0]
    beyond, last = np.nonzero(z > depth - 1 + 1e-3)[0], int(np.argmin(np.abs(z - (depth - 1))))
    assert len(beyond) >= 4, "the crop must reach past the scan's top for this test"
    (xa, ya), (xe, ye) = crops["air"], crops["edge"]
    assert (ye[last] > 0).any() and (xe[0, last] > 0.2).any()  # the top slice shows organs and tissue
    for k in beyond:
        np.testing.assert_array_equal(ye[k], ye[last])
        np.testing.assert_allclose(xe[:, k], xe[:, last], atol=1e-5)
        assert not ya[k].any() and np.abs(xa[0, k]).max() < 1e-6
    np.testing.assert_allclose(xa[1], xe[1], atol=1e-5)  # the lateral channel does not depend on z

    cut = depth - 12.0
    held = _hold_z(torch.as_tensor(grid), depth, ("z", cut, True))
    x = warp(torch.from_numpy(example_case.image)[None], held)[0].numpy()
    z_held = voxel_coordinates(held, example_case.image.shape, 0)[:, 0, 0]
    assert z_held.max() == pytest.approx(cut, abs=1e-3) and (z > cut).sum() >= 8
    at_cut = x[np.argmax(z_held)]
    for k in np.nonzero(z > cut)[0]:
        np.testing.assert_allclose(x[k], at_cut, atol=1e-5)
