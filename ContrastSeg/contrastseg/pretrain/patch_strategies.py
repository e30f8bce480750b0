"""The patch strategies (METHODS §2): SimCLR, AGCL's SupCon on (organ, phase), DCC-CL and the CE baseline, all
on organ-attention patches of the refined grid, training the refined encoder."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import ContrastSegError
from . import distributed as D
from . import losses
from .augment import two_views
from .common import Result, build_encoder, patch_sampler
from .context import Context, epochs_to_steps
from .data import PretrainEntry
from .heads import ClassifierNet, ContrastiveNet
from .samplers import mean_in_mask


def _split_gather(out: torch.Tensor, n: int) -> torch.Tensor:
    """Gather view-1 and view-2 rows over ranks separately, so row k's positive stays at k + N globally."""
    return torch.cat([D.gather_with_grad(out[:n]), D.gather_with_grad(out[n:])])


def run_patches(ctx: Context, items: list[PretrainEntry]) -> Result:
    s, name = ctx.settings, ctx.settings.strategy
    ctx.stage("prepare", "preparing volumes and organ attention")
    sampler = patch_sampler(ctx, items)
    if name in ("supcon-mt", "ce") and sampler.phases == ["unknown"]:
        raise ContrastSegError(f"strategy {name} needs phase labels, but no CT has one")
    encoder = build_encoder(ctx)
    net = ClassifierNet(encoder, sampler.num_joint) if name == "ce" else ContrastiveNet(encoder)
    tau, n = s.tau(), s.batch

    def step(forward, rng: np.random.Generator) -> torch.Tensor:
        b = sampler.sample(rng, n)
        v1, v2 = two_views(ctx.tensor(b.x), rng, s.patch)
        views = torch.cat([v1, v2])
        with ctx.autocast():
            out = forward(views)
        joint = torch.from_numpy(sampler.joint_label(b.organ, b.phase)).to(ctx.device)
        if name == "ce":
            return F.cross_entropy(out.float(), torch.cat([joint, joint]))
        z = _split_gather(out.float(), n)
        if name == "simclr":
            return losses.nt_xent(z, tau)
        if name == "supcon-mt":
            labels = torch.cat([D.gather(joint), D.gather(joint)])
            phase = torch.from_numpy(b.phase).to(ctx.device)
            groups = torch.cat([D.gather(phase), D.gather(phase)])
            return losses.supcon(z, labels, tau, groups, s.partial_weight)
        d = mean_in_mask(views)
        return losses.dcc(z, torch.cat([D.gather(d[:n]), D.gather(d[n:])]), tau)

    epoch = epochs_to_steps(sampler.items_per_epoch(), n, ctx.dist.world, s.epoch_steps)
    ctx.log(f"{name}: {len(sampler.cases)} CTs, organs {sampler.organs}, phases {sampler.phases}, "
            f"{sampler.items_per_epoch()} organ slices = {epoch} steps per epoch, T = {tau}")
    ctx.train_phase("", net, step, s.capped(s.steps), 2 * n, epoch)
    return Result("encoder", encoder, sampler)
