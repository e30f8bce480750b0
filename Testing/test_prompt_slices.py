"""A click runs the refined network only on the slices its change can reach (prompt_slices.refine_mask), and
the part of the re-prediction a click uses is the same as with every slice computed: on the small
TotalSegmentator CT with the bundled model, a click deep inside a found kidney and a click in its cleared
lower half."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from scipy import ndimage

from contrastseg.dataset import NAMED_ID_MAPS
from contrastseg.hints import typical_area_mm2
from contrastseg.io import read_image, read_labels
from contrastseg.models.files import load_model
from contrastseg.prompt_merge import organ_on_grid
from contrastseg.prompt_slices import components_at, refine_mask
from contrastseg.prompts import Prompts, _anchors, hint_mask, refined_grid
from contrastseg.store import resolve
from realdata import TS, needs_data, needs_default_model

pytestmark = [needs_data, needs_default_model()]
RIGHT_KIDNEY = 2


class Counting(torch.nn.Module):
    """The refined network, counting the slices it is run on."""

    def __init__(self, net):
        super().__init__()
        self.net, self.divisor, self.slices = net, net.divisor, 0

    def forward(self, x):
        self.slices += x.shape[0]
        return self.net(x)


@pytest.fixture(scope="module")
def case():
    torch.set_num_threads(2)
    image = read_image(TS / "example_ct_sm.nii.gz")
    labels = read_labels(TS / "example_seg.nii.gz", image, NAMED_ID_MAPS["totalsegmentator"])
    model = load_model(resolve("default"))
    return image, labels, model, refined_grid(image, model)


def _both(case, current: np.ndarray, point_zyx):
    """(used part lazily, used part with every slice, slices run lazily, slices run with every slice)."""
    image, labels, model, fine = case
    cur = sitk.GetImageFromArray(current.astype(np.uint8))
    cur.CopyInformation(labels)
    organ_now = organ_on_grid(current == RIGHT_KIDNEY, cur, fine.grid)
    z, y, x = (int(v) for v in point_zyx)
    prompts = Prompts(positive=[image.TransformIndexToPhysicalPoint((x, y, z))])
    hints, excluded, _ = hint_mask(fine.grid, RIGHT_KIDNEY, prompts, organ_now, model.card["refined"].get("prompt_value", 1.0))
    anchors = _anchors(fine.grid, prompts)
    spacing = fine.grid.GetSpacing()
    typical_px = typical_area_mm2(RIGHT_KIDNEY) / (spacing[0] * spacing[1])
    out = []
    for lazy in (True, False):
        net = Counting(model.refined.eval())
        raw = refine_mask(net, fine.array, hints, torch.device("cpu"), typical_px=typical_px,
                          anchors=anchors if lazy else None, kept=organ_now if lazy else None)
        out.append((components_at(raw & ~organ_now & ~excluded, anchors), net.slices))
    return out[0][0], out[1][0], out[0][1], out[1][1]


def test_a_click_inside_a_found_kidney_runs_a_few_slices_and_changes_nothing_more(case):
    _, labels, _, _ = case
    current = sitk.GetArrayFromImage(labels)
    kidney = current == RIGHT_KIDNEY
    lazy, full, n_lazy, n_full = _both(case, current, np.argwhere(kidney).mean(0).round())
    assert np.array_equal(lazy, full)
    assert n_lazy < 0.6 * n_full, (n_lazy, n_full)  # 13 of 24 slices (2026-12-07, default model v0.3)


def test_a_click_in_a_missed_half_adds_the_same_voxels_as_with_every_slice(case):
    _, labels, _, _ = case
    current = sitk.GetArrayFromImage(labels)
    kidney = current == RIGHT_KIDNEY
    zs = np.nonzero(kidney.any(axis=(1, 2)))[0]
    lower = current[: int(np.median(zs))]
    lower[lower == RIGHT_KIDNEY] = 0
    missed = kidney & (current == 0)
    depth = ndimage.distance_transform_edt(missed, sampling=labels.GetSpacing()[::-1])
    lazy, full, n_lazy, n_full = _both(case, current, np.unravel_index(depth.argmax(), depth.shape))
    added_ml = full.sum() * np.prod(case[3].grid.GetSpacing()) / 1000
    missed_ml = missed.sum() * np.prod(labels.GetSpacing()) / 1000
    assert added_ml > 0.3 * missed_ml, f"the click added {added_ml:.1f} of {missed_ml:.1f} ml: the case this test is for is gone"
    assert np.array_equal(lazy, full)
    assert n_lazy < n_full, (n_lazy, n_full)
