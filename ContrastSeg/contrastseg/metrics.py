"""Per-organ Dice, HD95 and ASSD (mm) in 3D on the original grid (METHODS.md §6), and truth readers.

An organ absent from both truth and prediction is skipped, not scored 1. When only one side has it, Dice is
0 and the distances are undefined (reported as null).
"""

from __future__ import annotations

import tempfile
import zipfile
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch
from monai.metrics import DiceMetric, HausdorffDistanceMetric, SurfaceDistanceMetric

from .errors import ContrastSegError
from .io import read_image, read_labels
from .organs import BY_ID, IRCAD_TO_BTCV


def _crop_pair(a: np.ndarray, b: np.ndarray, margin: int = 2) -> tuple[np.ndarray, np.ndarray]:
    both = a | b
    idx = np.argwhere(both)
    lo = np.maximum(idx.min(0) - margin, 0)
    hi = np.minimum(idx.max(0) + margin + 1, both.shape)
    sl = tuple(slice(int(lo_), int(hi_)) for lo_, hi_ in zip(lo, hi))
    return a[sl], b[sl]


def organ_metrics(pred: np.ndarray, truth: np.ndarray, spacing_zyx: tuple[float, float, float]) -> dict | None:
    """Dice, HD95 (mm) and ASSD (mm) of two binary (z, y, x) masks; None if both are empty."""
    if not pred.any() and not truth.any():
        return None
    if not pred.any() or not truth.any():
        return {"dice": 0.0, "hd95": None, "assd": None, "pred_voxels": int(pred.sum()), "truth_voxels": int(truth.sum())}
    p, t = _crop_pair(pred.astype(bool), truth.astype(bool))
    pt = torch.from_numpy(p)[None, None].float()
    tt = torch.from_numpy(t)[None, None].float()
    dice = DiceMetric(include_background=True, reduction="none")(pt, tt)
    hd95 = HausdorffDistanceMetric(include_background=True, percentile=95, reduction="none")(pt, tt, spacing=list(spacing_zyx))
    assd = SurfaceDistanceMetric(include_background=True, symmetric=True, reduction="none")(pt, tt, spacing=list(spacing_zyx))
    return {"dice": round(float(dice), 4), "hd95": round(float(hd95), 2), "assd": round(float(assd), 2),
            "pred_voxels": int(pred.sum()), "truth_voxels": int(truth.sum())}


def misnamed(pred: np.ndarray, truth: np.ndarray, organ: int, reference: dict[int, np.ndarray] | None = None) -> np.ndarray:
    """The organ's true voxels (`truth`) that `pred` names as another organ (background left out): a confusion
    of identity (a kidney called spleen), which Dice alone does not tell from a missed boundary.

    Where the reference masks (`reference`, {id: mask}) overlap, a voxel has two true names and either is
    right: IRCAD's liver mask holds the hepatic veins its venous-system mask also holds, and a hepatic vein
    called liver there is not a confusion. Such voxels are left out."""
    named = pred[truth]
    wrong = np.isin(named, [o for o in BY_ID if o != organ])
    for o, m in (reference or {}).items():
        if o != organ:
            wrong &= ~((named == o) & m[truth])
    out = np.zeros(truth.shape, dtype=bool)
    out[truth] = wrong
    return out


def named_as_others(pred: np.ndarray, truth: np.ndarray, organ: int,
                    reference: dict[int, np.ndarray] | None = None) -> dict[str, float]:
    """Shares of an organ's true voxels that `pred` names as each *other* organ (`misnamed`), by that organ."""
    n = int(truth.sum())
    if not n:
        return {}
    names, counts = np.unique(pred[misnamed(pred, truth, organ, reference)], return_counts=True)
    return {BY_ID[int(o)].key: round(float(c) / n, 4) for o, c in zip(names, counts)}


