"""The working memory of `segment` (issue 8 item 7), on real CT with the real default model.

The grids are resampled straight from the stored CT (no reoriented copy), the CT stays in its 16-bit type,
and the fusion keeps a running argmax instead of one volume per organ. Each of these must give exactly
what the direct computation gives, and the fusion's memory must not grow with the number of organs.
Peak RSS itself is measured by `scripts/bench_segment.py` (docs/benchmarks.md), not here.
"""

from __future__ import annotations

import itertools
import tracemalloc

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from contrastseg.infer import REFINE_BATCH, _bbox, _pad_to, _probs_to_grid, coarse_stage, refine
from contrastseg.inputs import InputSpec, coarse_input
from contrastseg.io import read_image
from contrastseg.preprocess import (canonical_geometry, canonical_slices, inplane_spacing, normalize, prepare,
                                    to_canonical)
from realdata import IRCAD, model, needs_data, needs_default_model, small_ct  # noqa: F401 - fixtures

pytestmark = [needs_data, needs_default_model()]
CPU = torch.device("cpu")


def storage_variants(image: sitk.Image):
    """The same CT stored in every axis order and flip, and turned obliquely (about 17 degrees)."""
    for perm in itertools.permutations(range(3)):
        for flips in itertools.product([False, True], repeat=3):
            yield sitk.Flip(sitk.PermuteAxes(image, list(perm)), list(flips))
    oblique = sitk.Image(image)
    c, s = np.cos(0.3), np.sin(0.3)
    oblique.SetDirection((np.array(image.GetDirection()).reshape(3, 3) @ [[c, -s, 0], [s, c, 0], [0, 0, 1]]).ravel().tolist())
    yield oblique


