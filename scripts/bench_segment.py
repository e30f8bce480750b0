"""Benchmark `contrastseg segment`: wall time per stage and peak memory, on IRCAD patient 1 by default.

Each repeat runs the real CLI in a fresh process (so peak RSS is that run's own, model loading included)
and reads the per-stage times it writes with --timings. Prints a Markdown table for the README.

    python scripts/bench_segment.py --threads 2 --repeats 3            # CPU, 2 threads
    python scripts/bench_segment.py --device cuda --repeats 3          # GPU, when one is present
    python scripts/bench_segment.py --stack 4 --overlay --repeats 1    # memory on a 512x512x516 CT
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
IRCAD_CT = REPO.parent / "shared" / "data" / "ircad-3d-01-patient1" / "PATIENT_DICOM"


def run_once(inp: Path, device: str, threads: int, extra: list[str]) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        timings = Path(tmp) / "t.json"
        cmd = [sys.executable, "-m", "contrastseg.cli", "segment", str(inp), "-o", str(Path(tmp) / "seg.nii.gz"),
               "--device", device, "--threads", str(threads), "--progress", "none", "--timings", str(timings), *extra]
        env = dict(os.environ, OMP_NUM_THREADS=str(threads))
        proc = subprocess.Popen(cmd, env=env)
        _, status, usage = os.wait4(proc.pid, 0)  # this child's own peak RSS, not the max over all children
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode:
            raise SystemExit(f"segment failed with exit code {proc.returncode}: {' '.join(cmd)}")
        result = json.loads(timings.read_text())["timings_s"]
        result["peak_rss_gb"] = round(usage.ru_maxrss / 1024 / 1024, 2)
        return result


def stacked(source: Path, times: int, folder: Path) -> Path:
    """`source` tiled `times` times along its slice axis, as a NIfTI in `folder` (a long CT of real anatomy:
    IRCAD's 129 slices x 4 = 516 slices of 512x512, 826 mm). Written to a temporary folder, never kept."""
    import numpy as np
    import SimpleITK as sitk

    from contrastseg.io import read_image

    image = read_image(source)
    big = sitk.GetImageFromArray(np.concatenate([sitk.GetArrayViewFromImage(image)] * times, axis=0))
    for attr in ("Spacing", "Origin", "Direction"):
        getattr(big, f"Set{attr}")(getattr(image, f"Get{attr}")())
    out = folder / f"stacked-{times}x.nii.gz"
    sitk.WriteImage(big, str(out))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("input", nargs="?", type=Path, default=IRCAD_CT)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--coarse-only", action="store_true")
    ap.add_argument("--stack", type=int, default=1, help="tile the input this many times along z (memory of a long CT)")
    ap.add_argument("--overlay", action="store_true", help="also render the overlay PNG, as the README's demo does")
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = ap.parse_args()
    if not args.input.exists():
        sys.exit(f"benchmark input not found: {args.input}")
    extra = ["--coarse-only"] if args.coarse_only else []
    with tempfile.TemporaryDirectory() as tmp:
        if args.overlay:
            extra += ["--overlay", str(Path(tmp) / "overlay.png")]
        inp = stacked(args.input, args.stack, Path(tmp)) if args.stack > 1 else args.input
        runs = [run_once(inp, args.device, args.threads, extra) for _ in range(args.repeats)]
    keys = [k for k in runs[0] if k != "peak_rss_gb"]
    med = {k: round(statistics.median(r[k] for r in runs), 2) for k in keys}
    peak = max(r["peak_rss_gb"] for r in runs)
    print(f"input: {args.input}{f' tiled {args.stack}x along z' if args.stack > 1 else ''}  device: {args.device}  threads: {args.threads}  repeats: {args.repeats}")
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} logical CPUs")
    print("| stage | median wall time (s) |")
    print("| --- | --- |")
    for k in keys:
        print(f"| {k} | {med[k]} |")
    print(f"| peak memory (RSS, GB) | {peak} |")
    if args.json:
        args.json.write_text(json.dumps({"input": str(args.input), "device": args.device, "threads": args.threads,
                                         "runs": runs, "median": med, "peak_rss_gb": peak}, indent=2))


if __name__ == "__main__":
    main()
