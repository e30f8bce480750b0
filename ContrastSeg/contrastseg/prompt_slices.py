"""The refined network's answer to a prompt, slice by slice, computed only where the change can reach.

A click re-segments one organ, but of the re-prediction only the part connected to the positive hints is
ever used (`prompts.refine_organ`). So the network runs first on the slices around the hints and then on
more slices only while that part reaches the edge of what has been computed: a click inside an organ the model
found runs a handful of slices, not the whole organ (IRCAD right kidney: 23 network calls to one, the worker's
click 2.1 s to 0.7 s; docs/benchmarks.md). The result is the same wherever it is used: a 6-connected
component that leaves the computed slices must cross the first or last of them.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy import ndimage

from .clicks import bounding_box
from .hints import LEAK_SLACK, LEAK_WIDENING, MAX_AREA, NARROWED, PROPAGATION_DILATION
from .infer import _pad_to

MARGIN = 16  # pixels around the attention box, as at inference
REACH = 4  # slices computed each side of the hints first (the anchors' dilation reaches 2)
GROW = 8  # slices added at a time while the used part of the prediction reaches the edge


@torch.inference_mode()
def predict_slices(net, image: np.ndarray, att: np.ndarray, device: torch.device, box=None) -> np.ndarray:
    """The refined network on image slices (n, y, x) with their attention (n, y, x); foreground (n, y, x).

    `box` (y0, y1, x0, x1): the in-plane crop (default: around the attention); a slice's answer depends on its
    crop, so slices that must answer alike whichever others they are batched with share one."""
    out = np.zeros(image.shape, dtype=bool)
    if not att.any():
        return out
    y0, y1, x0, x1 = box if box is not None else crop_box(att)
    x = np.stack([image[:, y0:y1, x0:x1], att[:, y0:y1, x0:x1].astype(np.float32)], axis=1)
    xt, sizes = _pad_to(torch.from_numpy(x).to(device), net.divisor)
    logits = net(xt)[..., : sizes[0], : sizes[1]]
    out[:, y0:y1, x0:x1] = (logits[:, 1] > logits[:, 0]).cpu().numpy()
    return out


def crop_box(att: np.ndarray) -> tuple[int, int, int, int]:
    """(y0, y1, x0, x1): the in-plane box around the attention of slices (n, y, x), MARGIN pixels wider."""
    ys, xs = np.nonzero(att.any(axis=0))
    return (max(0, int(ys.min()) - MARGIN), min(att.shape[1], int(ys.max()) + 1 + MARGIN),
            max(0, int(xs.min()) - MARGIN), min(att.shape[2], int(xs.max()) + 1 + MARGIN))


def components_at(mask: np.ndarray, anchors: np.ndarray) -> np.ndarray:
    """The connected components of `mask` that hold an anchor voxel (or touch one: a dilated anchor), found
    within `mask`'s bounding box."""
    box = bounding_box(mask, pad=3)
    out = np.zeros(mask.shape, dtype=bool)
    if box is None:
        return out
    cc, n = ndimage.label(mask[box])
    near = ndimage.binary_dilation(anchors[box], iterations=2)
    keep = np.unique(cc[near & (cc > 0)])
    if len(keep):
        out[box] = np.isin(cc, keep)
    return out


