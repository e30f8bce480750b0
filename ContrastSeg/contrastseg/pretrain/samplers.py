"""Samplers that feed the patch strategies (METHODS §2): organ-attention patches with their labels.

Each volume is prepared once (`prepare_case`, cached on disk) and kept in memory; a batch is cut from those
arrays with no file access. A patch is centred on a random voxel of organ C's attention in its slice (the
organ drawn uniformly, then a CT that has it), cut with context for the rotation augmentation, and carries
its organ, phase and CT index for the supervised losses and the embedding plot.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..dataset import PreparedCase, prepare_case
from ..errors import ContrastSegError
from ..patches import OrganIndex, crop2d, perturb_mask
from .data import PretrainEntry

UNKNOWN_PHASE = "unknown"


def prepare_cases(items: list[PretrainEntry], dataset, inplane_spacing: float, intensity: str) -> list[PreparedCase]:
    """The refined stage's grid (in-plane `inplane_spacing` mm, slices kept) for every entry, from the cache,
    in the model's `intensity` mode."""
    cases = []
    for it in items:
        case = prepare_case(it.entry, f"inplane:{inplane_spacing}", intensity=intensity)
        case.phase = it.phase
        cases.append(case)
    return cases


@dataclass
class PatchBatch:
    """n patches with context: x (n, 2, S, S) = (image, attention of the organ), and their labels."""

    x: np.ndarray
    organ: np.ndarray  # BTCV id
    phase: np.ndarray  # index into PatchSampler.phases
    case: np.ndarray
    centre: np.ndarray  # (n, 3) z, y, x on the case's grid


class PatchSampler:
    """Random organ-attention patches from prepared cases whose `labels` are the attention (or ground truth).

    `perturb` dilates/erodes/shifts a ground-truth attention a few pixels, as fine-tuning does, so that a
    label map used as attention looks like a coarse model's output; leave it off for coarse attention.
    """

    def __init__(self, cases: list[PreparedCase], organs: list[int], size: int, context: int,
                 perturb: bool = False, min_voxels: int = 20):
        if any(c.labels is None for c in cases):
            raise ContrastSegError("organ-attention patches need attention or labels for every CT")
        self.cases, self.size, self.context, self.perturb = cases, size, context, perturb
        self.indexes = [OrganIndex.build(c.labels, organs, min_voxels) for c in cases]
        self.pairs = [(ci, o) for ci, idx in enumerate(self.indexes) for o in idx.coords]
        if not self.pairs:
            raise ContrastSegError(f"no attention of organs {organs} found in any CT of the dataset")
        self.organs = sorted({o for _, o in self.pairs})
        self.by_organ = {o: [ci for ci, oo in self.pairs if oo == o] for o in self.organs}
        self.phases = sorted({c.phase or UNKNOWN_PHASE for c in cases})

    def items_per_epoch(self) -> int:
        """One patch per organ per attention slice: the size of a pass over the data."""
        return sum(len(np.unique(idx.coords[o][:, 0])) for idx in self.indexes for o in idx.coords)

    def joint_label(self, organ: np.ndarray, phase: np.ndarray) -> np.ndarray:
        """(organ, phase) -> one class id, for SupCon's positives and the CE head."""
        return np.searchsorted(self.organs, organ) * len(self.phases) + phase

    @property
    def num_joint(self) -> int:
        return len(self.organs) * len(self.phases)

    def sample(self, rng: np.random.Generator, n: int) -> PatchBatch:
        xs = np.zeros((n, 2, self.context, self.context), dtype=np.float32)
        organ, phase, case = np.zeros(n, np.int64), np.zeros(n, np.int64), np.zeros(n, np.int64)
        centre = np.zeros((n, 3), np.int64)
        for i in range(n):
            o = self.organs[rng.integers(len(self.organs))]
            ci = self.by_organ[o][rng.integers(len(self.by_organ[o]))]
            coords = self.indexes[ci].coords[o]
            z, cy, cx = coords[rng.integers(len(coords))]
            c = self.cases[ci]
            att = crop2d(c.labels[z] == o, cy, cx, self.context, False)
            if self.perturb:
                att = perturb_mask(att, rng)
            xs[i, 0] = crop2d(c.image[z], cy, cx, self.context, 0.0)
            xs[i, 1] = att
            organ[i], phase[i], case[i], centre[i] = o, self.phases.index(c.phase or UNKNOWN_PHASE), ci, (z, cy, cx)
        return PatchBatch(xs, organ, phase, case, centre)


def mean_in_mask(x, clip: bool = True):
    """d_i of DCC-CL: the mean [0, 1] image (channel 0) inside each view's mask (channel 1); NaN if empty."""
    import torch

    img = x[:, 0].float().clamp(0, 1) if clip else x[:, 0].float()
    m = x[:, 1].float()
    area = m.sum((1, 2))
    d = (img * m).sum((1, 2)) / area.clamp_min(1)
    return torch.where(area > 0, d, torch.full_like(d, float("nan")))
