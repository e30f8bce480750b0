"""How a prompted refinement's result goes back into the label map (issue 23): onto the CT's own grid, only
where something changed, and with the organ that was clicked winning where it was pointed at.

The rules, for organ A refined from hints:
- A takes the part of its re-prediction that is new and connected to a positive point, even where another
  organ B holds those voxels (a box or a stroke marks a region, not a structure: what they add is background): a clinician who clicks into a structure and says "right kidney" means it. B
  loses exactly those voxels; the record says how many, per organ (`taken`).
- everywhere else A takes only background (a seam along its old edge, a regrown rim);
- what A loses becomes background: a negative hint for A never gives or takes a voxel of B;
- every voxel outside the changed box is left as it was, so organs away from the hints stay voxel-identical,
  and the label map holds one label per voxel by construction.
Everything is done within the bounding box of the change (a kidney click on a 512x512 CT touched every one of
its 34 million voxels several times before).
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from .clicks import bounding_box
from .organs import BY_ID
from .preprocess import resample_like

ADDED, REMOVED, SEAM = 1, 2, 3  # the change map's values on the refined grid


def subgrid(reference: sitk.Image, box: tuple[slice, ...]) -> sitk.Image:
    """A uint8 image with the geometry of `reference`'s voxels in `box` ((z, y, x) slices): nothing is copied."""
    lo = [box[2].start, box[1].start, box[0].start]
    size = [box[2].stop - lo[0], box[1].stop - lo[1], box[0].stop - lo[2]]
    out = sitk.Image(size, sitk.sitkUInt8)
    out.SetSpacing(reference.GetSpacing())
    out.SetDirection(reference.GetDirection())
    out.SetOrigin(reference.TransformIndexToPhysicalPoint([int(v) for v in lo]))
    return out


def mapped_box(box: tuple[slice, ...], source: sitk.Image, target: sitk.Image, pad: int = 2) -> tuple[slice, ...] | None:
    """The box of `target`'s voxels covering the box `box` of `source`'s voxels (both (z, y, x)), widened by
    `pad` target voxels and half a source voxel; None if they do not meet."""
    corners = []
    for z in (box[0].start - 0.5, box[0].stop - 0.5):
        for y in (box[1].start - 0.5, box[1].stop - 0.5):
            for x in (box[2].start - 0.5, box[2].stop - 0.5):
                point = source.TransformContinuousIndexToPhysicalPoint([x, y, z])
                corners.append(target.TransformPhysicalPointToContinuousIndex(point)[::-1])
    corners = np.array(corners)
    shape = target.GetSize()[::-1]
    lo = np.maximum(0, np.floor(corners.min(0)).astype(int) - pad)
    hi = np.minimum(shape, np.ceil(corners.max(0)).astype(int) + pad + 1)
    if np.any(hi <= lo):
        return None
    return tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))


def onto_grid(array: np.ndarray, grid: sitk.Image, target: sitk.Image, box: tuple[slice, ...]) -> np.ndarray:
    """A label array on `grid` moved by nearest neighbour onto `target`'s voxels in `box` (uint8, box-shaped)."""
    src = sitk.GetImageFromArray(array.astype(np.uint8, copy=False))
    src.CopyInformation(grid)
    return sitk.GetArrayFromImage(resample_like(src, subgrid(target, box)))


def organ_on_grid(organ_ct: np.ndarray, current: sitk.Image, grid: sitk.Image) -> np.ndarray:
    """The organ's mask on the CT's grid moved onto the refined `grid` (bool), reading only its bounding box."""
    box = bounding_box(organ_ct, pad=1)
    if box is None:
        return np.zeros(grid.GetSize()[::-1], dtype=bool)
    src = sitk.GetImageFromArray(organ_ct[box].astype(np.uint8))
    src.CopyInformation(subgrid(current, box))
    return sitk.GetArrayViewFromImage(resample_like(src, grid)) > 0


def change_map(pred: np.ndarray, organ_now: np.ndarray, added: np.ndarray, excluded: np.ndarray) -> np.ndarray:
    """What changed on the refined grid, as ADDED / REMOVED / SEAM (0: nothing).

    - ADDED: the new part connected to a positive hint (`added`); A may take another organ's voxels there;
    - SEAM: the rest of what is new, and the kept voxels touching an addition, so no seam under a refined voxel's
      width is left between the old edge and the addition: background only;
    - REMOVED: the voxels taken away (`organ_now` less `pred`), the negative balls (`excluded`) and the refined
      voxels touching a removal, all outside `pred`: a CT voxel of the segment whose refined voxel was not in
      `organ_now` (a rim or a thin part lost at 1.5 mm) must go too, or a removed lobe left slivers of its rim
      and a negative click on a thin rim left the rim it was clicked on."""
    new, removed = pred & ~organ_now, organ_now & ~pred
    change = np.zeros(pred.shape, dtype=np.uint8)
    ring = np.ones((1, 3, 3), dtype=bool)  # the 8 in-plane neighbours: the refined grid keeps the CT's slices
    if new.any():
        box = bounding_box(new, pad=2)
        change[box][pred[box] & ndimage.binary_dilation(new[box], structure=ring)] = SEAM
        change[new & added] = ADDED
    if removed.any() or excluded.any():
        box = bounding_box(removed | excluded, pad=2)
        gone = ~pred[box] & (excluded[box] | ndimage.binary_dilation(removed[box], structure=ring))
        change[box][gone] = REMOVED
    return change


def merge(labels: np.ndarray, organ: int, box: tuple[slice, ...] | None, organ_after: np.ndarray | None,
          takeover: np.ndarray | None) -> tuple[np.ndarray, dict]:
    """The label map with `organ` replaced by `organ_after` within `box` (CT grid), and what changed.

    `takeover`: where the organ may take another organ's voxels (box-shaped bool), else it takes background
    only. Returns (new labels, {voxels_before, voxels_after, added, removed, box: [[z0, z1], [y0, y1], [x0, x1]]
    (the voxels that may have changed; None: none did), taken: {organ key: voxels it took from that organ}})."""
    out = np.array(labels, copy=True)
    voxels_before = int(np.count_nonzero(labels == organ)) if box is None else None
    if box is None:
        return out, {"voxels_before": voxels_before, "voxels_after": voxels_before, "added": 0, "removed": 0,
                     "box": None, "taken": {}}
    before = labels[box]
    was = before == organ
    allowed = (before == 0) | was
    if takeover is not None:
        allowed |= takeover
    now = organ_after & allowed
    taken_from = before[now & ~was & (before != 0)]
    ids, counts = np.unique(taken_from, return_counts=True)
    sub = out[box]
    sub[was & ~now] = 0
    sub[now] = organ
    added, removed = int(np.count_nonzero(now & ~was)), int(np.count_nonzero(was & ~now))
    voxels_before = int(np.count_nonzero(labels == organ))
    return out, {"voxels_before": voxels_before, "voxels_after": voxels_before + added - removed, "added": added,
                 "removed": removed, "box": [[s.start, s.stop] for s in box], "taken": {BY_ID[int(i)].key if int(i) in BY_ID else str(int(i)): int(c)
                                               for i, c in zip(ids, counts)}}
