"""SepaReg's regions (METHODS §5.1-5.2): SLIC superpixels inside the body, each one a small image of its own.

Per CT, on the refined grid (the cached, percentile-normalised volume): `slices_per_case` evenly spaced
slices through the body; per slice a body mask (above the -175 HU clipping floor, largest component, holes
filled) and SLIC (n_segments 32, compactness 15, sigma 0.8) restricted to it, so every superpixel lies in
the body. SLIC runs on the image scaled to [0, 255], the intensity range the compactness values in the
literature (10-20) are meant for; on [0, 1] they would give an almost regular grid.

A region = image x its superpixel mask, cut to its bounding box, zero-padded to a square and resized to
`size`. Encoder input: channel 0 that image, channel 1 the region's mask (its "attention").
The SLIC maps are cached; the bank is cut from memory at every step.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from skimage.segmentation import slic

from ..dataset import PreparedCase
from ..errors import ContrastSegError
from .data import PretrainEntry, _file_key, cache_dir_of
from .slices import body_mask

MIN_REGION_PIXELS = 16


@dataclass
class RegionBank:
    images: list[np.ndarray]  # per case: (k, H, W) selected slices of the normalised image
    segments: list[np.ndarray]  # per case: (k, H, W) int32 SLIC labels, 0 outside the body
    bodies: list[np.ndarray]  # per case: (k, H, W) bool
    regions: np.ndarray  # (R, 7): case, slice (into the case's selection), label, y0, y1, x0, x1

    def __len__(self) -> int:
        return len(self.regions)

    def crops(self, idx: np.ndarray, size: int) -> np.ndarray:
        """(len(idx), 2, size, size): image x mask and mask of each region, squared and resized."""
        out = np.zeros((len(idx), 2, size, size), dtype=np.float32)
        for i, r in enumerate(self.regions[idx]):
            ci, k, lab, y0, y1, x0, x1 = (int(v) for v in r)
            mask = self.segments[ci][k, y0:y1, x0:x1] == lab
            img = self.images[ci][k, y0:y1, x0:x1] * mask
            side = max(y1 - y0, x1 - x0)
            sq = np.zeros((2, side, side), dtype=np.float32)
            oy, ox = (side - (y1 - y0)) // 2, (side - (x1 - x0)) // 2
            sq[0, oy:oy + y1 - y0, ox:ox + x1 - x0] = img
            sq[1, oy:oy + y1 - y0, ox:ox + x1 - x0] = mask
            t = torch.from_numpy(sq)[None]
            out[i, 0] = F.interpolate(t[:, :1], size=(size, size), mode="bilinear", align_corners=False)[0, 0].numpy()
            out[i, 1] = F.interpolate(t[:, 1:], size=(size, size), mode="nearest")[0, 0].numpy()
            out[i, 0] *= out[i, 1]  # resizing blurs the edge: keep image and mask channels on one outline
        return out


def slic_slices(case: PreparedCase, k: int, n_segments: int, compactness: float, sigma: float):
    """(slice indices, body masks, SLIC label maps) for `k` evenly spaced body slices of one case."""
    vol = case.image
    floor = float(vol.min())
    bodies_all = [body_mask(s, floor + 0.05) for s in vol]
    with_body = [z for z, b in enumerate(bodies_all) if b.sum() > 100]
    if not with_body:
        return np.zeros(0, np.int64), np.zeros((0,) + vol.shape[1:], bool), np.zeros((0,) + vol.shape[1:], np.int32)
    zs = np.unique(np.linspace(with_body[0], with_body[-1], min(k, len(with_body))).round().astype(np.int64))
    bodies = np.stack([bodies_all[z] for z in zs])
    segs = np.stack([slic(np.clip(vol[z], 0, 1) * 255.0, n_segments=n_segments, compactness=compactness, sigma=sigma,
                          mask=bodies[i], channel_axis=None, start_label=1).astype(np.int32) for i, z in enumerate(zs)])
    return zs, bodies, segs


def build_bank(items: list[PretrainEntry], cases: list[PreparedCase], dataset, slices_per_case: int = 16,
               n_segments: int = 32, compactness: float = 15.0, sigma: float = 0.8, max_regions: int | None = None) -> RegionBank:
    """SLIC every case (cached) and list its regions; `max_regions` keeps a fixed random subset (seed 0)."""
    images, segments, bodies, regions = [], [], [], []
    for ci, (item, case) in enumerate(zip(items, cases)):
        key = hashlib.sha256(f"{_file_key(item.entry.image)}|{case.image.shape}|{slices_per_case}|{n_segments}|"
                             f"{compactness}|{sigma}|v1".encode()).hexdigest()[:16]
        path = cache_dir_of(dataset) / "slic" / f"{item.id}-{key}.npz"
        if path.exists():
            with np.load(path, allow_pickle=False) as z:
                zs, body, seg = z["zs"], z["body"], z["seg"]
        else:
            zs, body, seg = slic_slices(case, slices_per_case, n_segments, compactness, sigma)
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.parent / f".{path.stem}.tmp.npz"
            np.savez(tmp, zs=zs, body=body, seg=seg)
            tmp.replace(path)
        images.append(case.image[zs])
        segments.append(seg)
        bodies.append(body)
        for k in range(len(zs)):
            for lab in np.unique(seg[k]):
                if lab == 0:
                    continue
                ys, xs = np.nonzero(seg[k] == lab)
                if len(ys) >= MIN_REGION_PIXELS:
                    regions.append((ci, k, lab, ys.min(), ys.max() + 1, xs.min(), xs.max() + 1))
    if len(regions) < 2:
        raise ContrastSegError("SepaReg found fewer than 2 superpixel regions inside the body in the dataset's CTs")
    regions = np.asarray(regions, dtype=np.int64)
    if max_regions and len(regions) > max_regions:
        keep = np.sort(np.random.default_rng(0).choice(len(regions), max_regions, replace=False))
        regions = regions[keep]
    return RegionBank(images, segments, bodies, regions)


def kmeans(x: torch.Tensor, k: int, iterations: int = 50, seed: int = 0) -> torch.Tensor:
    """Cluster ids of the rows of `x` (cosine k-means, k-means++ start, fixed seed: the same on every rank)."""
    x = F.normalize(x.float(), dim=1)
    k = min(k, len(x))
    g = torch.Generator().manual_seed(seed)
    centres = [x[torch.randint(len(x), (1,), generator=g)].squeeze(0)]
    for _ in range(1, k):
        d = (1 - x @ torch.stack(centres).T).clamp_min(0).min(1).values
        probs = d / d.sum() if d.sum() > 0 else torch.full_like(d, 1 / len(d))
        centres.append(x[torch.multinomial(probs, 1, generator=g)].squeeze(0))
    c = torch.stack(centres)
    for _ in range(iterations):
        assign = (x @ c.T).argmax(1)
        new = torch.stack([F.normalize(x[assign == j].mean(0), dim=0) if (assign == j).any() else c[j] for j in range(k)])
        if torch.allclose(new, c):
            break
        c = new
    return (x @ c.T).argmax(1)
