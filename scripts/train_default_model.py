"""Train the default model shipped in Resources/Models/default, end to end, from redistributable data only.

Data (../shared/data; its README says what each is):
- TotalSegmentator example CTs (Apache-2.0, labels are TotalSegmentator output): example_ct.nii.gz with
  example_seg_fast_force_split.nii.gz, and the 20-slice DICOM series with example_seg_dicom.nii.gz. Neither
  label map has the esophagus, so both annotate the other 12 organs only (partial labels, METHODS §9).
  (example_ct_sm is slices 82-111 of example_ct with a stale origin: left out.)
- TotalSegmentator dataset subject s0009 (CC BY 4.0, Wasserthal et al. 2023): its CT and 117 reference masks.
- TotalSegmentator dataset subjects s0001, s0004, s0006 (CC BY 4.0): label maps without CTs, painted into
  CTs anew at every crop (train/crops.py, phases.paint_ct) for the coarse network.
Never IRCAD or CHAOS (non-commercial licences): they are the unseen evaluation CTs.

    python scripts/train_default_model.py --work work/v03 --threads 2          # about N hours on 2 CPU threads
    python scripts/train_default_model.py --work work/v03 --device cuda \\
        --coarse-steps 20000 --refined-steps 8000                               # on a GPU: bf16, longer

It resumes where it stopped (each stage checkpoints every 50 steps; a finished stage is not redone). Then:

    python scripts/evaluate_default_model.py --model work/v03/refined/model --out work/eval-v03
    python scripts/package_default_model.py work/v03/refined/model --eval work/eval-v03
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from contrastseg.progress import Progress
from contrastseg.scan_ends import SCAN_TOP_MODES
from contrastseg.train.coarse import start_from_model, train_coarse
from contrastseg.train.refined import finetune
from contrastseg.train.settings import CoarseSettings, RefinedSettings

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
TS = DATA / "totalsegmentator-examples"
NOT_ESOPHAGUS = [o for o in range(1, 14) if o != 5]
TS_SOURCE = "TotalSegmentator tests/reference_files (Apache-2.0); labels are TotalSegmentator output"
TS_DATASET = ("TotalSegmentator dataset v2.0.1 subject {s} (CC BY 4.0; Wasserthal et al., Radiology: Artificial "
              "Intelligence 2023); reference labels made by TotalSegmentator and corrected by people")
PAINTED = [DATA / "totalsegmentator-labels-only" / s / "segmentations" for s in ("s0001", "s0004", "s0006")]


def manifest(holdout: str | None = None) -> dict:
    """The training CTs (all redistributable); `holdout` leaves one out (the recipe's own unseen test)."""
    entries = [
        {"id": "ts-example-ct", "image": str(TS / "example_ct.nii.gz"), "labels": str(TS / "example_seg_fast_force_split.nii.gz"),
         "id_map": "totalsegmentator", "organs": NOT_ESOPHAGUS, "source": TS_SOURCE, "license": "Apache-2.0"},
        {"id": "ts-example-dicom", "image": str(TS / "example_ct_dicom"), "labels": str(TS / "example_seg_dicom.nii.gz"),
         "id_map": "totalsegmentator", "organs": NOT_ESOPHAGUS, "source": TS_SOURCE, "license": "Apache-2.0"},
        {"id": "ts-s0009", "image": str(DATA / "totalsegmentator-s0009" / "ct.nii.gz"),
         "labels": str(DATA / "totalsegmentator-s0009" / "segmentations"), "source": TS_DATASET.format(s="s0009"),
         "license": "CC-BY-4.0"},
    ]
    return {"format": "contrastseg-dataset/1", "entries": [e for e in entries if e["id"] != holdout]}


def keep_refined(coarse: Path, start_from: Path, out: Path) -> Path:
    """A whole model from a new coarse network and `start_from`'s refined network, unchanged (its weights, its
    settings and its training record), listing the organs `start_from` lists: the refined network answers a
    coarse mask, whichever network drew it."""
    import shutil

    from contrastseg.models.files import read_card, write_card

    card, start = read_card(coarse), read_card(start_from)
    out.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(coarse / card["coarse"]["weights"], out / card["coarse"]["weights"])
    shutil.copyfile(start_from / start["refined"]["weights"], out / start["refined"]["weights"])
    training = dict(card["training"], refined=start["training"]["refined"])
    write_card(out, dict(card, organs=start["organs"], refined=start["refined"], training=training))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, default=Path("work/default"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--coarse-steps", type=int, default=2000)
    ap.add_argument("--coarse-channels", type=int, nargs=4, default=list(CoarseSettings.channels))
    ap.add_argument("--coarse-crop", type=int, nargs=3, default=[48, 96, 96])
    ap.add_argument("--refined-steps", type=int, default=1500)
    ap.add_argument("--refined-lr", type=float, default=5e-4, help="the refined network's learning rate")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--holdout", default=None, help="leave this training CT out (e.g. ts-s0009) to test the recipe on it")
    # the ingredients, to measure each (README: what each does on the unseen CTs)
    ap.add_argument("--no-painted", action="store_true", help="leave out the CTs painted from label-only subjects")
    ap.add_argument("--no-lateral", action="store_true", help="the coarse network sees the image alone")
    ap.add_argument("--phase", type=float, default=CoarseSettings.phase, help="share of crops given a random contrast phase")
    ap.add_argument("--fov", type=float, default=CoarseSettings.fov, help="share of crops whose field of view ends")
    ap.add_argument("--fov-plane", choices=("scan", "crop"), default=CoarseSettings.fov_plane,
                    help="where the scan's end along the body is drawn: anywhere in the CT (as v0.3) or inside the crop "
                         "(measured, not kept: docs/default-model.md)")
    ap.add_argument("--ends", choices=("air", "edge"), default=CoarseSettings.ends,
                    help="beyond the scan's ends (its own and drawn ones): air, as v0.3 trained, or the end slice "
                         "repeated, as a model whose card asks for end padding is run (docs/default-model.md)")
    ap.add_argument("--scan-top", choices=SCAN_TOP_MODES, default="repeat-below-diaphragm",
                    help="how the model is run on a scan that starts below the diaphragm (scan_ends.py; the card's "
                         "coarse.scan_top): its top slice repeated, as v0.3.1 does, or as it is")
    ap.add_argument("--intensity", default=CoarseSettings.intensity, choices=["soft-top", "percentile"])
    ap.add_argument("--context", type=int, nargs="*", default=[],
                    help="TotalSegmentator ids of neighbours a share of crops is centred on, as background (51: the heart; measured, not kept: docs/default-model.md)")
    ap.add_argument("--context-share", type=float, default=CoarseSettings.context_share)
    ap.add_argument("--coarse-only", action="store_true", help="stop after the coarse network")
    ap.add_argument("--start-from", type=Path, default=None,
                    help="a model folder whose networks start this one's (v0.3 started from v0.2: see the docstring)")
    ap.add_argument("--lr", type=float, default=1e-3, help="the coarse network's learning rate")
    ap.add_argument("--keep-refined", action="store_true",
                    help="keep --start-from's refined network as it is (only the coarse network is retrained)")
    args = ap.parse_args()
    if args.keep_refined and args.start_from is None:
        ap.error("--keep-refined keeps the refined network of --start-from: give --start-from")
    torch.set_num_threads(args.threads)
    args.work.mkdir(parents=True, exist_ok=True)
    (args.work / "data").mkdir(exist_ok=True)
    (args.work / "data" / "manifest.json").write_text(json.dumps(manifest(args.holdout), indent=2))
    (args.work / "args.json").write_text(json.dumps({k: str(v) for k, v in vars(args).items()}, indent=2))
    device = torch.device(args.device)
    t0 = time.time()
    coarse = args.work / "coarse" / "model"
    if not (coarse / "card.json").exists():
        settings = CoarseSettings(steps=args.coarse_steps, channels=tuple(args.coarse_channels), crop=tuple(args.coarse_crop),
                                  seed=args.seed, lr=args.lr, phase=args.phase, fov=args.fov, fov_plane=args.fov_plane,
                                  ends=args.ends, scan_top=args.scan_top, intensity=args.intensity,
                                  inputs=("image",) if args.no_lateral else ("image", "lateral"),
                                  painted=[] if args.no_painted else [str(p) for p in PAINTED],
                                  context=list(args.context), context_share=args.context_share)
        init = None
        if args.start_from:  # its coarse network's widths, and the inputs asked for
            init = start_from_model(args.start_from, settings.inputs)
            settings.channels = tuple(init.channels)
        coarse = train_coarse(args.work / "data", args.work / "coarse", settings, device, Progress("bar", {"train": 1}),
                              init=init)
    print(f"\ncoarse model: {coarse} ({time.time() - t0:.0f} s so far)")
    if args.coarse_only:
        return
    if args.keep_refined:
        print(f"\nmodel: {keep_refined(coarse, args.start_from, args.work / 'refined' / 'model')}")
        return
    refined_settings = RefinedSettings(steps=args.refined_steps, lr=args.refined_lr, seed=args.seed, augment=True)
    refined = args.work / "refined" / "model"
    if not (refined / "card.json").exists():
        start = args.start_from / "refined.safetensors" if args.start_from else None
        refined = finetune(args.work / "data", args.work / "refined", coarse, refined_settings, device,
                           Progress("bar", {"train": 1}), init=start)
    print(f"\nrefined model: {refined} ({time.time() - t0:.0f} s in all)")


if __name__ == "__main__":
    main()
