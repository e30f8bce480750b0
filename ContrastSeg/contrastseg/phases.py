"""Contrast phases and CTs painted from labels: what lets a model trained on a few CTs meet another hospital's.

An organ's HU depends on when the scan was taken after the contrast injection, and each organ differently
(DCC-CL's premise). A model trained on non-contrast CTs has never seen a kidney at 200 HU and calls it
background, or bone. `simulate_phase` moves each structure's mean HU, inside that structure's label only, to
a value drawn for a random phase: native, late arterial (kidney cortex bright and medulla dark, aorta very
bright, spleen mottled), portal venous (kidney, liver and portal vein enhanced) or delayed; sometimes with
positive oral contrast in the bowel and stomach. Texture is kept: a structure is shifted, not repainted.

`paint_ct` makes a whole CT from a label map of every structure (TotalSegmentator's, plus the body), so the
label-only subjects' shapes and whole-body context can train the networks (SynthSeg-style; a share of the
paintings get random, unrealistic intensities, so shape must carry the name).

The ranges are typical mean HU from the radiology literature (e.g. Bae, Radiology 2010; kidney cortex and
medulla in the corticomedullary phase; adrenal, pancreas and spleen enhancement curves), widened a little.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from .tissues import TISSUE_NAMES, TISSUE_OF

PHASES: dict[str, dict[str, tuple[float, float]]] = {
    "native": {"liver": (45, 70), "spleen": (38, 58), "kidney": (25, 42), "pancreas": (30, 50), "adrenal": (10, 35),
               "esophagus": (30, 50), "artery": (30, 50), "vein": (30, 50), "portal": (30, 50), "heart": (30, 50),
               "gallbladder": (0, 25), "muscle": (40, 60)},
    "arterial": {"liver": (55, 90), "spleen": (80, 150), "kidney": (150, 300), "pancreas": (90, 150),
                 "adrenal": (50, 110), "esophagus": (40, 80), "artery": (220, 450), "vein": (40, 150),
                 "portal": (90, 180), "heart": (150, 350), "gallbladder": (0, 25), "muscle": (45, 65)},
    "portal": {"liver": (90, 140), "spleen": (100, 150), "kidney": (140, 240), "pancreas": (80, 130),
               "adrenal": (50, 100), "esophagus": (50, 90), "artery": (130, 220), "vein": (110, 190),
               "portal": (140, 230), "heart": (120, 220), "gallbladder": (0, 25), "muscle": (50, 70)},
    "delayed": {"liver": (70, 105), "spleen": (70, 110), "kidney": (100, 180), "pancreas": (60, 100),
                "adrenal": (40, 80), "esophagus": (40, 70), "artery": (90, 150), "vein": (90, 150),
                "portal": (90, 150), "heart": (90, 150), "gallbladder": (0, 25), "muscle": (45, 65)},
}
MEDULLA = {"arterial": (40, 110), "portal": (-50, 0)}  # arterial: the medulla's HU; portal: offset from the cortex
CORTEX_MM = (4.0, 8.0)
ORAL_CONTRAST = (150, 500)

# What a painting gives the tissues the phase tables do not cover (mean HU ranges).
PAINT: dict[str, tuple[float, float]] = {
    "outside": (-1024, -950), "body": (-120, -70), "lung": (-900, -750), "airway": (-1000, -950),
    "bone": (150, 350), "cartilage": (80, 200), "bowel": (0, 40), "stomach": (0, 40), "bladder": (0, 25),
    "prostate": (30, 50), "cyst": (0, 20), "cord": (20, 40), "brain": (25, 40), "thyroid": (80, 120),
}
_INDEX = {name: k for k, name in enumerate(TISSUE_NAMES)}


def _uniform(rng: np.random.Generator, lo_hi) -> float:
    return float(rng.uniform(*lo_hi))


def smooth_noise(shape: tuple[int, ...], rng: np.random.Generator, cells: int = 6) -> np.ndarray:
    """A smooth random field in about [-1, 1]: normal noise on a coarse grid, upsampled linearly."""
    import torch
    import torch.nn.functional as F

    coarse = torch.from_numpy(rng.normal(size=tuple(max(2, min(cells, s)) for s in shape)).astype(np.float32))
    mode = {1: "linear", 2: "bilinear", 3: "trilinear"}[len(shape)]
    field = F.interpolate(coarse[None, None], size=tuple(shape), mode=mode, align_corners=True)[0, 0].numpy()
    return np.clip(field / 1.5, -1, 1)


def _masks(structures: np.ndarray) -> tuple[np.ndarray, list[str]]:
    tissue = TISSUE_OF[structures]
    present = [TISSUE_NAMES[k] for k in np.unique(tissue)]
    return tissue, present


def _kidney_targets(hu: np.ndarray, kidney: np.ndarray, phase: str, spacing, rng) -> np.ndarray:
    """Target HU per kidney voxel: cortex (within a few mm of the kidney's edge) and medulla differ early on."""
    cortex_hu = _uniform(rng, PHASES[phase]["kidney"])
    target = np.full(int(kidney.sum()), cortex_hu, np.float32)
    if phase in MEDULLA:
        box = ndimage.find_objects(kidney.astype(np.uint8))[0]
        box = tuple(slice(max(0, b.start - 1), b.stop + 1) for b in box)
        depth = ndimage.distance_transform_edt(np.pad(kidney[box], 1), sampling=spacing)
        depth = depth[tuple(slice(1, -1) for _ in box)][kidney[box]]
        medulla = depth > _uniform(rng, CORTEX_MM)
        target[medulla] = (_uniform(rng, MEDULLA[phase]) if phase == "arterial"
                           else cortex_hu + _uniform(rng, MEDULLA[phase]))
    return target


def simulate_phase(hu: np.ndarray, structures: np.ndarray, rng: np.random.Generator, spacing,
                   phase: str | None = None, oral: float = 0.2) -> tuple[np.ndarray, str]:
    """`hu` (float, any dims) with each structure's HU moved to a random `phase`'s; `structures` holds
    TotalSegmentator ids on the same grid. Voxels outside the shifted structures keep their HU exactly (the
    shift is blurred by less than a voxel inside them, so edges keep their partial volume)."""
    phase = phase or str(rng.choice(list(PHASES)))
    tissue, present = _masks(structures)
    field = np.zeros(hu.shape, np.float32)
    shifted = np.zeros(hu.shape, bool)
    for name in present:
        mask = tissue == _INDEX[name]
        if name == "kidney":
            field[mask] = _kidney_targets(hu, mask, phase, spacing, rng) - np.median(hu[mask])
        elif name in PHASES[phase]:
            field[mask] = _uniform(rng, PHASES[phase][name]) - np.median(hu[mask])
            if name == "spleen" and phase == "arterial":  # the arterial spleen's mottled enhancement
                field[mask] += _uniform(rng, (20, 60)) * smooth_noise(hu.shape, rng, 8)[mask]
        elif name in ("bowel", "stomach") and rng.random() < oral:
            inner = ndimage.binary_erosion(mask)
            fill = inner & (smooth_noise(hu.shape, rng, 8) > rng.uniform(-0.6, 0.3))
            field[fill] = _uniform(rng, ORAL_CONTRAST) - hu[fill]
        else:
            continue
        shifted |= mask
    if shifted.any():  # blurred inside the shifted structures' box only: the rest is 0 anyway
        box = tuple(slice(max(0, b.start - 2), b.stop + 2) for b in ndimage.find_objects(shifted.astype(np.uint8))[0])
        field[box] = ndimage.gaussian_filter(field[box], 0.6) * shifted[box]
    return hu + field, phase


def paint_ct(structures: np.ndarray, rng: np.random.Generator, spacing, random_share: float = 0.2) -> np.ndarray:
    """A CT (HU, float32) painted from a label map of every structure (TotalSegmentator ids, tissues.BODY for
    the rest of the body, 0 outside it): each tissue a mean HU (a random phase's for organs and vessels, or
    with probability `random_share` any HU in [-200, 400]), texture noise, cortical bone, partial volume."""
    tissue, present = _masks(structures)
    phase = str(rng.choice(list(PHASES)))
    wild = rng.random() < random_share
    hu = np.zeros(structures.shape, np.float32)
    for name in present:
        mask = tissue == _INDEX[name]
        if wild and name not in ("outside", "lung"):
            hu[mask] = rng.uniform(-200, 400)
        elif name in PHASES[phase]:
            hu[mask] = _kidney_targets(hu, mask, phase, spacing, rng) if name == "kidney" else _uniform(rng, PHASES[phase][name])
        else:
            hu[mask] = _uniform(rng, PAINT.get(name, (20, 60)))
    if not wild:
        body = tissue == _INDEX["body"]  # fat, with muscle and bowel wall where a smooth field says so
        wall = body & (smooth_noise(hu.shape, rng, 10) > rng.uniform(0.1, 0.5))
        hu[wall] = rng.uniform(20, 60)
        bone = tissue == _INDEX["bone"]
        rim = bone & ~ndimage.binary_erosion(bone)
        hu[rim] = rng.uniform(500, 1000)
        for name in ("bowel", "stomach"):  # gas pockets
            mask = tissue == _INDEX[name]
            if mask.any():
                hu[mask & (smooth_noise(hu.shape, rng, 10) > rng.uniform(0.3, 0.8))] = -950
    hu += rng.normal(0, rng.uniform(5, 25), size=hu.shape).astype(np.float32)
    return ndimage.gaussian_filter(hu, rng.uniform(0.4, 1.0))
