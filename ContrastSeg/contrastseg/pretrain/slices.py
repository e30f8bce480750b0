"""Whole axial slices and PolyCL's triplets (METHODS §4).

Slices are windowed (centre 40, width 400: (HU + 160) / 400 in [0, 1]), padded to a square with air so the
anatomy keeps its aspect, and resized to `size`; only the central `fraction` of each scan's slices is kept.
This needs Hounsfield units, not the percentile-normalised refined grid, so the stack is prepared from the
CT itself, once, and cached beside the other preprocessed arrays.

Encoder input: channel 0 the windowed slice, channel 1 the slice's body mask. The refined network's second
channel is an organ attention mask ("where to look"); a body mask is the closest whole-slice analogue, and
it keeps the channel's filters trained rather than left at their random start (see docs/pretraining.md).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk
import torch
import torch.nn.functional as F
from scipy import ndimage

from ..errors import ContrastSegError
from ..io import read_image, read_labels
from ..organs import NUM_CLASSES
from ..preprocess import to_canonical
from .data import PretrainEntry, _file_key, cache_dir_of

WINDOW_LOW, WINDOW_WIDTH = -160.0, 400.0  # centre 40, width 400


def body_mask(slice2d: np.ndarray, threshold: float) -> np.ndarray:
    """The body in one slice: above `threshold`, largest connected component, holes (lungs, bowel gas) filled."""
    fg = slice2d > threshold
    lab, n = ndimage.label(fg)
    if n == 0:
        return fg
    sizes = ndimage.sum(fg, lab, index=np.arange(1, n + 1))
    return ndimage.binary_fill_holes(lab == (1 + int(np.argmax(sizes))))


@dataclass
class SliceStack:
    """One scan's central slices: windowed images, body masks and per-slice organ presence (z, 14)."""

    id: str
    slices: np.ndarray  # (n, S, S) float32 in [0, 1]
    body: np.ndarray  # (n, S, S) bool
    present: np.ndarray  # (n, NUM_CLASSES) bool; all False when the scan has neither labels nor attention
    has_labels: bool


