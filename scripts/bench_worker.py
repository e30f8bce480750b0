"""The warm worker against the CLI on one CT (issue 9, item 6): is a segmentation through the worker no slower
than `contrastseg segment`, and how long does one click on a kidney take?

Measures, each from the caller's side (process start, pipes and files included):
  - the CLI: `python -m contrastseg.cli segment CT -o OUT` from start to exit (torch import, model load, read);
  - the worker: start to ready, `open` (read the CT, load the model), the first `segment`, a second `segment`
    of the open CT, and a positive click at the centre of the right kidney (`refine`, label files as the
    Slicer module exchanges them: uncompressed .nii, the answer only the changed box), repeated `--clicks` times.

    python scripts/bench_worker.py [--case ircad] [--threads 2] [--clicks 5] [--device cpu] [--only-clicks]

`--only-clicks` skips the CLI run and the second segment (the click latency alone, on a busy machine);
`--labels PATH` clicks on that label map (e.g. an earlier segmentation of the CT) instead of segmenting first;
`--missed` clears the right kidney from the label map first, so the click brings back the whole organ (the
default clicks into the kidney the model found, which changes little).

Cases are the loop experiment's (read in place from ../shared/data). Run it on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))

from loop_experiment import CASES, truth_of  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--case", default="ircad", choices=sorted(CASES))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda", "auto"])
    ap.add_argument("--clicks", type=int, default=5)
    ap.add_argument("--only-clicks", action="store_true", help="skip the CLI run and the second segment")
    ap.add_argument("--labels", type=Path, default=None, help="click on this label map instead of segmenting first")
    ap.add_argument("--missed", action="store_true", help="clear the right kidney before clicking into it")
    args = ap.parse_args()
    from contrastseg.io import read_image
    from contrastseg.serve_client import Client

    ct_path = CASES[args.case][0]
    image = read_image(ct_path)
    kidney = truth_of(args.case, image).get(2)
    work = Path(tempfile.mkdtemp(prefix="bench-worker-"))
    env = dict(os.environ)
    runtime = ["--device", args.device, "--threads", str(args.threads)]
    try:
        t = time.perf_counter()
        if not args.only_clicks:
            subprocess.run([sys.executable, "-m", "contrastseg.cli", "segment", str(ct_path), "-o",
                            str(work / "cli.nii.gz"), "--progress", "none", *runtime], check=True, env=env)
        cli = time.perf_counter() - t

        t = time.perf_counter()
        client = Client([sys.executable, "-m", "contrastseg.cli", "serve", "--stdio", *runtime], env=env).start()
        ready = time.perf_counter() - t
        t = time.perf_counter()
        opened = client.request("open", ct=str(ct_path))
        assert opened["ok"], opened
        open_s = time.perf_counter() - t
        segs = []
        for i in range(0 if args.labels else 1 if args.only_clicks else 2):
            t = time.perf_counter()
            seg = client.request("segment", ct=opened["ct"], output=str(work / f"worker{i}.nii.gz"))
            assert seg["ok"], seg
            segs.append(time.perf_counter() - t)
        clicks = []
        if kidney is not None:
            z, y, x = np.argwhere(kidney).mean(0).round().astype(int)
            lps = image.TransformIndexToPhysicalPoint((int(x), int(y), int(z)))
            if args.labels:
                import SimpleITK as sitk

                sitk.WriteImage(sitk.ReadImage(str(args.labels)), str(work / "current.nii"))
            else:
                seg = client.request("segment", ct=opened["ct"], output=str(work / "current.nii"))
            if args.missed:
                import SimpleITK as sitk

                current = sitk.ReadImage(str(work / "current.nii"))
                cleared = sitk.GetArrayFromImage(current)
                cleared[cleared == 2] = 0
                out = sitk.GetImageFromArray(cleared)
                out.CopyInformation(current)
                sitk.WriteImage(out, str(work / "current.nii"))
            for _ in range(args.clicks):
                t = time.perf_counter()
                fixed = client.request("refine", ct=opened["ct"], organ="right_kidney", labels=str(work / "current.nii"),
                                       output=str(work / "fixed.nii"), points_ras=[[-lps[0], -lps[1], lps[2]]],
                                       output_box=True)
                assert fixed["ok"], fixed
                clicks.append(time.perf_counter() - t)
                print(f"click {len(clicks)}: {clicks[-1]:.2f} s, {fixed['change']}", flush=True)
        client.request("shutdown")
        client.stop()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    size = "x".join(map(str, image.GetSize()))
    print(f"\n{args.case} ({size}), {args.device}, {args.threads} threads")
    print("| path | seconds |\n| --- | --- |")
    if not args.only_clicks:
        print(f"| CLI `contrastseg segment`, start to exit | {cli:.1f} |")
    print(f"| worker: start to ready | {ready:.1f} |")
    print(f"| worker: open (read the CT, load the model) | {open_s:.1f} |")
    if segs:
        print(f"| worker: first segment | {segs[0]:.1f} |")
        print(f"| worker: start + open + first segment | {ready + open_s + segs[0]:.1f} |")
    if len(segs) > 1:
        print(f"| worker: segment again (CT open) | {segs[1]:.1f} |")
    if clicks:
        what = "a click bringing back the cleared right kidney" if args.missed else "one right-kidney click"
        print(f"| worker: {what}, median of {len(clicks)} (first {clicks[0]:.1f}) | {float(np.median(clicks)):.2f} |")


if __name__ == "__main__":
    main()
