"""The pretraining strategies: what each reads, which network it trains, and its step (METHODS §2-§5).

| strategy      | paper           | trains                      | needs                                   |
| simclr        | SSCL (SimCLR)   | refined encoder, patches    | organ attention                         |
| supcon-mt     | AGCL Eq. 3      | refined encoder, patches    | organ attention + phase per CT          |
| dcc           | DCC-CL Eq. 4    | refined encoder, patches    | organ attention                         |
| ce            | AGCL's baseline | refined encoder, patches    | organ attention + phase per CT          |
| voxel-simsiam | voxel Siamese   | coarse 3D U-Net (with Dice) | ground-truth label maps                 |
| polycl-o      | PolyCL-O        | refined encoder, slices     | organ presence (labels or attention)    |
| polycl-s      | PolyCL-S        | refined encoder, slices     | nothing (>= 2 CTs)                      |
| separeg       | SepaReg         | refined encoder, regions    | nothing                                 |

"Organ attention" is a CT's label map or, with --attention MODEL, a coarse model's output (as at inference).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from ..models.refined import Encoder
from ..errors import ContrastSegError
from . import distributed as D
from . import losses
from .augment import context_size, two_views
from .context import Context, epochs_to_steps
from .data import Needs, PretrainEntry
from .heads import ClassifierNet, ContrastiveNet
from .samplers import PatchSampler, mean_in_mask, prepare_cases
from .settings import STRATEGY_NAMES, PretrainSettings


@dataclass
class Result:
    """What a strategy leaves: the network to export (`kind` "encoder" or "coarse") and the data for the plot."""

    kind: str
    network: torch.nn.Module
    sampler: PatchSampler | None = None  # organ patches to draw the embedding plot from (None: no plot)
    coarse_cases: list | None = None  # voxel-simsiam: prepared coarse-grid cases for its plot


@dataclass(frozen=True)
class Strategy:
    name: str
    summary: str
    needs: Needs
    run: Callable[[Context, list[PretrainEntry]], Result]
    stages: Callable[[PretrainSettings], dict[str, float]] = lambda settings: {"prepare": 0.1, "train": 0.8, "embedding": 0.1}


def build_encoder(ctx: Context) -> Encoder:
    """The refined encoder to pretrain: random, or (`init`, the loop) the given model's refined encoder, so
    pretraining refines what the base already knows instead of starting over."""
    s = ctx.settings
    encoder = Encoder(s.depth, tuple(s.widths), s.stem)
    if s.init:
        from ..models.files import load_model

        model = load_model(s.init, stages=("refined",))
        if model.refined is None:
            raise ContrastSegError(f"--init {s.init}: that model has no refined network to start from")
        state = model.refined.encoder.state_dict()
        mine = encoder.state_dict()
        if set(state) != set(mine) or any(state[k].shape != v.shape for k, v in mine.items()):
            raise ContrastSegError(f"--init {s.init}: its refined encoder differs from --depth/--widths/--stem; "
                                   "give that model's architecture")
        encoder.load_state_dict(state)
    return encoder


def patch_sampler(ctx: Context, items: list[PretrainEntry]) -> PatchSampler:
    """Organ-attention patches from the refined grid; ground-truth attention is perturbed like a coarse mask."""
    cases = prepare_cases(items, ctx.dataset, ctx.settings.inplane_spacing)
    perturb = all(it.attention == "labels" for it in items)
    return PatchSampler(cases, ctx.settings.organs, ctx.settings.patch, context_size(ctx.settings.patch), perturb)


def _split_gather(out: torch.Tensor, n: int) -> torch.Tensor:
    """Gather view-1 and view-2 rows over ranks separately, so row k's positive stays at k + N globally."""
    return torch.cat([D.gather_with_grad(out[:n]), D.gather_with_grad(out[n:])])


def _run_patches(ctx: Context, items: list[PretrainEntry]) -> Result:
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


def _registry() -> dict[str, Strategy]:
    from .polycl import run_polycl
    from .separeg import run_separeg, separeg_stages
    from .voxel import run_voxel

    att = Needs(attention=True)
    return {s.name: s for s in [
        Strategy("simclr", "SSCL: SimCLR NT-Xent on organ-attention patches", att, _run_patches),
        Strategy("supcon-mt", "AGCL: supervised contrastive loss on the joint (organ, phase) label", Needs(attention=True, phase=True), _run_patches),
        Strategy("dcc", "DCC-CL: NT-Xent with similarities weighted by 1 - |intensity gap| (Eq. 4)", att, _run_patches),
        Strategy("ce", "baseline: classify each patch's (organ, phase) label with cross-entropy", Needs(attention=True, phase=True), _run_patches),
        Strategy("voxel-simsiam", "voxel-level Siamese learning jointly with Dice, for the coarse 3D U-Net", Needs(labels=True), run_voxel),
        Strategy("polycl-o", "PolyCL-O: slice triplets by presence of the target organ", Needs(attention=True), run_polycl),
        Strategy("polycl-s", "PolyCL-S: slice triplets by scan (no labels)", Needs(optional_attention=True), run_polycl),
        Strategy("separeg", "SepaReg: SLIC regions, inter-organ SimSiam, K intra-organ models, distillation",
                 Needs(optional_attention=True), run_separeg, separeg_stages),
    ]}


STRATEGIES: dict[str, Strategy] = {}


def get(name: str) -> Strategy:
    if not STRATEGIES:
        STRATEGIES.update(_registry())
    if name not in STRATEGIES:
        from ..errors import ContrastSegError

        raise ContrastSegError(f"unknown strategy '{name}'; choose one of {', '.join(names())}")
    return STRATEGIES[name]


def names() -> tuple[str, ...]:
    return STRATEGY_NAMES
