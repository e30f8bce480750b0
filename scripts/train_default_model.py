"""Train the default model shipped in Resources/Models/default from redistributable data only.

Data: the TotalSegmentator example CTs (Apache-2.0) with their label maps (TotalSegmentator model output,
mapped to BTCV ids): example_ct.nii.gz + example_seg_fast_force_split.nii.gz, and the 20-slice DICOM series
+ example_seg_dicom.nii.gz. (example_ct_sm is slices 82-111 of example_ct with a stale origin: left out.)

    python scripts/train_default_model.py --work work/default --threads 2

Then copy work/default/refined/model/* into Resources/Models/default/ (weights stored as fp16).

Default model v0.2 continues v0.1's refined network with patch augmentation, keeping its coarse network (keep
a copy of v0.1 first: packaging overwrites it, and its card is the start record):

    cp -r Resources/Models/default work/default-v0.1
    python scripts/train_default_model.py --work work/v02 --refined-from work/default-v0.1 \
        --refined-steps 600 --lr 3e-4 --augment --threads 1
    python scripts/evaluate_default_model.py --model work/v02/refined/model --out work/eval-v02
    python scripts/click_eval.py --model work/v02/refined/model --threads 1 > docs/click-eval.md   # then edit its header
    python scripts/package_default_model.py work/v02/refined/model --refined-start work/default-v0.1 \
        --eval work/eval-v02 --clicks docs/click-eval.md

Training it for prompts (METHODS §10) adds --prompts 0.3 [--keep 10]; the README's "Training the refined
network for prompts" says what those recipes measured, and why none is shipped.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from contrastseg.progress import Progress
from contrastseg.train.coarse import train_coarse
from contrastseg.train.refined import finetune
from contrastseg.train.settings import CoarseSettings, RefinedSettings

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "totalsegmentator-examples"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, default=Path("work/default"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--coarse-steps", type=int, default=800)
    ap.add_argument("--refined-steps", type=int, default=1000)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--refined-from", type=Path, default=None,
                    help="a model folder: keep its coarse network and start the refined one from its weights")
    ap.add_argument("--lr", type=float, default=RefinedSettings.lr, help="refined network's learning rate")
    ap.add_argument("--prompts", type=float, default=RefinedSettings.prompts,
                    help="share of refined patches with prompt-like attention (clicks, boxes, strokes, previous slice)")
    ap.add_argument("--keep", type=float, default=RefinedSettings.keep,
                    help="with --refined-from: distillation toward its refined network on the patches without prompts")
    ap.add_argument("--seed", type=int, default=0, help="the refined network's training seed")
    ap.add_argument("--augment", action="store_true", help="random scale and intensity jitter of the refined patches")
    ap.add_argument("--coarse-attention", type=float, default=RefinedSettings.coarse_attention)
    args = ap.parse_args()
    if args.keep > 0 and args.refined_from is None:
        ap.error("--keep distils toward the --refined-from network")
    torch.set_num_threads(args.threads)
    args.work.mkdir(parents=True, exist_ok=True)
    manifest = {"format": "contrastseg-dataset/1", "entries": [
        {"id": "ts-example-ct", "image": str(DATA / "example_ct.nii.gz"),
         "labels": str(DATA / "example_seg_fast_force_split.nii.gz"), "id_map": "totalsegmentator",
         "source": "TotalSegmentator tests/reference_files (Apache-2.0); labels are TotalSegmentator output"},
        {"id": "ts-example-dicom", "image": str(DATA / "example_ct_dicom"),
         "labels": str(DATA / "example_seg_dicom.nii.gz"), "id_map": "totalsegmentator",
         "source": "TotalSegmentator tests/reference_files (Apache-2.0); labels are TotalSegmentator output"},
    ]}
    (args.work / "data").mkdir(exist_ok=True)
    (args.work / "data" / "manifest.json").write_text(json.dumps(manifest, indent=2))
    device = torch.device(args.device)
    init = None
    if args.refined_from is not None:
        coarse, init = args.refined_from, args.refined_from / "refined.safetensors"
    else:
        coarse = train_coarse(args.work / "data", args.work / "coarse",
                              CoarseSettings(steps=args.coarse_steps),
                              device, Progress("bar", {"train": 1}))
    print("\ncoarse model:", coarse)
    settings = RefinedSettings(steps=args.refined_steps, lr=args.lr, prompts=args.prompts, keep=args.keep,
                               augment=args.augment, seed=args.seed, coarse_attention=args.coarse_attention)
    refined = finetune(args.work / "data", args.work / "refined", coarse, settings, device,
                       Progress("bar", {"train": 1}), init=init)
    print("\nrefined model:", refined)


if __name__ == "__main__":
    main()
