"""Evaluate a model (default: the bundled one) on the shared real CTs and print Markdown tables.

- IRCAD patient 1: manual expert masks (liver, spleen, kidneys; artery -> aorta, venoussystem -> IVC,
  portalvein -> portal/splenic vein). Never used for training.
- TotalSegmentator examples: agreement with TotalSegmentator's own output (not ground truth). example_ct and
  the DICOM series were the default model's training data; example_ct_sm is a crop of example_ct, labelled
  by a different TotalSegmentator run.

    python scripts/evaluate_default_model.py [--model PATH] [--out work/eval]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
CASES = [
    ("IRCAD patient 1 (manual masks, unseen)", DATA / "ircad-3d-01-patient1" / "PATIENT_DICOM",
     DATA / "ircad-3d-01-patient1" / "MASKS_DICOM.zip", None),
    ("TS example_ct (training data)", DATA / "totalsegmentator-examples" / "example_ct.nii.gz",
     DATA / "totalsegmentator-examples" / "example_seg_fast_force_split.nii.gz", "totalsegmentator"),
    ("TS DICOM series (training data)", DATA / "totalsegmentator-examples" / "example_ct_dicom",
     DATA / "totalsegmentator-examples" / "example_seg_dicom.nii.gz", "totalsegmentator"),
    ("TS example_ct_sm (crop of training CT, other TS run)", DATA / "totalsegmentator-examples" / "example_ct_sm.nii.gz",
     DATA / "totalsegmentator-examples" / "example_seg.nii.gz", "totalsegmentator"),
]


def cli(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "contrastseg.cli", *args], check=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None)
    ap.add_argument("--out", type=Path, default=REPO / "work" / "eval")
    ap.add_argument("--threads", default="2")
    ap.add_argument("--only", type=int, default=None, help="evaluate only case number N (0-based)")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    model = ["--model", args.model] if args.model else []
    for i, (title, image, truth, id_map) in enumerate(CASES):
        if args.only is not None and i != args.only:
            continue
        rows = {}
        for stage, flags in (("coarse", ["--coarse-only"]), ("refined", [])):
            pred = args.out / f"case{i}-{stage}.nii.gz"
            cli("segment", str(image), "-o", str(pred), "--threads", args.threads, "--progress", "none", *model, *flags,
                *(["--overlay", str(args.out / f"case{i}.png")] if stage == "refined" else []))
            metrics = args.out / f"case{i}-{stage}.json"
            cli("evaluate", str(pred), str(truth), "-o", str(metrics), *(["--truth-id-map", id_map] if id_map else []))
            rows[stage] = json.loads(metrics.read_text())
        print(f"\n### {title}\n")
        print("| organ | Dice coarse | Dice refined | HD95 refined (mm) | ASSD refined (mm) |")
        print("| --- | --- | --- | --- | --- |")
        dice = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731
        mm = lambda v: "-" if v is None else f"{v:.1f}"  # noqa: E731
        for key, m in rows["refined"]["organs"].items():
            c = rows["coarse"]["organs"].get(key, {})
            print(f"| {key.replace('_', ' ')} | {dice(c.get('dice'))} | {dice(m['dice'])} | {mm(m['hd95'])} | {mm(m['assd'])} |")
        print(f"| **mean** | {dice(rows['coarse']['mean_dice'])} | {dice(rows['refined']['mean_dice'])} | | |")


if __name__ == "__main__":
    main()
