"""`contrastseg train-coarse` and `contrastseg finetune`: supervised training of the two stages.

Both resume from the run folder's last checkpoint when run again with the same `--run`, and write a
model folder (`RUN/model`: card.json + safetensors) plus `RUN/curves.png`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import ContrastSegError
from ..organs import parse_organs
from ..paths import default_model
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
    add_runtime_options(p)
    p.set_defaults(func=run_coarse)

    p = sub.add_parser("finetune", help="fine-tune the refined organ-attention network",
                       description="Train the refined 2D network on organ patches (soft Dice), from scratch or from a "
                                   "pretrained encoder (--init), and write a model = base coarse + refined.")
    p.add_argument("dataset", type=Path, help="dataset folder (manifest.json)")
    p.add_argument("--run", type=Path, required=True, help="run folder; reused to resume")
    p.add_argument("--base", type=Path, default=None, help="model whose coarse network is kept (default: the default model)")
    p.add_argument("--init", type=Path, default=None, help="pretrained encoder (safetensors) to start from")
    p.add_argument("--freeze-encoder", action="store_true", help="train only the decoder (AGCL); default trains all (DCC-CL)")
    p.add_argument("--steps", type=int, default=RefinedSettings.steps)
    p.add_argument("--batch", type=int, default=RefinedSettings.batch)
    p.add_argument("--lr", type=float, default=RefinedSettings.lr)
    p.add_argument("--depth", type=int, default=RefinedSettings.depth, choices=[10, 18, 34, 50, 101])
    p.add_argument("--widths", type=_ints, default=RefinedSettings.widths)
    p.add_argument("--stem", default=RefinedSettings.stem, choices=["paper", "stride2", "authors"])
    p.add_argument("--aspp-width", type=int, default=RefinedSettings.aspp_width)
    p.add_argument("--no-skip", action="store_true", help="pure DeepLabV3 decoder (no low-level skip)")
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
                              steps=args.steps, lr=args.lr, seed=args.seed, organs=_organs(args.organs))
    device, progress = runtime(args, {"train": 1.0})
    init = load_coarse_init(args.init, settings) if args.init else None
    model_dir = train_coarse(args.dataset, args.run, settings, device, progress, init)
    _finish(args.run, model_dir, progress)
    return 0


def run_finetune(args: argparse.Namespace) -> int:
    from ..train.refined import finetune

    settings = RefinedSettings(depth=args.depth, widths=args.widths, stem=args.stem, aspp_width=args.aspp_width,
                               skip=not args.no_skip, batch=args.batch, steps=args.steps, lr=args.lr, seed=args.seed,
                               freeze_encoder=args.freeze_encoder, organs=_organs(args.organs))
    device, progress = runtime(args, {"train": 1.0})
    model_dir = finetune(args.dataset, args.run, args.base or default_model(), settings, device, progress, args.init)
    _finish(args.run, model_dir, progress)
    return 0
