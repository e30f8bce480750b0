"""Where a CT starts (scan_ends.py): a scan whose top lies below the diaphragm is shown to the coarse network
with its top slice repeated; a scan whose top shows the lungs is run as it is.

On real CT: the TotalSegmentator example CT starts in the lower chest (lungs in its top slab) and IRCAD too;
the same example CT with its top 30 % removed, and s0009 (kidneys down), start below the diaphragm. Bowel gas
is not lung. The default model's card asks for the rule, and `segment` follows it unless told otherwise.
"""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from realdata import DATA, IRCAD, TS, model, needs_data, needs_default_model, needs_ircad  # noqa: F401 (fixture)

from contrastseg.metrics import slice_heights
from contrastseg.preprocess import prepare
from contrastseg.scan_ends import LUNG_SHARE, PAD_MM, coarse_padding, lung_share_at_top

pytestmark = needs_data
S0009 = DATA / "totalsegmentator-s0009" / "ct.nii.gz"


def top_removed(image: sitk.Image, share: float) -> sitk.Image:
    """`image` without the top `share` of its height (by patient height, whatever the stored slice order)."""
    h = slice_heights(image)
    keep = np.nonzero(h <= h.max() - share * (h.max() - h.min()))[0]
    return image[:, :, int(keep.min()):int(keep.max()) + 1]


def padding(image: sitk.Image) -> tuple[int, int]:
    return coarse_padding(image, prepare(image, (3.0, 3.0, 3.0), "soft-top").grid, "repeat-below-diaphragm")


def share(image: sitk.Image) -> float:
    return lung_share_at_top(image, prepare(image, (3.0, 3.0, 3.0), "soft-top").grid)


def test_a_scan_from_the_lower_chest_is_run_as_it_is():
    from contrastseg.io import read_image

    ct = read_image(TS / "example_ct.nii.gz")
    assert share(ct) > 2 * LUNG_SHARE
    assert padding(ct) == (0, 0)


@needs_ircad
def test_ircad_as_stored_shows_its_lungs_at_the_top():
    from contrastseg.io import read_image

    assert share(read_image(IRCAD / "PATIENT_DICOM")) > 0.2


def test_a_scan_that_starts_below_the_diaphragm_gets_its_top_repeated():
    from contrastseg.io import read_image

    for ct in (top_removed(read_image(TS / "example_ct.nii.gz"), 0.3), read_image(S0009)):
        assert share(ct) < LUNG_SHARE
        assert padding(ct) == (0, int(round(PAD_MM / 3.0)))
    assert coarse_padding(read_image(S0009), prepare(read_image(S0009), (3.0, 3.0, 3.0), "soft-top").grid, "as-is") == (0, 0)


def test_bowel_gas_is_not_lung_and_aerated_lung_is():
    """A slice of soft tissue whose tenth is gas (-1000 HU) shows no lung; the same tenth at -800 HU does."""
    hu = np.full((8, 120, 120), -1024.0, dtype=np.float32)
    yy, xx = np.mgrid[:120, :120]
    body = (yy - 60) ** 2 + (xx - 60) ** 2 < 50 ** 2
    pocket = (yy - 55) ** 2 + (xx - 50) ** 2 < 16 ** 2
    shares = []
    for inside in (-1000.0, -800.0):
        hu[:] = -1024.0
        hu[:, body] = 40.0
        hu[:, pocket] = inside
        image = sitk.GetImageFromArray(hu)
        image.SetSpacing((3.0, 3.0, 3.0))
        shares.append(lung_share_at_top(image, image))
    assert shares[0] == 0.0
    assert shares[1] == pytest.approx(pocket.sum() / body.sum(), rel=0.05)


@needs_default_model()
def test_segment_follows_the_cards_rule(model):  # noqa: F811 (the fixture)
    """The bundled card asks for the rule: on s0009 (no lung at its top) `segment` repeats the top, which
    changes the coarse answer, and says so in its notes; told `pad_ends=0` it runs the scan as it is."""
    import torch

    from contrastseg.infer import segment
    from contrastseg.io import read_image

    assert model.card["coarse"]["scan_top"] == "repeat-below-diaphragm"
    ct = read_image(S0009)
    cpu = torch.device("cpu")
    auto, told, plain = (segment(ct, model, refined=False, device=cpu, pad_ends=p)
                         for p in (None, (0, int(round(PAD_MM / 3.0))), 0))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(auto.labels), sitk.GetArrayFromImage(told.labels))
    assert (sitk.GetArrayFromImage(auto.labels) != sitk.GetArrayFromImage(plain.labels)).sum() > 1000
    assert len(auto.notes) == 1 and "below the diaphragm" in auto.notes[0] and "24 mm" in auto.notes[0]
    assert told.notes == [] and plain.notes == []  # a caller who chose the padding needs no note
