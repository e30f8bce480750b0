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

from .common import Result
from .context import Context
from .data import Needs, PretrainEntry
from .patch_strategies import run_patches
from .polycl import run_polycl
from .separeg import run_separeg, separeg_stages
from .settings import STRATEGY_NAMES, PretrainSettings
from .voxel import run_voxel


@dataclass(frozen=True)
class Strategy:
    name: str
    summary: str
    needs: Needs
    run: Callable[[Context, list[PretrainEntry]], Result]
    stages: Callable[[PretrainSettings], dict[str, float]] = lambda settings: {"prepare": 0.1, "train": 0.8, "embedding": 0.1}


def _registry() -> dict[str, Strategy]:
    att = Needs(attention=True)
    return {s.name: s for s in [
        Strategy("simclr", "SSCL: SimCLR NT-Xent on organ-attention patches", att, run_patches),
        Strategy("supcon-mt", "AGCL: supervised contrastive loss on the joint (organ, phase) label", Needs(attention=True, phase=True), run_patches),
        Strategy("dcc", "DCC-CL: NT-Xent with similarities weighted by 1 - |intensity gap| (Eq. 4)", att, run_patches),
        Strategy("ce", "baseline: classify each patch's (organ, phase) label with cross-entropy", Needs(attention=True, phase=True), run_patches),
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
