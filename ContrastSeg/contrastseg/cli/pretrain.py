"""`contrastseg pretrain DATASET --strategy NAME --run RUN`: contrastive pretraining (METHODS.md §2-§5).

Writes RUN/encoder.safetensors (for `contrastseg finetune --init`) or, for voxel-simsiam,
RUN/coarse.safetensors (for `contrastseg train-coarse --init`), with config.json, log.txt, curves.png and
embedding.png. Run it again with the same --run to resume after a kill. Under `torchrun --nproc_per_node G
-m contrastseg.cli pretrain ...` it trains with DDP on G processes (GPUs, or CPU with gloo).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from ..errors import ContrastSegError
from ..organs import parse_organs
from ..pretrain.settings import STRATEGY_NAMES, PretrainSettings
from ._common import add_runtime_options

D = PretrainSettings()


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(v) for v in text.split(","))


def _floats(text: str) -> tuple[float, ...]:
    return tuple(float(v) for v in text.split(","))


def register(sub) -> None:
    p = sub.add_parser("pretrain", help="contrastive pretraining of the refined encoder (or the coarse U-Net)",
                       description="Pretrain with one of the five papers' methods. Patch strategies (simclr, supcon-mt, "
                                   "dcc, ce) and polycl-o need organ attention: each CT's label map, or --attention MODEL "
                                   "to take it from a coarse model. supcon-mt and ce need a phase per CT (manifest "
                                   "'phase', or estimated from the aorta). voxel-simsiam needs label maps.",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("dataset", type=Path, help="dataset folder (manifest.json); unlabelled entries are fine")
    p.add_argument("--strategy", required=True, choices=STRATEGY_NAMES)
    p.add_argument("--run", type=Path, required=True, help="run folder; reused to resume")
    p.add_argument("--attention", type=Path, default=None, help="coarse model whose output is every CT's organ attention")
    p.add_argument("--init", type=Path, default=None,
                   help="model folder to continue from (its refined encoder, or for voxel-simsiam its coarse U-Net); default random")
    g = p.add_argument_group("training")
    g.add_argument("--steps", type=int, default=D.steps)
    g.add_argument("--max-steps", type=int, default=None, help="cap every phase at this many steps (smoke runs)")
    g.add_argument("--batch", type=int, default=D.batch, help="patches (triplets, regions) per process per step")
    g.add_argument("--lr", type=float, default=D.lr)
    g.add_argument("--temperature", type=float, default=None, help="default: SimCLR/SupCon 0.1, DCC 0.07, PolyCL 1/batch")
    g.add_argument("--epoch-steps", type=int, default=None, help="checkpoint interval (default: one pass over the data)")
    g.add_argument("--seed", type=int, default=D.seed)
    g.add_argument("--organs", default=None, help="organs to sample patches of (default: all)")
    g.add_argument("--partial-weight", type=float, default=D.partial_weight, help="supcon-mt: weight of same-phase, other-organ views")
    g.add_argument("--probe", type=int, default=D.probe, help="patches in the embedding plot")
    e = p.add_argument_group("encoder (must match the network you fine-tune)")
    e.add_argument("--depth", type=int, default=D.depth, choices=[10, 18, 34, 50, 101])
    e.add_argument("--widths", type=_ints, default=D.widths)
    e.add_argument("--stem", default=D.stem, choices=["paper", "stride2", "authors"])
    e.add_argument("--patch", type=int, default=D.patch, help="patch / region side in pixels")
    e.add_argument("--inplane-spacing", type=float, default=D.inplane_spacing)
    s = p.add_argument_group("polycl")
    s.add_argument("--target-organ", default="auto",
                   help="polycl-o: the organ whose presence labels a slice (default auto: the organ that splits the "
                        "central slices most evenly, the liver on a tie)")
    s.add_argument("--slice-size", type=int, default=D.slice_size)
    s.add_argument("--slice-fraction", type=float, default=D.slice_fraction, help="central fraction of each scan's slices")
    r = p.add_argument_group("separeg")
    r.add_argument("--clusters", type=int, default=D.clusters)
    r.add_argument("--region-slices", type=int, default=D.region_slices, help="slices per CT cut into superpixels")
    r.add_argument("--max-regions", type=int, default=D.max_regions)
    v = p.add_argument_group("voxel-simsiam (coarse 3D U-Net)")
    v.add_argument("--channels", type=_ints, default=D.coarse_channels)
    v.add_argument("--crop", type=_ints, default=D.coarse_crop, help="z,y,x coarse voxels")
    v.add_argument("--spacing", type=_floats, default=D.coarse_spacing)
    v.add_argument("--coarse-batch", type=int, default=D.coarse_batch)
    v.add_argument("--voxel-weight", type=float, default=D.voxel_weight, help="lambda")
    add_runtime_options(p)
    p.set_defaults(func=run)


def _organs(spec):
    try:
        return parse_organs(spec)
    except ValueError as err:
        raise ContrastSegError(str(err)) from None


def run(args: argparse.Namespace) -> int:
    import torch

    from ..infer import pick_device
    from ..pretrain.context import PretrainProgress
    from ..pretrain.run import pretrain
    from ..pretrain.strategies import get

    target = [None] if args.target_organ == "auto" else _organs(args.target_organ)
    if len(target) != 1:
        raise ContrastSegError("--target-organ takes one organ (or auto)")
    settings = PretrainSettings(
        strategy=args.strategy, steps=args.steps, max_steps=args.max_steps, batch=args.batch, lr=args.lr,
        temperature=args.temperature, seed=args.seed, epoch_steps=args.epoch_steps, depth=args.depth,
        widths=args.widths, stem=args.stem, inplane_spacing=args.inplane_spacing, patch=args.patch,
        organs=_organs(args.organs), partial_weight=args.partial_weight, target_organ=target[0],
        slice_size=args.slice_size, slice_fraction=args.slice_fraction, clusters=args.clusters,
        region_slices=args.region_slices, max_regions=args.max_regions, coarse_channels=args.channels,
        coarse_crop=args.crop, coarse_spacing=args.spacing, coarse_batch=args.coarse_batch,
        voxel_weight=args.voxel_weight, probe=args.probe, init=str(args.init) if args.init else None)
    if settings.batch < 2:
        raise ContrastSegError("--batch must be at least 2 (contrastive losses need negatives)")
    if args.threads:
        torch.set_num_threads(args.threads)
    main_rank = int(os.environ.get("RANK", "0")) == 0
    progress = PretrainProgress(args.progress if main_rank else "none", get(args.strategy).stages(settings))
    out = pretrain(args.dataset, args.run, settings, pick_device(args.device), progress, args.attention)
    if main_rank:
        progress.finish(weights=str(out), run=str(args.run))
        if args.progress != "json":
            print(f"pretrained weights written to {out}")
    return 0