def test_canonical_geometry_is_dicomorients_without_the_copy(small_ct):
    for variant in storage_variants(small_ct):
        reoriented = to_canonical(variant)
        size, spacing, origin, direction = canonical_geometry(variant)
        assert tuple(int(v) for v in size) == reoriented.GetSize()
        np.testing.assert_allclose(spacing, reoriented.GetSpacing(), rtol=1e-12)
        np.testing.assert_allclose(origin, reoriented.GetOrigin(), atol=1e-6)
        np.testing.assert_allclose(direction.ravel(), reoriented.GetDirection(), atol=1e-12)
        zs = [0, reoriented.GetSize()[2] // 2, reoriented.GetSize()[2] - 1]
        np.testing.assert_array_equal(canonical_slices(variant, zs), sitk.GetArrayViewFromImage(reoriented)[zs])


def test_prepare_equals_reorienting_then_resampling(small_ct):
    """The one-step resampling gives the samples of the former two steps (reorient, then resample)."""
    spacing = inplane_spacing(small_ct, 1.5)
    for variant in list(storage_variants(small_ct))[::7]:
        canonical = to_canonical(variant)
        size = np.maximum(1, np.round(np.array(canonical.GetSize()) * canonical.GetSpacing() / spacing)).astype(int)
        origin = np.array(canonical.GetOrigin()) + np.array(canonical.GetDirection()).reshape(3, 3) @ (
            (np.array(spacing) - canonical.GetSpacing()) / 2)
        two_step = sitk.Resample(canonical, [int(v) for v in size], sitk.Transform(), sitk.sitkLinear, origin.tolist(),
                                 spacing, canonical.GetDirection(), -1024.0, sitk.sitkFloat32)
        prepared = prepare(variant, spacing)
        assert prepared.grid.GetSize() == two_step.GetSize() and prepared.grid.GetPixelID() == sitk.sitkUInt8
        np.testing.assert_allclose(prepared.array, normalize(sitk.GetArrayFromImage(two_step)), atol=1e-4)


def test_a_16_bit_ct_stays_16_bit_and_segments_alike():
    image = read_image(IRCAD / "PATIENT_DICOM")
    assert image.GetPixelID() == sitk.sitkInt16  # half the memory of float32; every HU value exact
    as_float = prepare(sitk.Cast(image, sitk.sitkFloat32), (3.0, 3.0, 3.0)).array
    np.testing.assert_array_equal(prepare(image, (3.0, 3.0, 3.0)).array, as_float)


def _votes_fusion(net, image, attention, organs, margin=16):
    """The fusion written out directly: one int8 vote volume per organ, then an argmax over all of them."""
    votes = np.zeros((len(organs) + 1,) + image.shape, dtype=np.int8)
    for index, c in enumerate(organs, start=1):
        att = attention == c
        z_idx = np.nonzero(att.any(axis=(1, 2)))[0]
        for start in range(0, len(z_idx), REFINE_BATCH):
            zb = z_idx[start:start + REFINE_BATCH]
            _, ysl, xsl = _bbox(att[zb], margin, image.shape[1:])
            x = np.stack([image[zb, ysl, xsl], att[zb, ysl, xsl].astype(np.float32)], axis=1)
            xt, sizes = _pad_to(torch.from_numpy(x), net.divisor)
            with torch.inference_mode():
                logits = net(xt)[..., : sizes[0], : sizes[1]]
            fg = (logits[:, 1] > logits[:, 0]).numpy()
            votes[index][zb[:, None, None], np.arange(ysl.start, ysl.stop)[None, :, None],
                         np.arange(xsl.start, xsl.stop)[None, None, :]] = np.where(fg, 1, -1)
    return np.asarray([0, *organs], dtype=np.uint8)[votes.argmax(0)]


@pytest.fixture(scope="module")
def grids(model, small_ct):
    spec = InputSpec.of(model.card)  # the model's own intensity mode and coarse inputs
    low = prepare(small_ct, tuple(model.card["coarse"]["spacing"]), spec.intensity)
    probs, _ = coarse_stage(model.coarse, coarse_input(low.array, low.grid.GetSpacing()[0], spec), model.organs, CPU)
    fine = prepare(small_ct, inplane_spacing(small_ct, model.card["refined"]["inplane_spacing"]), spec.intensity)
    return low, probs, fine


def test_running_argmax_and_fusion_equal_the_direct_computation(model, grids):
    low, probs, fine = grids
    attention = _probs_to_grid(probs, low.grid, fine.grid, [0, *model.organs])
    stacked = []
    for c in [0, *model.organs]:  # the direct way: every channel resampled, then one argmax
        img = sitk.GetImageFromArray(probs[c])
        img.CopyInformation(low.grid)
        stacked.append(sitk.GetArrayFromImage(sitk.Resample(img, fine.grid, sitk.Transform(), sitk.sitkLinear,
                                                            1.0 if c == 0 else 0.0, img.GetPixelID())))
    direct = np.asarray([0, *model.organs], dtype=np.uint8)[np.argmax(stacked, axis=0)]
    np.testing.assert_array_equal(attention, direct)
    assert len(set(np.unique(attention)) - {0}) >= 5, "too few organs in the attention to test the fusion"

    fused = refine(model.refined, fine.array, attention, model.organs, CPU)
    np.testing.assert_array_equal(fused, _votes_fusion(model.refined, fine.array, attention, model.organs))


def _numpy_peak(fn) -> int:
    """Peak bytes numpy allocated while `fn` ran (tracemalloc sees numpy's buffers, not torch's or ITK's)."""
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_fusion_memory_does_not_grow_with_the_number_of_organs(model, grids):
    low, probs, fine = grids
    voxels = fine.array.size
    attention = _probs_to_grid(probs, low.grid, fine.grid, [0, *model.organs])
    present = [c for c in model.organs if (attention == c).any()]
    liver_only = attention * (attention == 6)
    for channels in ([0, 6], [0, *model.organs]):
        peak = _numpy_peak(lambda: _probs_to_grid(probs, low.grid, fine.grid, channels))
        assert peak < 8 * voxels, f"{len(channels)} channels: {peak / voxels:.1f} bytes per voxel"
    one = _numpy_peak(lambda: refine(model.refined, fine.array, liver_only, [6], CPU))
    every = _numpy_peak(lambda: refine(model.refined, fine.array, attention, model.organs, CPU))
    assert len(present) >= 5
    # a vote volume per organ would add a byte per voxel for each of them; allow one byte in all
    assert every < one + voxels, f"{len(present)} organs: {every / voxels:.2f} bytes/voxel, liver alone {one / voxels:.2f}"
