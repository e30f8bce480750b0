"""Where a CT starts: a scan whose top lies below the diaphragm is shown to the coarse network with its top
slice repeated, so the network does not read the scan's top as the top of the abdomen.

Why: every real CT the default model trained on starts in the lower chest or the upper abdomen, so its network
learned that the organs just under a scan's top edge are the liver and the spleen. On a scan that starts at the
kidneys it names the left kidney spleen (IRCAD with its top 40 or 50 % removed: 38 and 50 % of it; s0009 held
out of training: 39 %). Repeating the top slice 24 mm before the network runs (infer.coarse_probabilities,
`pad_ends`) gives it no edge there. A scan whose top shows the lungs is left as it is: that is what the network
trained on. Measured in docs/default-model.md ("Where a scan starts"), with what it costs: 48 mm of repeated
slices named a scan's lowest piece of spleen left kidney; 24 mm is what the model card asks for.

The lungs are told from bowel gas by their density: aerated lung is -950 to -600 HU, gas in the bowel is
darker than -950. The share is taken inside the body (its outline filled, 5 mm in from the skin, so the
air around the body and the skin's partial volume do not count), over the scan's top 15 mm.
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

TOP_SLAB_MM = 15.0
LUNG_HU = (-950.0, -600.0)
LUNG_SHARE = 0.02  # measured: 3.3-43 % with lung in the top slab, 0-1.6 % without (docs/default-model.md)
PAD_MM = 24.0
SCAN_TOP_MODES = ("as-is", "repeat-below-diaphragm")


def lung_share_at_top(image: sitk.Image, grid: sitk.Image) -> float:
    """The share of the body's cross-section that is lung-like (LUNG_HU) in the top TOP_SLAB_MM of `image`,
    sampled on the top slices of `grid` (a canonical grid: index z runs inferior to superior)."""
    k = max(1, int(round(TOP_SLAB_MM / grid.GetSpacing()[2])))
    top = grid[:, :, max(0, grid.GetSize()[2] - k):]
    hu = sitk.GetArrayFromImage(sitk.Resample(image, top, sitk.Transform(), sitk.sitkLinear, -1024.0, sitk.sitkFloat32))
    inset = max(1, int(round(5.0 / grid.GetSpacing()[0])))
    body_area, lung = 0, 0
    for s in hu:
        body = _body_outline(s)
        inner = ndimage.binary_erosion(body, iterations=inset)
        body_area += int(body.sum())
        lung += int((inner & (s > LUNG_HU[0]) & (s < LUNG_HU[1])).sum())
    return lung / body_area if body_area else 0.0


def _body_outline(hu: np.ndarray) -> np.ndarray:
    """The largest soft-tissue-or-denser region of one slice with its holes (lungs, bowel) filled."""
    solid, n = ndimage.label(hu > -500.0)
    if n == 0:
        return np.zeros(hu.shape, dtype=bool)
    sizes = np.bincount(solid.ravel())[1:]
    return ndimage.binary_fill_holes(solid == int(np.argmax(sizes)) + 1)


def coarse_padding(image: sitk.Image, grid: sitk.Image, mode: str) -> tuple[int, int]:
    """(bottom, top) slices of `grid` to repeat for the coarse network, as a model's card asks (`mode`, one of
    SCAN_TOP_MODES): the top PAD_MM when the scan starts below the diaphragm, else nothing."""
    if mode == "as-is" or lung_share_at_top(image, grid) >= LUNG_SHARE:
        return (0, 0)
    return (0, int(round(PAD_MM / grid.GetSpacing()[2])))
