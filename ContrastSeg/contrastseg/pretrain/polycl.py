"""PolyCL (METHODS §4): slice-level contrastive learning with one positive and one negative per anchor.

PolyCL-S needs no labels (same scan = positive); PolyCL-O labels each slice by whether it holds the target
organ (from its label map or the coarse model's attention). The loss's temperature is 1/batch size (the
global batch when distributed). The three slices of each triplet go through the network in one batch.
"""

from __future__ import annotations

import numpy as np
import torch

from ..errors import ContrastSegError
from ..organs import BY_ID
from . import losses
from .context import Context, epochs_to_steps
from .data import PretrainEntry
from .slices import TripletSampler, balanced_organ, prepare_slices
from .common import Result, build_encoder, patch_sampler
from .heads import ContrastiveNet


def run_polycl(ctx: Context, items: list[PretrainEntry]) -> Result:
    s = ctx.settings
    mode = "organ" if s.strategy == "polycl-o" else "scan"
    ctx.stage("prepare", "windowing and resizing slices")
    stacks = [prepare_slices(it, ctx.dataset, s.slice_size, s.slice_fraction) for it in items]
    target = s.target_organ
    if mode == "organ" and target is None:
        target = balanced_organ(stacks)
        if target is None:
            raise ContrastSegError("polycl-o needs an organ present in some central slices and absent in others; no "
                                   f"organ splits the {sum(len(st.slices) for st in stacks)} central slices of these CTs: "
                                   "raise --slice-fraction, or add CTs with labels or attention")
        share = float(np.mean(np.concatenate([st.present[:, target] for st in stacks])))
        ctx.log(f"polycl-o: target organ {BY_ID[target].key} (in {100 * share:.0f}% of the central slices; "
                "--target-organ names another)")
    sampler = TripletSampler(stacks, mode, target)
    encoder = build_encoder(ctx)
    net = ContrastiveNet(encoder)
    n = s.batch
    tau = s.temperature if s.temperature is not None else 1.0 / (n * ctx.dist.world)

    def step(forward, rng: np.random.Generator) -> torch.Tensor:
        t = sampler.triplets(rng, n)
        x = ctx.tensor(sampler.inputs(t.T.reshape(-1)))  # anchors, then positives, then negatives
        with ctx.autocast():
            z = forward(x).float()
        return losses.polycl(z[:n], z[n:2 * n], z[2 * n:], tau)

    epoch = epochs_to_steps(len(sampler.items), n, ctx.dist.world, s.epoch_steps)
    ctx.log(f"{s.strategy}: {len(stacks)} CTs, {len(sampler.items)} central slices at {s.slice_size} px, "
            f"{epoch} steps per epoch, tau = {tau:.4g}")
    ctx.train_phase("", net, step, s.capped(s.steps), 3 * n, epoch)
    probe = patch_sampler(ctx, items) if all(it.attention != "none" for it in items) else None
    return Result("encoder", encoder, probe)
