"""The shapes of a user's hints (METHODS.md §10), shared by inference (`prompts`) and training (`patches`):
what a click, a box, a stroke and propagation look like in the refined network's attention channel.

The refined network is trained on these masks beside the coarse-like ones, so that at inference a click
gives it the same kind of attention it learnt from.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

# Typical adult in-plane radius of each organ's cross-section (mm), for the size of a click's disc.
TYPICAL_RADIUS_MM = {1: 35, 2: 25, 3: 25, 4: 15, 5: 8, 6: 60, 7: 35, 8: 11, 9: 11, 10: 7, 11: 12, 12: 8, 13: 8}
CLICK_FRACTION = 0.6  # a click's ball: this share of the organ's typical radius
# A positive click at inference: a ball of the organ's whole typical radius (fitted down to where it lands,
# prompts.hint_mask). The refined network re-predicts about where its attention is, so a 60 % ball in a missed
# kidney brought a piece of it per click (IRCAD right kidney, one click: 6 600 of 19 700 missed voxels at 1.5 mm
# with a 15 mm ball, 16 100 with 25 mm, and fewer wrong ones: 980 against 1 500; 35 mm: 10 000 wrong).
POSITIVE_CLICK_FRACTION = 1.0
STROKE_DILATION = 2  # pixels a stroke is dilated by
PROPAGATION_DILATION = 3  # pixels the neighbouring slice's prediction is dilated by, as the next slice's attention
# Propagation stops where the organ cannot be any more: once it has narrowed (a propagated slice under
# NARROWED of the widest hinted slice), at a slice more than LEAK_WIDENING times the narrowest before it (plus
# LEAK_SLACK of the organ's typical cross-section); and at any slice larger than MAX_AREA typical
# cross-sections. An organ narrows toward its ends; widening again past a narrowing means the prediction went
# through a thin connection into another structure (one click at the top of an IVC grew a blob of 20 typical
# cross-sections per slice down the volume). Growing from a small hint (a stroke) is no narrowing.
NARROWED = 0.5
LEAK_WIDENING = 2.0
LEAK_SLACK = 0.25
MAX_AREA = 4.0
PROMPT_KINDS = ("click", "box", "stroke", "previous", "partial")
# A hint's value in the attention channel of a network trained for prompts; a mask (a coarse organ, the
# propagated neighbour) is 1. The network can then tell "the organ is about here: find it" from "this is
# the organ: refine its border". Trained on clicks at 1, it grew every coarse mask too (IRCAD liver 0.939 ->
# 0.798 Dice on the coarse-attention path); with a half organ at 1 beside a click, still to 0.865. So
# everything a user gives, the current segment beside a click included, is a hint.
PROMPT_VALUE = 0.5


def typical_area_mm2(organ: int) -> float:
    """The organ's typical in-plane cross-section: a disc of its typical radius."""
    return float(np.pi * TYPICAL_RADIUS_MM[organ] ** 2)


def click_radius_px(organ: int, pixel_mm: float) -> float:
    return CLICK_FRACTION * TYPICAL_RADIUS_MM[organ] / pixel_mm


def disc(shape: tuple[int, int], cy: float, cx: float, radius: float) -> np.ndarray:
    ys, xs = np.ogrid[: shape[0], : shape[1]]
    return (ys - cy) ** 2 + (xs - cx) ** 2 <= radius ** 2


def ellipse_in_box(shape: tuple[int, int], y0: float, x0: float, y1: float, x1: float) -> np.ndarray:
    """The ellipse inscribed in the box [y0, y1] x [x0, x1] (pixel centres, inclusive)."""
    cy, cx = (y0 + y1) / 2, (x0 + x1) / 2
    ry, rx = max(0.5, (y1 - y0) / 2), max(0.5, (x1 - x0) / 2)
    ys, xs = np.ogrid[: shape[0], : shape[1]]
    return ((ys - cy) / ry) ** 2 + ((xs - cx) / rx) ** 2 <= 1


def prompt_attention(truth: np.ndarray, neighbour: np.ndarray, organ: int, pixel_mm: float,
                     rng: np.random.Generator) -> np.ndarray:
    """A prompt-like attention (2D float32) for one slice of an organ (`truth`, 2D bool, non-empty), as the
    prompted refinement makes them (METHODS §10), drawn at random; hints at PROMPT_VALUE, masks at 1:
    - click: 1-3 balls of the click radius (x0.7-1.3) around organ pixels, each cut at a random height
      within the ball (the slice may be a neighbour of the clicked one);
    - box: the ellipse inscribed in the organ's box on this slice, each side moved by up to 10 %;
    - stroke: a line between two organ pixels, dilated like a stroke (a rough scribble on part of the organ);
    - previous: the neighbouring slice's organ, dilated as propagation dilates the previous prediction
      (a click when that slice has no organ);
    - partial: the organ cut by a random line, one side kept as the current segment, a click in the other
      (the coarse stage found half a kidney; the user clicks in the missed half), both hints.
    """
    kind = PROMPT_KINDS[rng.integers(len(PROMPT_KINDS))]
    ys, xs = np.nonzero(truth)
    if kind == "previous" and neighbour.any():
        return ndimage.binary_dilation(neighbour, iterations=PROPAGATION_DILATION).astype(np.float32)
    if kind == "box":
        y0, y1, x0, x1 = ys.min(), ys.max(), xs.min(), xs.max()
        jitter = 0.1 * np.array([y1 - y0 + 1, y1 - y0 + 1, x1 - x0 + 1, x1 - x0 + 1]) * rng.uniform(-1, 1, 4)
        return PROMPT_VALUE * ellipse_in_box(truth.shape, y0 + jitter[0], x0 + jitter[2], y1 + jitter[1], x1 + jitter[3]).astype(np.float32)
    if kind == "stroke":
        a, b = rng.integers(len(ys), size=2)
        n = int(max(abs(ys[a] - ys[b]), abs(xs[a] - xs[b]))) + 1
        line = np.zeros(truth.shape, dtype=bool)
        line[np.round(np.linspace(ys[a], ys[b], n)).astype(int), np.round(np.linspace(xs[a], xs[b], n)).astype(int)] = True
        return PROMPT_VALUE * ndimage.binary_dilation(line, iterations=STROKE_DILATION).astype(np.float32)
    radius = click_radius_px(organ, pixel_mm)
    out = np.zeros(truth.shape, dtype=np.float32)
    if kind == "partial":
        angle = rng.uniform(0, np.pi)
        side = (ys - ys.mean()) * np.cos(angle) + (xs - xs.mean()) * np.sin(angle) > rng.normal(0, 0.2 * np.sqrt(len(ys)))
        if side.any() and (~side).any():
            out[ys[side], xs[side]] = PROMPT_VALUE
            ys, xs = ys[~side], xs[~side]  # the click goes to the missed part
    for _ in range(int(rng.integers(1, 4 if kind == "click" else 2))):
        k = rng.integers(len(ys))
        r = radius * rng.uniform(0.7, 1.3)
        ball = disc(truth.shape, ys[k], xs[k], r * np.sqrt(1 - rng.uniform(0, 0.8) ** 2))
        out[ball] = np.maximum(out[ball], PROMPT_VALUE)
    return out
