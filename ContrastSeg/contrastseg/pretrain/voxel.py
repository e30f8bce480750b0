"""Voxel-level Siamese learning for the coarse 3D U-Net, jointly with Dice (METHODS §3).

For the three deepest decoder-side maps (bottleneck first), a projection MLP and a prediction MLP (hidden
width 64) map sampled voxel features to z and p = pred(z). Labels: the ground truth, nearest-neighbour
downsampled to each map. Up to 1700 voxels per layer, of which up to 1000 are false negatives (truth c,
prediction not c): the voxels the segmentation gets wrong are the ones worth pulling toward their class.
Loss = Dice + lambda * L_feat with L_feat = -sum_c w_c sum_layers mean cos(p, sg z) over all same-class pairs
(losses.voxel_pair_cosine_from_sums). Per-class sums are added over ranks before the loss, so with DDP
every p meets every same-class z of the global batch.

The result is a CoarseUNet state dict (coarse.safetensors) for `contrastseg train-coarse --init`.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from monai.losses import DiceLoss
from torch import nn

from ..dataset import prepare_case
from ..errors import ContrastSegError
from ..models.coarse import CoarseUNet
from ..organs import NUM_CLASSES
from ..train.crops import CropAugment, from_case, sample
from . import distributed as D
from . import losses
from .context import Context, epochs_to_steps
from .data import PretrainEntry
from .heads import mlp


def select_voxels(truth: torch.Tensor, pred: torch.Tensor, max_voxels: int, max_false_negatives: int,
                  generator: torch.Generator) -> torch.Tensor:
    """Indices of up to `max_voxels` voxels: up to `max_false_negatives` with truth != prediction, then random others."""
    wrong = torch.nonzero(truth != pred).flatten()
    right = torch.nonzero(truth == pred).flatten()
    wrong = wrong[torch.randperm(len(wrong), generator=generator, device="cpu").to(wrong.device)[:max_false_negatives]]
    rest = max(0, max_voxels - len(wrong))
    right = right[torch.randperm(len(right), generator=generator, device="cpu").to(right.device)[:rest]]
    return torch.cat([wrong, right])


class VoxelSiamese(nn.Module):
    """CoarseUNet + per-layer projection and prediction MLPs; forward returns logits and (p, z, labels) per layer."""

    def __init__(self, net: CoarseUNet, layers: int = 3, hidden: int = 64, max_voxels: int = 1700, max_false_negatives: int = 1000):
        super().__init__()
        self.net = net
        chans = [net.channels[-1]] + list(reversed(net.channels[:-1]))
        self.layers = min(layers, len(chans))
        self.proj = nn.ModuleList([mlp([c, hidden, hidden]) for c in chans[:self.layers]])
        self.pred = nn.ModuleList([mlp([hidden, hidden, hidden]) for _ in range(self.layers)])
        self.max_voxels, self.max_fn = max_voxels, max_false_negatives

    def forward(self, x: torch.Tensor, y: torch.Tensor, seed: int):
        logits, feats = self.net(x, return_features=True)
        pred = logits.detach().argmax(1, keepdim=True).float()
        g = torch.Generator().manual_seed(seed)
        out = []
        for l in range(self.layers):
            f = feats[l]
            yl = F.interpolate(y.float(), size=f.shape[2:], mode="nearest").long().flatten()
            pl = F.interpolate(pred, size=f.shape[2:], mode="nearest").long().flatten()
            idx = select_voxels(yl, pl, self.max_voxels, self.max_fn, g)
            vec = f.permute(0, 2, 3, 4, 1).reshape(-1, f.shape[1])[idx].float()
            z = self.proj[l](vec)
            out.append((self.pred[l](z), z, yl[idx]))
        return logits, out


def run_voxel(ctx: Context, items: list[PretrainEntry]):
    from .common import Result

    s = ctx.settings
    ctx.stage("prepare", "preparing labelled volumes on the coarse grid")
    spec = s.input_spec()
    cases = [prepare_case(it.entry, tuple(s.coarse_spacing), intensity=spec.intensity) for it in items]
    allowed = np.zeros(256, dtype=np.uint8)
    allowed[s.organs] = s.organs
    for c, it in zip(cases, items):
        c.labels = allowed[c.labels]
        c.phase = it.phase
    sources = [from_case(c, spec) for c in cases]
    aug = CropAugment()
    net = CoarseUNet(NUM_CLASSES, tuple(s.coarse_channels), in_channels=len(spec.coarse_inputs))
    if s.init:  # the loop: continue from the base model's coarse network
        from ..models.files import load_model

        base = load_model(s.init, stages=("coarse",)).coarse
        if any(a.shape != b.shape for a, b in zip(base.state_dict().values(), net.state_dict().values())) or \
                set(base.state_dict()) != set(net.state_dict()):
            raise ContrastSegError(f"--init {s.init}: its coarse network differs from --channels; give that model's channels")
        net.load_state_dict(base.state_dict())
    model = VoxelSiamese(net, s.voxel_layers, max_voxels=s.max_voxels, max_false_negatives=s.max_false_negatives)
    dice = DiceLoss(to_onehot_y=True, softmax=True, include_background=False, batch=True)
    crop = tuple(s.coarse_crop)
    b = s.coarse_batch

    def step(forward, rng: np.random.Generator) -> torch.Tensor:
        picks = rng.integers(len(cases), size=b)
        pairs = [sample(sources[i], crop, rng, spec, 0.7, aug) for i in picks]
        x = ctx.tensor(np.stack([p[0] for p in pairs]))
        y = torch.from_numpy(np.stack([p[1] for p in pairs])[:, None].astype(np.int64)).to(ctx.device)
        with ctx.autocast():
            logits, layers = forward(x, y, int(rng.integers(2 ** 31)))
        feat = 0.0
        for p, z, lab in layers:
            sp, sz, cnt = losses.class_sums(p, z, lab, NUM_CLASSES)
            feat = feat + losses.voxel_pair_cosine_from_sums(D.all_reduce_with_grad(sp), D.all_reduce(sz), D.all_reduce(cnt))
        return dice(logits.float(), y) + s.voxel_weight * feat

    tiles = sum(math.prod(c.image.shape) / math.prod(crop) for c in cases)
    epoch = epochs_to_steps(int(math.ceil(tiles)), b, ctx.dist.world, s.epoch_steps)
    ctx.log(f"voxel-simsiam: {len(cases)} labelled CTs, crop {crop}, lambda {s.voxel_weight}, {model.layers} layers, "
            f"{epoch} steps per epoch")
    ctx.train_phase("", model, step, s.capped(s.steps), b, epoch)
    return Result("coarse", net, None, cases)