def _square_resize(arr: np.ndarray, size: int, fill: float, mode: str) -> np.ndarray:
    n, h, w = arr.shape
    side = max(h, w)
    sq = np.full((n, side, side), fill, dtype=np.float32)
    sq[:, (side - h) // 2:(side - h) // 2 + h, (side - w) // 2:(side - w) // 2 + w] = arr
    t = torch.from_numpy(sq)[:, None]
    if mode == "nearest":
        return F.interpolate(t, size=(size, size), mode="nearest")[:, 0].numpy()
    return F.interpolate(t, size=(size, size), mode="bilinear", align_corners=False, antialias=side > size)[:, 0].numpy()


def prepare_slices(item: PretrainEntry, dataset, size: int = 256, fraction: float = 0.3) -> SliceStack:
    """The PolyCL view of one CT (cached as .npz in the dataset's cache)."""
    e = item.entry
    labels_path = e.labels if item.attention != "none" else None
    key = hashlib.sha256(f"{_file_key(*(p for p in (e.image, labels_path) if p is not None))}|{size}|{fraction}|v1".encode()).hexdigest()[:16]
    path = cache_dir_of(dataset) / "slices" / f"{e.id}-{key}.npz"
    if path.exists():
        with np.load(path, allow_pickle=False) as z:
            return SliceStack(e.id, z["slices"].astype(np.float32), z["body"], z["present"], bool(z["has_labels"]))
    image = read_image(e.image)
    hu = sitk.GetArrayFromImage(to_canonical(image)).astype(np.float32)
    n = hu.shape[0]
    keep = max(1, int(round(n * fraction)))
    z0 = max(0, (n - keep) // 2)
    hu = hu[z0:z0 + keep]
    body = np.stack([body_mask(s, -500.0) for s in hu]).astype(np.float32)
    windowed = np.clip((hu - WINDOW_LOW) / WINDOW_WIDTH, 0.0, 1.0)
    present = np.zeros((keep, NUM_CLASSES), dtype=bool)
    if labels_path is not None:
        lab = sitk.GetArrayFromImage(to_canonical(read_labels(labels_path, image, e.id_map)))[z0:z0 + keep]
        for c in range(1, NUM_CLASSES):
            present[:, c] = (lab == c).sum((1, 2)) >= 20
    stack = SliceStack(e.id, _square_resize(windowed, size, 0.0, "bilinear"),
                       _square_resize(body, size, 0.0, "nearest") > 0.5, present, labels_path is not None)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.stem}.tmp.npz"
    np.savez(tmp, slices=stack.slices.astype(np.float16), body=stack.body, present=present, has_labels=stack.has_labels)
    tmp.replace(path)
    return stack


def balanced_organ(stacks: list[SliceStack], prefer: int = 6) -> int | None:
    """The organ present in the most even share of the central slices (at least 2 with and 2 without it),
    the liver on a tie; None if no organ splits them.

    PolyCL-O's label is "the slice holds the target organ". The paper's liver works on LiTS, whose scans run
    far beyond the liver; the central 30% of an abdominal CT is often all liver (IRCAD patient 1: 39 of 39),
    which leaves no negatives, so the organ is chosen from the data unless the user names one.
    """
    present = np.concatenate([s.present for s in stacks])
    n, counts = len(present), present.sum(0)
    usable = [c for c in range(1, present.shape[1]) if 2 <= counts[c] <= n - 2]
    if not usable:
        return None
    return min(usable, key=lambda c: (abs(counts[c] / n - 0.5), c != prefer, c))


class TripletSampler:
    """PolyCL triplets (anchor, positive, negative), drawn afresh every step (the authors fixed them offline).

    mode "scan" (PolyCL-S, no labels): positive = another slice of the anchor's scan, negative = a slice of
    another scan. mode "organ" (PolyCL-O): label = the slice contains `target_organ`; positive = another
    slice with the same label (any scan), negative = a slice with the other label.
    """

    def __init__(self, stacks: list[SliceStack], mode: str, target_organ: int | None = None):
        self.stacks, self.mode = stacks, mode
        self.items = np.array([(si, k) for si, s in enumerate(stacks) for k in range(len(s.slices))], dtype=np.int64)
        if mode == "scan":
            if len(stacks) < 2 or sum(len(s.slices) >= 2 for s in stacks) == 0:
                raise ContrastSegError("polycl-s needs at least 2 CTs, one of them with at least 2 central slices "
                                       "(positives come from the same scan, negatives from another)")
            self.anchor_pool = np.array([i for i, (si, _) in enumerate(self.items) if len(stacks[si].slices) >= 2])
        elif mode == "organ":
            self.label = np.array([stacks[si].present[k, target_organ] for si, k in self.items])
            counts = [int((self.label == v).sum()) for v in (False, True)]
            if min(counts) == 0:
                raise ContrastSegError(
                    f"polycl-o needs central slices with and without organ {target_organ}: {counts[1]} of "
                    f"{len(self.items)} slices contain it; use --slice-fraction or --target-organ to change that")
            self.anchor_pool = np.array([i for i in range(len(self.items)) if counts[int(self.label[i])] >= 2])
        else:
            raise ValueError("mode must be 'scan' or 'organ'")

    def triplets(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """(n, 3) indices into `self.items`: anchor, positive, negative."""
        out = np.zeros((n, 3), dtype=np.int64)
        scan = self.items[:, 0]
        for i in range(n):
            a = int(self.anchor_pool[rng.integers(len(self.anchor_pool))])
            if self.mode == "scan":
                pos = np.flatnonzero((scan == scan[a]) & (np.arange(len(self.items)) != a))
                neg = np.flatnonzero(scan != scan[a])
            else:
                pos = np.flatnonzero((self.label == self.label[a]) & (np.arange(len(self.items)) != a))
                neg = np.flatnonzero(self.label != self.label[a])
            out[i] = a, pos[rng.integers(len(pos))], neg[rng.integers(len(neg))]
        return out

    def inputs(self, idx: np.ndarray) -> np.ndarray:
        """(len(idx), 2, S, S): windowed slice and body mask of each item."""
        return np.stack([np.stack([self.stacks[si].slices[k], self.stacks[si].body[k].astype(np.float32)])
                         for si, k in self.items[idx]])
