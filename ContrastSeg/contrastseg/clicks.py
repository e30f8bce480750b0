"""The geometry of a click on a grid (METHODS.md §10), shared by both paths of `prompts.refine_organ`: the ball
a click stands for, fitted to where it lands, which click decides where a positive and a negative ball
overlap, and what a negative click removes (`negative_removal`: the lobe it lands in, or its ball).

Arrays are (z, y, x); spacings are ITK's (x, y, z) in mm. Nothing here runs a network.
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

MIN_BALL_MM = 4.0  # the smallest click ball (a click on a rim of a pixel or two)
# A negative click removes the lobe it lands in when it lies in the lobe's middle: at least LOBE_CENTRE times
# the depth of the lobe's deepest voxel. The lobe is the part of the organ that stays connected to the click
# through voxels at least LOBE_NECK times as deep as the click: a neck thinner than that separates lobes.
LOBE_CENTRE = 0.75
LOBE_NECK = 0.5


def ball(shape, centre: np.ndarray, radius_mm: float, spacing_xyz) -> np.ndarray:
    """A ball in mm around a (z, y, x) voxel, on a grid of that shape and spacing."""
    sx, sy, sz = spacing_xyz
    rz = int(np.floor(radius_mm / sz))
    out = np.zeros(shape, dtype=bool)
    ry, rx = int(np.floor(radius_mm / sy)), int(np.floor(radius_mm / sx))
    y0, y1 = max(0, centre[1] - ry), min(shape[1], centre[1] + ry + 1)
    x0, x1 = max(0, centre[2] - rx), min(shape[2], centre[2] + rx + 1)
    ys, xs = np.ogrid[y0:y1, x0:x1]
    for dz in range(-rz, rz + 1):
        z = centre[0] + dz
        if not 0 <= z < shape[0]:
            continue
        r = np.sqrt(max(0.0, radius_mm ** 2 - (dz * sz) ** 2))
        out[z, y0:y1, x0:x1] |= ((ys - centre[1]) * sy) ** 2 + ((xs - centre[2]) * sx) ** 2 <= r ** 2
    return out


def fitted_ball(inside: np.ndarray, centre: np.ndarray, radius_mm: float, spacing_xyz,
                beside: bool = False) -> np.ndarray:
    """A click's ball, sized to where it lands: twice the point's depth in `inside` (its distance to the nearest
    voxel outside), between MIN_BALL_MM and `radius_mm` (the organ's full click radius). For a negative point
    `inside` is the organ's segment; for a positive one, all but the segment. A click on a rim or a thin leak
    then takes about the rim, not a ball of the organ behind it (IRCAD spleen: one negative click on its largest
    wrong part took 12 300 spleen voxels and 6 200 wrong ones), and a click in a thin missed strip beside the
    segment adds about the strip (TS stomach: one positive click added 3 400 wrong voxels and 27 right ones).
    The user clicks in the middle of what is wrong, so twice its distance to the edge is about its width.

    A point outside `inside` gets the full radius, unless `beside` (negative points): then its distance to
    `inside` plus MIN_BALL_MM, so a negative click just off the segment takes a rim of it, not a full ball of
    the organ behind. Such clicks are common on the refined grid: a click on a thin rim of the segment on a
    0.57 mm CT lands outside the segment resampled to 1.5 mm. A point far from `inside`, or with none, keeps
    the full ball."""
    d = depth(inside, centre, radius_mm / 2, spacing_xyz)
    if d > 0:
        radius = float(np.clip(2 * d, MIN_BALL_MM, radius_mm))
    elif beside:
        radius = min(radius_mm, depth(inside, centre, radius_mm, spacing_xyz, outside=True) + MIN_BALL_MM)
    else:
        radius = radius_mm
    return ball(inside.shape, centre, radius, spacing_xyz)


def depth(mask: np.ndarray, centre: np.ndarray, reach_mm: float, spacing_xyz, outside: bool = False) -> float:
    """The distance (mm) from the voxel `centre` of `mask` to the nearest voxel outside it, up to about
    `reach_mm` (a window that far around the voxel, no distance map of the whole CT); 0 outside `mask`. The
    CT's own edge is not an edge of `mask`: the window is continued past it by its last slice (a click near
    the end of the scan got a small ball). `outside`: the same for the complement of `mask`, i.e. the distance
    from a voxel outside `mask` to `mask` (about `reach_mm` when `mask` is not within reach)."""
    if mask[tuple(centre)] == outside:
        return 0.0
    spacing_zyx = tuple(reversed(spacing_xyz))
    half = [int(np.ceil(reach_mm / s)) + 1 for s in spacing_zyx]
    lo = [max(0, int(c) - h) for c, h in zip(centre, half)]
    hi = [min(n, int(c) + h + 1) for c, h, n in zip(centre, half, mask.shape)]
    window = mask[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
    window = ~window if outside else window
    past_edge = [(h - (int(c) - a), h - (b - 1 - int(c))) for c, h, a, b in zip(centre, half, lo, hi)]
    # beyond the window counts as an edge (for `outside`: as `mask`, so the distance is at most about reach_mm)
    window = np.pad(np.pad(window, past_edge, mode="edge"), 1)
    dist = ndimage.distance_transform_edt(window, sampling=spacing_zyx)
    return float(dist[tuple(h + 1 for h in half)])


def nearer_negative(grid: sitk.Image, positive: list, negative: list, excluded: np.ndarray,
                    balls: np.ndarray) -> np.ndarray:
    """Of the negative balls, all but the voxels of a positive point's ball (`balls`) that are nearer (in mm) to
    a positive point than to every negative one: where a positive and a negative ball overlap, the nearer click
    decides. Before, the negative ball won outright, so a positive click placed beside a negative one (to bring
    back what it removed) added nothing. Where no positive ball reaches, the negative ball stays whole, however
    far its voxels are from the negative point."""
    contested = excluded & balls
    if not positive or not contested.any():
        return excluded
    zyx = np.nonzero(contested)
    ijk = np.stack(zyx[::-1], axis=1).astype(np.float64)
    direction = np.array(grid.GetDirection()).reshape(3, 3)
    world = np.array(grid.GetOrigin()) + (ijk * np.array(grid.GetSpacing())) @ direction.T

    def nearest(points) -> np.ndarray:
        return np.min([np.linalg.norm(world - np.asarray(p, dtype=np.float64), axis=1) for p in points], axis=0)

    out = excluded.copy()
    back = nearest(positive) < nearest(negative)
    out[tuple(a[back] for a in zyx)] = False
    return out


def bounding_box(mask: np.ndarray, pad: int = 0) -> tuple[slice, ...] | None:
    """The slices of `mask`'s bounding box, widened by `pad` voxels (clipped to the array); None if empty."""
    boxes = ndimage.find_objects(mask.view(np.uint8) if mask.dtype == bool else mask.astype(np.uint8))
    if not boxes or boxes[0] is None:
        return None
    return tuple(slice(max(0, s.start - pad), min(n, s.stop + pad)) for s, n in zip(boxes[0], mask.shape))


