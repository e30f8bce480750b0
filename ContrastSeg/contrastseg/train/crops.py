"""Training crops for the coarse network: what makes a model trained on a few CTs name organs on any CT.

Each crop is cut from a whole volume through a random scale, rotation and elastic deformation (spatial.py),
then, in HU: the structures' contrast moved to a random phase (phases.py), another scanner's calibration,
noise and blur (augment.jitter_hu), sometimes a field of view that ends inside the crop (the scan stops at
the diaphragm, or a small reconstruction circle), and last the model's intensity mapping and a gamma. A
label-only subject has no CT: its crop is painted from its structures (phases.paint_ct), anew each time.
With `augment` off, a crop is cut straight and only mapped (the loop's evaluation and the embedding probe).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage

from ..augment import gamma_window, jitter_hu
from ..dataset import PreparedCase
from ..inputs import InputSpec, body_centre_x, body_of, LATERAL_UNIT_MM
from ..phases import paint_ct, simulate_phase
from ..preprocess import from_hu, to_hu
from ..spatial import IDENTITY, SpatialRanges, source_coordinates, voxel_coordinates, warp
from ..tissues import BODY, btcv_to_ts, ts_to_btcv

AIR_HU = -1024.0


@dataclass
class CropAugment:
    """Probabilities and ranges of each ingredient (the defaults are the shipped recipe's)."""

    spatial: SpatialRanges = field(default_factory=SpatialRanges)
    phase: float = 0.8  # a structure-wise contrast phase
    scanner: float = 1.0  # calibration, noise, blur, slice thickness (augment.jitter_hu)
    fov: float = 0.3  # the scan's field of view ends (along z, or a circle in-plane)
    fov_plane: str = "scan"  # where a z end is drawn: "scan", anywhere in the CT's height (it may miss the crop);
    # "crop", inside the crop's own height (it always shows). v0.3 trained with "scan" (docs/default-model.md)
    ends: str = "air"  # what lies beyond a z end of the scan (its own or a drawn one): "air", as a zero-padded
    # network sees it; or "edge", the end slice repeated, as infer.coarse_probabilities(pad_ends) shows it, so
    # the network never learns where a scan stops (the circle of a small reconstruction stays air either way)
    gamma: float = 0.3


NO_AUGMENT = CropAugment(spatial=IDENTITY, phase=0.0, scanner=0.0, fov=0.0, gamma=0.0)


@dataclass
class CropSource:
    """One training volume on the coarse grid: the image (None: painted from `structures`), the BTCV labels it
    annotates, its structures in TotalSegmentator ids where known, and its midline."""

    id: str
    image: np.ndarray | None
    labels: np.ndarray
    structures: np.ndarray | None
    voxel_mm: float
    centre_x: float
    fg: dict = field(default=None)  # organ id -> (n, 3) its voxels, for centring crops on organs
    _tensors: dict = field(default_factory=dict, repr=False)

    def __post_init__(self):
        if self.fg is None:
            coords = np.argwhere(self.labels > 0).astype(np.int32)
            ids = self.labels[tuple(coords.T)]
            self.fg = {int(o): coords[ids == o] for o in np.unique(ids)}

    def context_voxels(self, ids: list[int]) -> np.ndarray:
        """The voxels (n, 3) of the structures `ids` (TotalSegmentator ids, e.g. the heart), for crops centred on
        a neighbour the organs must be told apart from; empty where the source names none of them."""
        if self.structures is None or not ids:
            return np.zeros((0, 3), np.int32)
        return np.argwhere(np.isin(self.structures, ids)).astype(np.int32)

    def tensor(self, name: str) -> torch.Tensor:
        """The image ("image") or the label maps ("maps": labels, and structures where known) as (C, z, y, x)
        float32 tensors for grid_sample, made once."""
        if name not in self._tensors:
            arrays = [self.image] if name == "image" else [self.labels] + ([self.structures] if self.structures is not None else [])
            self._tensors[name] = torch.from_numpy(np.stack(arrays).astype(np.float32))
        return self._tensors[name]


def from_case(case: PreparedCase, spec: InputSpec) -> CropSource:
    """A prepared CT (normalised in `spec.intensity` on an isotropic grid) as a crop source."""
    return CropSource(case.id, case.image, case.labels, case.structures, float(case.spacing[0]),
                      body_centre_x(body_of(case.image, spec.intensity)))


def sample(src: CropSource, size: tuple[int, int, int], rng: np.random.Generator, spec: InputSpec,
           fg_fraction: float = 0.7, aug: CropAugment = NO_AUGMENT, around: np.ndarray | None = None,
           ) -> tuple[np.ndarray, np.ndarray]:
    """One crop: input (C, *size) as the coarse network takes it (spec.coarse_inputs), labels (*size) uint8.
    Centred near a voxel of `around` (n, 3) when given (a context structure's), else with probability
    `fg_fraction` near a voxel of an organ drawn uniformly from the volume's."""
    shape = np.array(src.labels.shape)
    if around is not None and len(around):
        centre = around[rng.integers(len(around))] + rng.integers(-8, 9, size=3)
    elif src.fg and rng.random() < fg_fraction:  # an organ drawn uniformly, then one of its voxels: the
        organ = list(src.fg)[rng.integers(len(src.fg))]  # adrenals are centred on as often as the liver
        centre = src.fg[organ][rng.integers(len(src.fg[organ]))] + rng.integers(-8, 9, size=3)
    else:
        centre = rng.integers(0, shape)
    grid = source_coordinates(tuple(size), centre, rng, aug.spatial, tuple(shape))
    if aug.ends == "edge":
        end = _draw_fov(grid, tuple(shape), rng, aug.fov_plane) if rng.random() < aug.fov else None
        grid = _hold_z(grid, shape[0], end)
    maps = warp(src.tensor("maps"), grid, nearest=True).numpy().astype(np.uint8)
    labels = maps[0]
    structures = maps[1] if src.structures is not None else None
    if src.image is None:
        hu = paint_ct(structures, rng, (src.voxel_mm,) * 3)
    else:
        hu = to_hu(warp(src.tensor("image"), grid)[0].numpy(), spec.intensity)
        if rng.random() < aug.phase:
            known = structures if structures is not None else btcv_to_ts(labels)
            hu, _ = simulate_phase(hu, known, rng, (src.voxel_mm,) * 3)
    if rng.random() < aug.scanner:
        hu = jitter_hu(hu, rng, src.voxel_mm)
    if aug.ends != "edge":
        end = _draw_fov(grid, tuple(shape), rng, aug.fov_plane) if rng.random() < aug.fov else None
    outside = _outside(end, grid, tuple(shape), src.centre_x, z_held=aug.ends == "edge")
    if outside is not None:
        hu[outside] = AIR_HU
        labels[outside] = 0
    x = from_hu(hu, spec.intensity)
    if rng.random() < aug.gamma:
        x = gamma_window(x, rng)
    channels = [x]
    if "lateral" in spec.coarse_inputs:
        x_src = voxel_coordinates(grid, tuple(shape), 2)
        channels.append((x_src - np.float32(src.centre_x)) * np.float32(src.voxel_mm / LATERAL_UNIT_MM))
    return np.stack(channels), labels


def _draw_fov(grid: torch.Tensor, shape: tuple[int, int, int], rng: np.random.Generator, plane: str = "scan") -> tuple:
    """A random end of the scan's field of view: ("z", cut, True) for a scan that stops above source slice
    `cut` (pelvis only), ("z", cut, False) below it (upper abdomen only), or, a third of the time, ("circle",
    radius) for a reconstruction circle around the body's centre."""
    if rng.random() < 2 / 3:
        z = voxel_coordinates(grid, shape, 0)
        lo, hi = (float(z.min()), float(z.max())) if plane == "crop" else (0.0, float(shape[0]))
        cut = lo + rng.uniform(0.15, 0.85) * (hi - lo)
        return ("z", cut, rng.random() < 0.5)
    return ("circle", rng.uniform(0.3, 0.55) * min(shape[1], shape[2]))


def _outside(end: tuple | None, grid: torch.Tensor, shape: tuple[int, int, int], centre_x: float,
             z_held: bool = False) -> np.ndarray | None:
    """The crop voxels beyond `end` (_draw_fov), which become air; None where nothing is (no end, or a z end
    already held by _hold_z)."""
    if end is None or (z_held and end[0] == "z"):
        return None
    if end[0] == "z":
        z = voxel_coordinates(grid, shape, 0)
        return z > end[1] if end[2] else z < end[1]
    y, x = voxel_coordinates(grid, shape, 1), voxel_coordinates(grid, shape, 2)
    return (y - shape[1] / 2) ** 2 + (x - centre_x) ** 2 > end[1] ** 2


def _hold_z(grid: torch.Tensor, depth: int, end: tuple | None) -> torch.Tensor:
    """`grid` with its source z held inside the scan and, for a z `end`, on its side of the cut: every crop
    voxel beyond an end samples the end slice (image and labels alike), as edge padding would show it."""
    lo, hi = -1.0, 1.0
    if end is not None and end[0] == "z":
        cut = end[1] / max(depth - 1, 1) * 2 - 1
        lo, hi = (lo, min(hi, cut)) if end[2] else (max(lo, cut), hi)
    held = grid.clone()
    held[..., 2] = held[..., 2].clamp(lo, max(lo, hi))
    return held


# --- label-only subjects (painted CTs) ----------------------------------------------------------------------

def painted_source(folder: Path, voxel_mm: float, cache_dir: Path) -> CropSource:
    """A TotalSegmentator `segmentations/` folder with no CT as a crop source: its structures on the coarse
    grid (canonical orientation), the body filled in around them (tissues.BODY), cached like a prepared CT."""
    from ..checksum import sha256

    files = sorted(p for p in Path(folder).iterdir() if p.name.endswith(".nii.gz"))
    key = hashlib.sha256("|".join([sha256(f) for f in files] + [repr(voxel_mm), "painted1"]).encode()).hexdigest()[:24]
    cached = cache_dir / f"{key}.npz"
    structures = None
    if cached.exists():
        try:
            with np.load(cached, allow_pickle=False) as z:
                structures = z["structures"]
        except (OSError, ValueError, KeyError):
            structures = None
    if structures is None:
        structures = _structures_on_grid(Path(folder), voxel_mm)
        cache_dir.mkdir(parents=True, exist_ok=True)
        tmp = cache_dir / f".{key}.{os.getpid()}.tmp.npz"
        np.savez_compressed(tmp, structures=structures)
        os.replace(tmp, cached)
    labels = ts_to_btcv(structures)
    return CropSource(f"painted:{Path(folder).parent.name}", None, labels, structures, voxel_mm,
                      body_centre_x(structures > 0))


def _structures_on_grid(folder: Path, voxel_mm: float) -> np.ndarray:
    import SimpleITK as sitk

    from ..preprocess import _grid_for, canonical_geometry
    from ..maskfiles import read_structure_folder

    ts = read_structure_folder(folder)
    size, spacing, origin, direction = canonical_geometry(ts)
    new_size, new_origin, new_spacing = _grid_for(size, spacing, origin, direction, (voxel_mm,) * 3)
    grid = sitk.Resample(ts, new_size, sitk.Transform(), sitk.sitkNearestNeighbor, new_origin, new_spacing,
                         direction.ravel().tolist(), 0, sitk.sitkUInt8)
    structures = sitk.GetArrayFromImage(grid)
    return add_body(structures, voxel_mm)


def add_body(structures: np.ndarray, voxel_mm: float) -> np.ndarray:
    """Label the body's unclaimed soft tissue BODY: per slice, the structures closed over 15 mm, holes filled,
    then grown 9 mm for the abdominal wall and subcutaneous fat no TotalSegmentator structure covers."""
    out = structures.copy()
    r_close, r_grow = max(1, round(15 / voxel_mm)), max(1, round(9 / voxel_mm))
    disk = lambda r: np.hypot(*np.mgrid[-r:r + 1, -r:r + 1]) <= r  # noqa: E731
    for z in range(len(out)):
        inside = structures[z] > 0
        if not inside.any():
            continue
        body = ndimage.binary_closing(np.pad(inside, r_close), disk(r_close))[r_close:-r_close, r_close:-r_close]
        body = ndimage.binary_dilation(ndimage.binary_fill_holes(body), disk(r_grow))
        out[z][body & ~inside] = BODY
    return out