class _Slices:
    """The prediction, filled in on demand: hinted slices by the network with their attention; slices beyond
    the hinted ones by propagation (the neighbour's prediction, dilated, as attention; the new slice's organ
    stays inside it), outward in order, until the organ ends or leaks."""

    def __init__(self, net, image, attention, device, batch, typical_px, check):
        self.net, self.image, self.attention, self.device = net, image, attention, device
        self.batch, self.typical_px, self.check = batch, typical_px, check
        self.pred = np.zeros(image.shape, dtype=bool)
        self.is_hinted = attention.any(axis=(1, 2))
        self.hinted = np.nonzero(self.is_hinted)[0]
        self.done = np.zeros(image.shape[0], dtype=bool)
        self.widest = None
        self.box = crop_box(attention[self.hinted]) if len(self.hinted) else None  # one crop for every hinted slice
        # per direction (+1 up, -1 down): the next slice to propagate into, the narrowest area so far, stopped
        self.front = {1: [int(self.hinted.max()) + 1, None, False], -1: [int(self.hinted.min()) - 1, None, False]} \
            if len(self.hinted) else {}

    def _tick(self):
        if self.check is not None:
            self.check()

    def compute(self, lo: int, hi: int) -> tuple[int, int]:
        """Fill slices lo..hi (inclusive) and return the range now known: what lies beyond the hinted slices
        needs the slices between, so the range reaches the hinted slices' ends (slices between hinted ones
        without attention, and those past where propagation stopped, are empty)."""
        if not len(self.hinted):
            return lo, hi
        top, bottom = int(self.hinted.max()), int(self.hinted.min())
        lo, hi = min(lo, top), max(hi, bottom)  # propagation starts at the hinted slices' ends
        todo = [int(z) for z in self.hinted if lo <= z <= hi and not self.done[z]]
        for start in range(0, len(todo), self.batch):
            self._tick()
            zs = todo[start:start + self.batch]
            self.pred[zs] = predict_slices(self.net, self.image[zs], self.attention[zs], self.device, self.box)
            self.done[zs] = True
        if self.widest is None and (hi > top or lo < bottom):
            # the leak guard compares with the widest hinted slice computed so far (all of them, when the
            # propagation is reached from a whole organ's hints)
            self.widest = int(self.pred[self.done & self.is_hinted].sum(axis=(1, 2)).max(initial=0))
        for step, end in ((1, hi), (-1, lo)):
            front = self.front[step]
            while not front[2] and (front[0] <= end if step == 1 else front[0] >= end) \
                    and 0 <= front[0] < self.image.shape[0]:
                self._propagate(front, step)
        return lo, hi

    def _propagate(self, front, step) -> None:
        z = front[0]
        self._tick()
        self.done[z] = True
        seed = ndimage.binary_dilation(self.pred[z - step], iterations=PROPAGATION_DILATION)
        if not seed.any():
            front[2] = True
            return
        # within the seed: an organ's outline moves a few pixels from slice to slice; unclamped, one slice of
        # another tissue let the prediction run on through the volume (a kidney grew 5x)
        self.pred[z] = predict_slices(self.net, self.image[z:z + 1], seed[None].astype(np.float32), self.device)[0] & seed
        area = int(self.pred[z].sum())
        if not area:
            front[2] = True
            return
        if self.typical_px is not None:
            narrowest = front[1]
            narrowed = narrowest is not None and narrowest < NARROWED * self.widest
            if (narrowed and area > LEAK_WIDENING * narrowest + LEAK_SLACK * self.typical_px) \
                    or area > MAX_AREA * self.typical_px:
                self.pred[z] = False  # not this organ any more: the propagation leaked
                front[2] = True
                return
            front[1] = area if narrowest is None else min(narrowest, area)
        front[0] = z + step


def refine_mask(net, image: np.ndarray, attention: np.ndarray, device: torch.device, batch: int = 16,
                typical_px: float | None = None, check=None, anchors: np.ndarray | None = None,
                kept: np.ndarray | None = None) -> np.ndarray:
    """The organ on the refined grid: the network on every slice with attention, then propagation to the others.

    With `anchors` (the positive hints' voxels), only the slices the used part can reach are computed: the
    part of the prediction outside `kept` (the current segment, which the organ keeps anyway) connected to
    the anchors; slices are added while it reaches the first or last computed one. Elsewhere the result is
    empty. (Propagating through the current segment's slices too, with the segment beside the neighbour's
    prediction as attention, was tried and left out: on IRCAD one click in the right kidney took 228 000 liver
    voxels, the prediction growing a few pixels per slice into the liver beside the segment.)

    `typical_px`: the organ's typical cross-section in pixels; with it, propagation also stops at a slice the
    organ cannot be (hints.LEAK_WIDENING, MAX_AREA), which is left out. `check()` is called between network
    calls (the worker's cancel raises there)."""
    n = image.shape[0]
    slices = _Slices(net, image, attention, device, batch, typical_px, check)
    if anchors is None or not anchors.any():
        slices.compute(0, n - 1)
        return slices.pred
    zs = np.nonzero(anchors.any(axis=(1, 2)))[0]
    lo, hi = max(0, int(zs.min()) - REACH), min(n - 1, int(zs.max()) + REACH)
    while True:
        lo, hi = slices.compute(lo, hi)
        used = slices.pred[lo:hi + 1] if kept is None else slices.pred[lo:hi + 1] & ~kept[lo:hi + 1]
        part = components_at(used, anchors[lo:hi + 1])
        grow_lo, grow_hi = lo > 0 and part[0].any(), hi < n - 1 and part[-1].any()
        if not (grow_lo or grow_hi):
            return slices.pred
        lo, hi = (max(0, lo - GROW) if grow_lo else lo), (min(n - 1, hi + GROW) if grow_hi else hi)