def clicked_lobe(organ: np.ndarray, centre, spacing_xyz) -> np.ndarray | None:
    """The lobe of `organ` a negative click at voxel `centre` takes away, or None when the click lies on the
    edge of something thicker (then its ball is what goes).

    The rule, on the organ's distance map D (mm to the nearest voxel outside it) within the connected
    component the click is in, with d = D at the click: a click in the middle of the whole component (d at least
    LOBE_CENTRE times its deepest voxel) takes all of it. Otherwise the click's *core* is what stays connected to it
    through voxels at least LOBE_NECK * d deep, and its *lobe* is the core with the thinner voxels nearest to it
    (rather than to another thick part). The lobe goes when the click is in its middle (d at least LOBE_CENTRE
    times the core's deepest voxel): the user clicked into the thick of something and said "not this".
    - a false blob, even the organ's largest piece, goes whole with one click in its middle (IRCAD: a right
      kidney label on the wrong region; a kidney's own shape has necks thinner than half its depth, so its lobe
      alone was three quarters of it);
    - a leak joined to the organ through a neck thinner than half the leak goes without the organ: the core
      stops at the neck (a leak of the TS example CT's left kidney);
    - a click on a rim or the edge of a good organ, or a leak joined broadly, is shallow beside the core it
      reaches: the ball only (METHODS §10), never the organ (the rule this replaces kept the largest piece
      always, so a false largest piece could never be removed).
    """
    centre = tuple(int(v) for v in centre)
    if not organ[centre]:
        return None
    box = bounding_box(organ, pad=1)
    crop = organ[box]
    local = tuple(c - s.start for c, s in zip(centre, box))
    cc, _ = ndimage.label(crop)
    component = cc == cc[local]
    inner = bounding_box(component, pad=1)
    component = component[inner]
    local = tuple(c - s.start for c, s in zip(local, inner))
    spacing_zyx = tuple(float(v) for v in reversed(spacing_xyz))
    dist = ndimage.distance_transform_edt(component, sampling=spacing_zyx)
    d = float(dist[local])
    out = np.zeros(organ.shape, dtype=bool)
    sub = tuple(slice(a.start + b.start, a.start + b.stop) for a, b in zip(box, inner))
    if d >= LOBE_CENTRE * float(dist.max()):  # in the middle of the whole piece: all of it is wrong
        out[sub] = component
        return out
    thick = dist >= LOBE_NECK * d
    cores, _ = ndimage.label(thick)
    core = cores == cores[local]
    if d < LOBE_CENTRE * float(dist[core].max()):
        return None
    others = thick & ~core
    if others.any():  # each thinner voxel goes with the thick part nearest to it
        lobe = component & (ndimage.distance_transform_edt(~core, sampling=spacing_zyx)
                            <= ndimage.distance_transform_edt(~others, sampling=spacing_zyx))
    else:
        lobe = component
    out[sub] = lobe
    return out


def negative_removal(organ: np.ndarray, clicks: list, spacing_xyz, radius_mm: float,
                     protected: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(what the negative clicks at voxels `clicks` take from `organ`, their balls): each click's lobe
    (`clicked_lobe`), or its fitted ball where the click is on an edge or its lobe holds a `protected` voxel (a
    positive hint: the user said the organ is there)."""
    removed = np.zeros(organ.shape, dtype=bool)
    balls = np.zeros(organ.shape, dtype=bool)
    for c in clicks:
        b = fitted_ball(organ, np.asarray(c), radius_mm, spacing_xyz, beside=True)
        balls |= b
        lobe = clicked_lobe(organ, c, spacing_xyz)
        if lobe is not None and not (protected is not None and (lobe & protected).any()):
            removed |= lobe
        else:
            removed |= b & organ
    return removed, balls
