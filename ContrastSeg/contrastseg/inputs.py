"""What a model's networks take as input, as its card says: the intensity mode and the coarse network's channels.

The coarse network names organs; a left kidney and a spleen look alike in a 20 cm crop, and which side of the
body a structure lies on decides its name. Besides the image, the coarse network may take a "lateral" channel:
each voxel's signed distance from the body's midline (in units of 10 cm, patient right positive), so the
side is an input the network learns to use rather than a rule applied afterwards. The midline is the median,
over the axial slices, of the centre of the body's cross-section: arms, the table and a cropped field of
view shift it little, and a CT is stored with the patient near its centre anyway.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .preprocess import INTENSITY_MODES, from_hu, intensity_of

COARSE_INPUTS = ("image", "lateral")
LATERAL_UNIT_MM = 100.0
BODY_HU = -150.0  # fat is about -100 HU, air -1000


@dataclass(frozen=True)
class InputSpec:
    """How a model's inputs are made (defaults: a card written before inputs were recorded)."""

    intensity: str = "percentile"
    coarse_inputs: tuple[str, ...] = ("image",)
    scan_top: str = "as-is"  # or "repeat-below-diaphragm": how the coarse network is shown a scan's top (scan_ends.py)

    @classmethod
    def of(cls, card: dict) -> "InputSpec":
        coarse = card.get("coarse") or {}
        return cls(intensity_of(card), tuple(coarse.get("inputs", ("image",))), coarse.get("scan_top", "as-is"))

    def check(self) -> None:
        if self.intensity not in INTENSITY_MODES:
            raise ValueError(f"unknown intensity mode {self.intensity!r}; known: {INTENSITY_MODES}")
        if not self.coarse_inputs or self.coarse_inputs[0] != "image" or any(c not in COARSE_INPUTS for c in self.coarse_inputs):
            raise ValueError(f"coarse inputs {list(self.coarse_inputs)} must start with 'image' and use only {COARSE_INPUTS}")


def body_centre_x(body: np.ndarray) -> float:
    """The midline's x index: median over slices (with some body) of the body's mean x in that slice."""
    counts = body.sum(axis=(1, 2))
    keep = counts > 0.02 * body.shape[1] * body.shape[2]
    if not keep.any():
        return (body.shape[2] - 1) / 2.0
    xs = np.arange(body.shape[2], dtype=np.float64)
    per_slice = (body[keep].sum(axis=1) * xs).sum(axis=1) / counts[keep]
    return float(np.median(per_slice))


def lateral_channel(shape: tuple[int, int, int], centre_x: float, spacing_x: float) -> np.ndarray:
    """(z, y, x) float32: the signed distance of each voxel from the midline, in LATERAL_UNIT_MM."""
    row = (np.arange(shape[2], dtype=np.float32) - np.float32(centre_x)) * np.float32(spacing_x / LATERAL_UNIT_MM)
    return np.broadcast_to(row, shape).copy()


def body_of(image: np.ndarray, intensity: str) -> np.ndarray:
    """Voxels denser than air (the body, and the table, which lies symmetric under it) on the network scale."""
    return image > from_hu(np.float32(BODY_HU), intensity)


def coarse_input(image: np.ndarray, spacing_x: float, spec: InputSpec) -> np.ndarray:
    """The coarse network's input (C, z, y, x) for a normalised volume on its grid (`spacing_x` mm across x)."""
    channels = [image]
    if "lateral" in spec.coarse_inputs:
        channels.append(lateral_channel(image.shape, body_centre_x(body_of(image, spec.intensity)), spacing_x))
    return np.stack(channels).astype(np.float32, copy=False)
