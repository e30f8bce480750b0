"""What every pretraining strategy's runner shares: its result, the refined encoder it starts from, and the
organ-attention patches of the patch strategies. The runners import this; strategies.py imports the runners."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import ContrastSegError
from ..models.refined import Encoder
from .augment import context_size
from .context import Context
from .data import PretrainEntry
from .samplers import PatchSampler, prepare_cases


@dataclass
class Result:
    """What a strategy leaves: the network to export (`kind` "encoder" or "coarse") and the data for the plot."""

    kind: str
    network: torch.nn.Module
    sampler: PatchSampler | None = None  # organ patches to draw the embedding plot from (None: no plot)
    coarse_cases: list | None = None  # voxel-simsiam: prepared coarse-grid cases for its plot


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
    cases = prepare_cases(items, ctx.dataset, ctx.settings.inplane_spacing, ctx.settings.input_spec().intensity)
    perturb = all(it.attention == "labels" for it in items)
    return PatchSampler(cases, ctx.settings.organs, ctx.settings.patch, context_size(ctx.settings.patch), perturb)


