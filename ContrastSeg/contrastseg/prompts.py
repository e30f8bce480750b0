"""Prompted refinement (METHODS.md §10, docs/clicks.md): a user's clicks, box or stroke become the refined
network's attention channel, and one organ is re-segmented in 3D.

Hints live on the refined grid (the CT in canonical RAS order, 1.5 mm in-plane, slices kept):
- positive point: a ball of up to the organ's typical in-plane radius, fitted to where the click lands
  (`clicks.fitted_ball`), cut into slices;
- negative point: its ball is removed from the attention and the result (where it overlaps a positive
  point's ball, the nearer point decides), and so is the lobe of the organ it lands in when it lands in the
  middle of one (`clicks.clicked_lobe`): a false piece goes with one click, even the organ's largest, while a
  click on a leak's edge or on a broadly joined leak trims the ball only;
- box: the inscribed ellipse on each slice the box spans; stroke or paint: its voxels, dilated 2 pixels;
- the organ's current segment: the starting attention; a positive hint adds the part of the re-prediction
  that is new and connected to it, and takes it from whichever organ holds it (`prompt_merge`).
Slices without a hint get attention by propagation: the prediction on the neighbouring slice, dilated 3
pixels, slice after slice in both directions until the prediction is empty. The network runs only on the
slices the click's change can reach (`prompt_slices`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import SimpleITK as sitk
import torch
from scipy import ndimage

from . import prompt_merge
from .clicks import MIN_BALL_MM, ball, bounding_box, fitted_ball, negative_removal, nearer_negative
from .errors import ContrastSegError
from .models.files import Model
from .organs import BY_ID
from .preprocess import inplane_spacing, intensity_of, prepare, resample_like
from .prompt_slices import components_at, refine_mask

from .hints import (CLICK_FRACTION, POSITIVE_CLICK_FRACTION, STROKE_DILATION, TYPICAL_RADIUS_MM, ellipse_in_box,
                    typical_area_mm2)

__all__ = ["MIN_BALL_MM", "Prompts", "hint_mask", "refine_mask", "refine_organ", "refined_grid", "ball"]


@dataclass
class Prompts:
    """Hints in world coordinates (LPS mm, ITK's physical space) or as a mask on the CT's own grid."""

    positive: list[tuple[float, float, float]] = field(default_factory=list)
    negative: list[tuple[float, float, float]] = field(default_factory=list)
    boxes: list[tuple[tuple[float, float, float], tuple[float, float, float]]] = field(default_factory=list)
    scribble: sitk.Image | None = None  # non-zero voxels = the stroke, on the CT's grid
    use_current: bool = True  # start from the organ's current segment

    def empty(self) -> bool:
        return not (self.positive or self.boxes or self.scribble is not None)


def ras_to_lps(point: tuple[float, float, float]) -> tuple[float, float, float]:
    """Slicer's RAS millimetres to ITK's LPS physical point."""
    return (-point[0], -point[1], point[2])


def ijk_to_lps(image: sitk.Image, ijk: tuple[float, float, float]) -> tuple[float, float, float]:
    """A voxel index of the CT's own grid (ITK/NIfTI order i, j, k) to its physical point; refused outside."""
    size = image.GetSize()
    if any(not (-0.5 <= v <= s - 0.5) for v, s in zip(ijk, size)):
        raise ContrastSegError(f"point {tuple(ijk)} is outside the CT's voxel grid (size {size})")
    return image.TransformContinuousIndexToPhysicalPoint([float(v) for v in ijk])


def _index(grid: sitk.Image, point, what: str) -> np.ndarray:
    """(z, y, x) voxel of `grid` nearest to a physical point; refused when the point is outside the CT."""
    i, j, k = grid.TransformPhysicalPointToContinuousIndex([float(v) for v in point])
    size = grid.GetSize()
    if any(not (-0.5 <= v <= s - 0.5) for v, s in zip((i, j, k), size)):
        ras = (-point[0], -point[1], point[2])
        raise ContrastSegError(f"{what} at RAS ({ras[0]:.1f}, {ras[1]:.1f}, {ras[2]:.1f}) mm is outside the CT")
    return np.clip(np.round([k, j, i]).astype(int), 0, np.array(size[::-1]) - 1)


def _ellipse(shape, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    out = np.zeros(shape, dtype=bool)
    out[lo[0]: hi[0] + 1] = ellipse_in_box(shape[1:], lo[1], lo[2], hi[1], hi[2])
    return out


def hint_mask(grid: sitk.Image, organ: int, prompts: Prompts, current: np.ndarray | None,
              hint_value: float = 1.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(attention, voxels excluded by negative points, the positive points' balls) on the refined grid `grid`,
    (z, y, x) float32, bool and bool.

    Clicks, boxes and strokes are `hint_value` (a network trained for prompts takes them at
    `hints.PROMPT_VALUE`, its card's `refined.prompt_value`), and so is the current segment beside them.
    """
    shape = tuple(reversed(grid.GetSize()))
    spacing = grid.GetSpacing()
    radius = CLICK_FRACTION * TYPICAL_RADIUS_MM[organ]
    segment = current if current is not None and prompts.use_current else np.zeros(shape, dtype=bool)
    balls = np.zeros(shape, dtype=bool)  # the positive points' balls
    outside = ~segment if prompts.positive else None  # once, not per point: a full-size array
    for p in prompts.positive:  # the organ's whole typical radius, fitted to where the click lands
        balls |= fitted_ball(outside, _index(grid, p, "positive point"), POSITIVE_CLICK_FRACTION * TYPICAL_RADIUS_MM[organ],
                             spacing)
    hints = balls.copy()
    for a, b in prompts.boxes:
        ia, ib = _index(grid, a, "box corner"), _index(grid, b, "box corner")
        hints |= _ellipse(shape, np.minimum(ia, ib), np.maximum(ia, ib))
    if prompts.scribble is not None:
        stroke = sitk.GetArrayFromImage(resample_like(sitk.Cast(prompts.scribble != 0, sitk.sitkUInt8), grid)) > 0
        hints |= stroke_reach(stroke, spacing, CLICK_FRACTION * TYPICAL_RADIUS_MM[organ])
    if current is not None and prompts.use_current:
        hints |= current
    attention = hints.astype(np.float32) * np.float32(hint_value)
    excluded = np.zeros(shape, dtype=bool)
    for p in prompts.negative:
        excluded |= fitted_ball(segment, _index(grid, p, "negative point"), radius, spacing, beside=True)
    excluded = nearer_negative(grid, prompts.positive, prompts.negative, excluded, balls)
    attention[excluded] = 0.0
    return attention, excluded, balls


def stroke_reach(stroke: np.ndarray, spacing_xyz, reach_mm: float) -> np.ndarray:
    """A stroke's attention: every voxel within `reach_mm` of it in its own slice (at least STROKE_DILATION
    pixels). The refined network answers about where its attention is: a stroke of a few pixels dilated by 2
    brought back a few pixels of the organ (default v0.3, the small TS CT's right kidney from nothing: Dice 0.09); within
    a click's radius of the stroke it finds the organ around it, as a click does."""
    if not stroke.any():
        return stroke
    box = bounding_box(stroke, pad=0)
    pad = [0] + [int(np.ceil(reach_mm / spacing_xyz[i])) + STROKE_DILATION for i in (1, 0)]
    box = tuple(slice(max(0, b.start - p), min(n, b.stop + p)) for b, p, n in zip(box, pad, stroke.shape))
    dist = ndimage.distance_transform_edt(~stroke[box], sampling=(1e6, spacing_xyz[1], spacing_xyz[0]))
    out = np.zeros_like(stroke)
    out[box] = dist <= max(reach_mm, STROKE_DILATION * min(spacing_xyz[0], spacing_xyz[1]))
    return out


def _anchors(grid: sitk.Image, prompts: Prompts) -> np.ndarray:
    """The voxels (z, y, x) of `grid` the positive hints mark: each point, each box's inscribed ellipses, a
    stroke. A box says "the organ is in here", so all of it counts: with its centre only, a box drawn around a
    partly found organ (the centre inside the current segment) added nothing."""
    shape = tuple(reversed(grid.GetSize()))
    out = np.zeros(shape, dtype=bool)
    for p in prompts.positive:
        out[tuple(_index(grid, p, "positive point"))] = True
    for a, b in prompts.boxes:
        ia, ib = _index(grid, a, "box corner"), _index(grid, b, "box corner")
        out |= _ellipse(shape, np.minimum(ia, ib), np.maximum(ia, ib))
    if prompts.scribble is not None:
        out |= sitk.GetArrayFromImage(resample_like(sitk.Cast(prompts.scribble != 0, sitk.sitkUInt8), grid)) > 0
    return out


def refined_grid(image: sitk.Image, model: Model):
    """The CT on the refined network's grid (Prepared): made once per CT by the warm worker."""
    return prepare(image, inplane_spacing(image, model.card["refined"]["inplane_spacing"]), intensity_of(model.card))



def _point_anchors(grid: sitk.Image, prompts: Prompts) -> np.ndarray:
    """The voxels of the positive points alone (where the organ may take other organs' voxels)."""
    out = np.zeros(tuple(reversed(grid.GetSize())), dtype=bool)
    for p in prompts.positive:
        out[tuple(_index(grid, p, "positive point"))] = True
    return out


def _negatives_on_ct(labels: np.ndarray, organ: int, current: sitk.Image, prompts: Prompts, radius: float):
    """Negative points only: what they take from the organ on the CT's own grid (nothing is re-segmented);
    returns (box, the organ's mask in it afterwards), or (None, None) when the organ is absent."""
    organ_before = labels == organ
    clicks = [_index(current, p, "negative point") for p in prompts.negative]
    box = bounding_box(organ_before, pad=1)
    if box is None:
        return None, None
    reach = [int(np.ceil(radius / s)) + 1 for s in reversed(current.GetSpacing())]
    lo = [min([s.start] + [int(c[k]) - reach[k] for c in clicks]) for k, s in enumerate(box)]
    hi = [max([s.stop] + [int(c[k]) + reach[k] + 1 for c in clicks]) for k, s in enumerate(box)]
    box = tuple(slice(max(0, a), min(n, b)) for a, b, n in zip(lo, hi, labels.shape))
    organ_box = organ_before[box]
    local = [tuple(int(v) for v in c - np.array([s.start for s in box])) for c in clicks]
    removed, _ = negative_removal(organ_box, local, current.GetSpacing(), radius)
    return box, organ_box & ~removed


def refine_organ(image: sitk.Image, current: sitk.Image, model: Model, organ: int, prompts: Prompts,
                 device: torch.device, fine=None, check=None) -> tuple[sitk.Image, dict]:
    """`current` with `organ` re-segmented from `prompts`; returns (labels, what changed).

    The organ takes the part of its re-prediction that is new and connected to a positive hint, from whichever
    organ holds it (`prompt_merge`: that organ loses exactly those voxels, `taken` says how many); every voxel
    outside the change keeps its label. `fine` is the CT's refined grid if already made (`refined_grid`);
    `check()` is called between network calls (a cancel raises there).
    """
    if organ not in BY_ID:
        raise ContrastSegError(f"unknown organ id {organ}")
    model.check_covers([organ])  # as `segment` refuses it: an organ the model does not cover
    if model.refined is None:
        raise ContrastSegError(f"model '{model.card.get('name')}' has no refined network to refine with")
    if prompts.empty() and not (prompts.use_current and prompts.negative):
        raise ContrastSegError("give at least one positive point, a box or a stroke (or a negative point on the organ)")
    labels = sitk.GetArrayViewFromImage(current)
    radius = CLICK_FRACTION * TYPICAL_RADIUS_MM[organ]
    takeover = None
    if prompts.empty():  # negative points only: take away, on the CT's own grid; nothing is re-segmented
        box, organ_after = _negatives_on_ct(labels, organ, current, prompts, radius)
    else:
        fine = fine if fine is not None else refined_grid(image, model)
        spacing = fine.grid.GetSpacing()
        organ_now = prompt_merge.organ_on_grid(labels == organ, current, fine.grid)
        hints, excluded, positive_balls = hint_mask(fine.grid, organ, prompts, organ_now, model.card["refined"].get("prompt_value", 1.0))
        typical_px = typical_area_mm2(organ) / (spacing[0] * spacing[1])
        anchors = _anchors(fine.grid, prompts)  # once: a stroke is resampled onto the grid for it
        raw = refine_mask(model.refined.to(device).eval(), fine.array, hints, device, typical_px=typical_px,
                          check=check, anchors=anchors, kept=organ_now if prompts.use_current else None)
        # a positive hint adds the organ where it points: of the re-prediction, the part that is new (outside
        # the current segment) and connected to a hint. The rest is not taken: a click elsewhere must not
        # redraw parts of the organ it did not point at (IRCAD, one click in a missed part of the left kidney:
        # +54 000 right voxels and +8 600 wrong ones when the whole re-prediction was taken, +50 000 and +1 000)
        new = raw & ~organ_now
        if prompts.use_current:
            added = components_at(new & ~excluded, anchors)
            pred = added | (organ_now & ~excluded)
        else:  # the organ from the hints alone: all of the re-prediction connected to them
            pred = components_at(raw & ~excluded, anchors)
            added = pred & ~organ_now
        if prompts.negative:  # the lobes the negative points land in, found before their balls were cut
            clicks = [_index(fine.grid, p, "negative point") for p in prompts.negative]
            removed = np.zeros(organ_now.shape, dtype=bool)
            # a click on the segment the user sees judges that segment: a false piece there goes whole even when
            # the positive click's re-prediction grows up to it (IRCAD: the re-grown region joined a false right
            # kidney piece to the click's, and only the negative ball went); a click on new ground judges the
            # re-prediction connected to the positive hints
            on_current = [c for c in clicks if organ_now[tuple(int(v) for v in c)]]
            on_new = [c for c in clicks if not organ_now[tuple(int(v) for v in c)]]
            if on_current:
                removed |= negative_removal(organ_now, on_current, spacing, radius, protected=anchors)[0]
            if on_new:
                removed |= negative_removal(components_at(new, anchors) | organ_now, on_new, spacing, radius,
                                            protected=anchors)[0]
            # where a positive ball reaches, the nearer click decides, as for the hints (a positive click beside a
            # negative one brings back what the negative one took)
            removed = nearer_negative(fine.grid, prompts.positive, prompts.negative, removed, positive_balls)
            pred &= ~removed
            added &= pred
        # the organ takes other organs' voxels only in the part connected to a point: a box's ellipse or a stroke
        # marks a region, and the re-prediction inside it reaches into the neighbours (TS kidney from a box: Dice
        # 0.835 taking background only, 0.448 taking every organ's voxels it reached; from a stroke 0.548, 0.444)
        grabbing = components_at(added, _point_anchors(fine.grid, prompts)) if prompts.positive else added & False
        change = prompt_merge.change_map(pred, organ_now, grabbing, excluded)
        box = bounding_box(change > 0)
        box = prompt_merge.mapped_box(box, fine.grid, current) if box is not None else None
        organ_after = None
        if box is not None:
            moved = prompt_merge.onto_grid(change, fine.grid, current, box)
            organ_after = ((labels[box] == organ) | (moved == prompt_merge.ADDED) | (moved == prompt_merge.SEAM)) \
                & (moved != prompt_merge.REMOVED)
            takeover = moved == prompt_merge.ADDED
    out, change = prompt_merge.merge(labels, organ, box, organ_after, takeover)
    result = sitk.GetImageFromArray(out)
    result.CopyInformation(current)
    return result, {"organ": BY_ID[organ].key, **change}
