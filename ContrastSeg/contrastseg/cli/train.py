"""`contrastseg train-coarse` and `contrastseg finetune`: supervised training of the two stages.

Both resume from the run folder's last checkpoint when run again with the same `--run`, and write a
model folder (`RUN/model`: card.json + safetensors) plus `RUN/curves.png`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from .. import store
from ..errors import ContrastSegError
from ..organs import parse_organs
from ..train.settings import CoarseSettings, RefinedSettings
from ._common import add_runtime_options, runtime


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(v) for v in text.split(","))


def register(sub) -> None:
    p = sub.add_parser("train-coarse", help="train the coarse 3D U-Net on a dataset folder",
                       description="Supervised training of the coarse 3D U-Net (Dice + CE) on a dataset's labelled entries.")
    p.add_argument("dataset", type=Path, help="dataset folder (manifest.json)")
    p.add_argument("--run", type=Path, required=True, help="run folder (checkpoints, log, model); reused to resume")
    p.add_argument("--steps", type=int, default=CoarseSettings.steps)
    p.add_argument("--batch", type=int, default=CoarseSettings.batch)
    p.add_argument("--lr", type=float, default=CoarseSettings.lr)
    p.add_argument("--channels", type=_ints, default=CoarseSettings.channels, help="channels per level, e.g. 16,32,64,128")
    p.add_argument("--crop", type=_ints, default=CoarseSettings.crop, help="training crop z,y,x in coarse voxels")
    p.add_argument("--spacing", type=lambda s: tuple(float(v) for v in s.split(",")), default=CoarseSettings.spacing)
    p.add_argument("--organs", default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--init", type=Path, default=None, help="pretrained coarse U-Net (safetensors, e.g. from `pretrain --strategy voxel-simsiam`)")
    p.add_argument("--base", default=None,
                   help="model (store name or folder) whose coarse network is fine-tuned (the loop): start from its weights (unless --init), "
                        "distil it on organs an entry does not annotate, replay its training cases; writes a whole model")
    p.add_argument("--replay", type=float, default=CoarseSettings.replay, help="share of each batch from the base's training cases (with --base)")
    p.add_argument("--distill", type=float, default=CoarseSettings.distill, help="weight of the distillation toward the base (with --base)")
    add_runtime_options(p)
    p.set_defaults(func=run_coarse)

    p = sub.add_parser("finetune", help="fine-tune the refined organ-attention network",
                       description="Train the refined 2D network on organ patches (soft Dice), from scratch or from a "
                                   "pretrained encoder (--init), and write a model = base coarse + refined.")
    p.add_argument("dataset", type=Path, help="dataset folder (manifest.json)")
    p.add_argument("--run", type=Path, required=True, help="run folder; reused to resume")
    p.add_argument("--base", default=None,
                   help="model (store name or folder) whose coarse network is kept and gives the training attention "
                        "(default: the store's default model)")
    p.add_argument("--init", type=Path, default=None, help="refined network or pretrained encoder (safetensors) to start from")
    p.add_argument("--encoder", type=Path, default=None, help="pretrained encoder that then replaces --init's encoder")
    p.add_argument("--freeze-encoder", action="store_true", help="train only the decoder (AGCL); default trains all (DCC-CL)")
    p.add_argument("--steps", type=int, default=RefinedSettings.steps)
    p.add_argument("--batch", type=int, default=RefinedSettings.batch)
    p.add_argument("--lr", type=float, default=RefinedSettings.lr)
    p.add_argument("--depth", type=int, default=RefinedSettings.depth, choices=[10, 18, 34, 50, 101])
    p.add_argument("--widths", type=_ints, default=RefinedSettings.widths)
    p.add_argument("--stem", default=RefinedSettings.stem, choices=["paper", "stride2", "authors"])
    p.add_argument("--aspp-width", type=int, default=RefinedSettings.aspp_width)
    p.add_argument("--no-skip", action="store_true", help="pure DeepLabV3 decoder (no low-level skip)")
    p.add_argument("--coarse-attention", type=float, default=RefinedSettings.coarse_attention,
                   help="share of patches whose attention is the base's coarse output (else the perturbed truth)")
    p.add_argument("--prompts", type=float, default=RefinedSettings.prompts,
                   help="share of patches whose attention is a prompt-like mask (a click's ball, a box's ellipse, a "
                        "partial stroke, the previous slice's organ: METHODS §10), so the network answers clicks")
    p.add_argument("--keep", type=float, default=RefinedSettings.keep,
                   help="weight of distillation toward the --init network on the patches without prompts (with "
                        "--prompts: learn clicks without changing the answer to a coarse mask)")
    p.add_argument("--augment", action="store_true",
                   help="random scale (0.8-1.25) and intensity jitter of each patch, for CTs of other scanners")
    p.add_argument("--replay", type=float, default=RefinedSettings.replay, help="share of patches from the base's training cases")
    p.add_argument("--organs", default=None)
    p.add_argument("--seed", type=int, default=0)
    add_runtime_options(p)
    p.set_defaults(func=run_finetune)


def _organs(spec):
    try:
        return parse_organs(spec)
    except ValueError as err:
        raise ContrastSegError(str(err)) from None


def _finish(run_dir: Path, model_dir: Path, progress) -> None:
    from ..plots import training_curves
    from ..train.loop import read_history

    training_curves(read_history(run_dir), run_dir / "curves.png", title=run_dir.name)
    progress.output("model", model_dir)
    progress.finish(model=str(model_dir))
    if progress.mode != "json":
        print(f"model written to {model_dir}")


def run_coarse(args: argparse.Namespace) -> int:
    from ..train.coarse import load_coarse_init, train_coarse

    settings = CoarseSettings(spacing=args.spacing, channels=args.channels, crop=args.crop, batch=args.batch,
                              steps=args.steps, lr=args.lr, seed=args.seed, organs=_organs(args.organs),
                              replay=args.replay, distill=args.distill)
    device, progress = runtime(args, {"train": 1.0})
    init = load_coarse_init(args.init, settings) if args.init else None
    base = store.resolve(args.base) if args.base else None
    model_dir = train_coarse(args.dataset, args.run, settings, device, progress, init, base)
    _finish(args.run, model_dir, progress)
    return 0


def run_finetune(args: argparse.Namespace) -> int:
    from ..train.refined import finetune

    settings = RefinedSettings(depth=args.depth, widths=args.widths, stem=args.stem, aspp_width=args.aspp_width,
                               skip=not args.no_skip, batch=args.batch, steps=args.steps, lr=args.lr, seed=args.seed,
                               freeze_encoder=args.freeze_encoder, organs=_organs(args.organs),
                               coarse_attention=args.coarse_attention, replay=args.replay,
                               prompts=args.prompts, keep=args.keep, augment=args.augment)
    if settings.keep > 0 and args.init is None:
        raise ContrastSegError("--keep distils toward the starting network: give it with --init")
    device, progress = runtime(args, {"train": 1.0})
    model_dir = finetune(args.dataset, args.run, store.resolve(args.base), settings, device, progress, args.init,
                         args.encoder)
    _finish(args.run, model_dir, progress)
    return 0