def errors_by_height(pred: np.ndarray, truth: dict[int, np.ndarray], organ: int, heights_mm: np.ndarray,
                     slab_mm: float = 16.0) -> list[dict]:
    """Where along the body's axis an organ's errors lie: per slab of `slab_mm`, counted from the top of its
    true mask (height 0; the slabs above it hold only false voxels), the voxels called the organ that are not
    (false), the organ's voxels missed (missed), those of them named as another organ (`misnamed`), and the
    organ's Dice were that slab alone right (`dice_if_right`) or that slab and every one above it
    (`dice_if_right_from_top`).

    `heights_mm` is each slice's height (mm, larger = toward the head: `slice_heights`). `dice_if_right` says
    how much of the lost Dice the slab holds: a failure confined to one region (the liver's dome) shows as a
    few slabs' gain, not as a uniform boundary error."""
    t, p = truth[organ], pred == organ
    if not t.any():
        return []
    heights = np.asarray(heights_mm, dtype=float)
    rel = heights - heights[t.any((1, 2))].max()
    slab = np.ceil(rel / slab_mm).astype(int) - 1  # slab k: heights (k, k + 1] x slab_mm; -1 holds the top
    false, missed = (p & ~t).sum((1, 2)), (t & ~p).sum((1, 2))
    hit, size = (p & t).sum((1, 2)), p.sum((1, 2)) + t.sum((1, 2))
    others = misnamed(pred, t, organ, truth).sum((1, 2))
    total_hit, total_size = hit.sum(), size.sum()

    def dice_if_right(s: np.ndarray) -> float:  # the slices `s` right: their hits = their true voxels
        right_hit = total_hit - hit[s].sum() + t[s].sum()
        return round(float(2 * right_hit / (total_size - size[s].sum() + 2 * t[s].sum())), 4)

    rows = []
    for k in sorted(set(slab[(false + missed) > 0]) | set(slab[t.any((1, 2))]), reverse=True):
        s = slab == k
        rows.append({"from_mm": float(k * slab_mm), "to_mm": float((k + 1) * slab_mm), "false": int(false[s].sum()),
                     "missed": int(missed[s].sum()), "named_as_other": int(others[s].sum()),
                     "dice_if_right": dice_if_right(s), "dice_if_right_from_top": dice_if_right(slab >= k)})
    return rows


def slice_heights(image: sitk.Image) -> np.ndarray:
    """Each slice's height along the body's axis in mm (patient superior positive, LPS z), in array order;
    an axial stack only (a slice tilted from axial has no one height)."""
    if abs(image.GetDirection()[8]) < 0.9:
        raise ContrastSegError("errors by height need axial slices; this image's slices are not axial")
    n = image.GetSize()[2]
    return np.array([image.TransformIndexToPhysicalPoint((0, 0, k))[2] for k in range(n)], dtype=float)


def evaluate(pred: np.ndarray, truth: dict[int, np.ndarray], spacing_zyx, organs: list[int] | None = None) -> dict:
    """Per-organ metrics of a label array against binary truth masks; `organs` limits which are scored.

    Besides Dice and the distances, each organ reports `as_other`: the share of its true voxels labelled as
    another organ that the reference does not also name there, and `named_as`, which organs those are
    (named_as_others)."""
    result = {}
    for oid in sorted(organs or truth):
        t = truth.get(oid, np.zeros_like(pred, dtype=bool))
        m = organ_metrics(pred == oid, t, spacing_zyx)
        if m is not None:
            others = named_as_others(pred, t, oid, truth)
            result[BY_ID[oid].key] = dict(id=oid, **m, as_other=round(sum(others.values()), 4), named_as=others)
    dices = [m["dice"] for m in result.values()]
    return {"organs": result, "mean_dice": round(float(np.mean(dices)), 4) if dices else None}


def _read_ircad_masks(root: Path, reference: sitk.Image) -> dict[int, np.ndarray]:
    masks = {}
    for name, oid in IRCAD_TO_BTCV.items():
        folder = root / name
        if not folder.exists():
            continue
        img = read_image(folder)
        if img.GetSize() != reference.GetSize():
            raise ContrastSegError(f"IRCAD mask {name} has size {img.GetSize()}, the prediction {reference.GetSize()}")
        masks[oid] = sitk.GetArrayFromImage(img) > 0
    return masks


def load_truth(path: Path, reference: sitk.Image, id_map: dict[int, int] | None = None) -> dict[int, np.ndarray]:
    """Truth as {BTCV id: binary mask on `reference`'s grid}.

    Accepts a label map (BTCV ids, or others through `id_map`), or 3D-IRCADb masks (MASKS_DICOM.zip or its
    extracted folder: one DICOM series per structure, mapped by organs.IRCAD_TO_BTCV).
    """
    path = Path(path)
    if path.suffix == ".zip":
        with tempfile.TemporaryDirectory() as tmp:
            with zipfile.ZipFile(path) as z:
                z.extractall(tmp)
            inner = next((p for p in Path(tmp).rglob("*") if p.is_dir() and (p / "liver").exists()), Path(tmp))
            return _read_ircad_masks(inner, reference)
    if path.is_dir() and any((path / name).is_dir() for name in IRCAD_TO_BTCV):
        return _read_ircad_masks(path, reference)
    labels = sitk.GetArrayFromImage(read_labels(path, reference, id_map))
    return {oid: labels == oid for oid in BY_ID if np.any(labels == oid)}
