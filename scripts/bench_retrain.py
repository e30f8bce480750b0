"""How long does default retraining take? `contrastseg run plan --start` with the defaults (coarse + refined,
preprocessing included) on 1 to 3 labelled cases, each timed step by step from the run's own log.

The cases (read in place from ../shared/data): IRCAD patient 1 with its manual masks (512x512x129), the
TotalSegmentator DICOM series with its labels (512x512x20) and example_ct_sm (122x101x30). Each measurement
starts with an empty preprocessing cache (a fresh $CONTRASTSEG_HOME), so "preprocess" is included; with
--warm, the time of a second run on the warm cache is printed too.

    python scripts/bench_retrain.py --cases 1,3 --threads 2 [--warm] [--device cuda]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
TS = DATA / "totalsegmentator-examples"
IRCAD = DATA / "ircad-3d-01-patient1"


def cli(*args: str, env: dict) -> None:
    subprocess.run([sys.executable, "-m", "contrastseg.cli", *args], check=True, env=env, stdout=subprocess.DEVNULL)


def ircad_labels(path: Path) -> None:
    import numpy as np
    import SimpleITK as sitk

    from contrastseg.io import read_image
    from contrastseg.metrics import load_truth

    image = read_image(IRCAD / "PATIENT_DICOM")
    masks = load_truth(IRCAD / "MASKS_DICOM.zip", image)
    labels = np.zeros(tuple(reversed(image.GetSize())), dtype=np.uint8)
    for oid in sorted(masks):
        labels[masks[oid]] = oid
    out = sitk.GetImageFromArray(labels)
    out.CopyInformation(image)
    sitk.WriteImage(out, str(path), useCompression=True)


def step_times(log: Path) -> dict[str, float]:
    """Seconds per step from the run's log.txt ("step NAME: ..." then "step NAME finished")."""
    stamps = []
    for line in log.read_text().splitlines():
        m = re.match(r"(\S+ \S+) (.*)", line)
        if m:
            stamps.append((datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S"), m.group(2)))
    out, start = {}, None
    for t, text in stamps:
        if text.startswith("step ") and text.endswith(" finished"):
            name = text.split()[1]
            out[name] = (t - start).total_seconds() if start else None
        if text.startswith("step ") or text in ("start", "resume"):
            start = t
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", default="1,3")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--work", type=Path, default=REPO / "work" / "bench-retrain")
    ap.add_argument("--warm", action="store_true", help="also time a second run on the warm preprocessing cache")
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    labels = args.work / "ircad-labels.nii.gz"
    if not labels.exists():
        ircad_labels(labels)
    cases = [(IRCAD / "PATIENT_DICOM", labels, None), (TS / "example_ct_dicom", TS / "example_seg_dicom.nii.gz", "totalsegmentator"),
             (TS / "example_ct_sm.nii.gz", TS / "example_seg.nii.gz", "totalsegmentator")]
    print("| labelled cases | cache | coarse step (s) | refined step (s) | validate + register (s) | total wall (s) |")
    print("| --- | --- | --- | --- | --- | --- |")
    for n in (int(v) for v in args.cases.split(",")):
        home = args.work / f"home-{n}"
        shutil.rmtree(home, ignore_errors=True)
        env = dict(os.environ, CONTRASTSEG_HOME=str(home))
        ds = home / "dataset"
        for i, (image, lab, id_map) in enumerate(cases[:n]):
            cli("dataset", "add", str(image), str(lab), "--case", f"case{i}", "--dataset", str(ds),
                *(["--id-map", id_map] if id_map else []), env=env)
        for cache in ("cold", "warm") if args.warm else ("cold",):
            name = f"bench-{n}-{cache}"
            t0 = time.perf_counter()
            cli("run", "plan", "--dataset", str(ds), "--name", name, "--threads", str(args.threads), "--device", args.device,
                "--base", "default", "--start", "--progress", "none", env=env)
            wall = time.perf_counter() - t0
            t = step_times(home / "runs" / name / "log.txt")
            rest = (t.get("validate") or 0) + (t.get("register") or 0)
            print(f"| {n} | {cache} | {t.get('coarse', 0):.0f} | {t.get('refined', 0):.0f} | {rest:.0f} | {wall:.0f} |", flush=True)


if __name__ == "__main__":
    main()
