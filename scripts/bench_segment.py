"""Benchmark `contrastseg segment`: wall time per stage and peak memory, on IRCAD patient 1 by default.

Each repeat runs the real CLI in a fresh process (so peak RSS is that run's own, model loading included)
and reads the per-stage times it writes with --timings. Prints a Markdown table for the README.

    python scripts/bench_segment.py --threads 2 --repeats 3            # CPU, 2 threads
    python scripts/bench_segment.py --device cuda --repeats 3          # GPU, when one is present
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
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
        before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        subprocess.run(cmd, check=True, env=env)
        peak_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        result = json.loads(timings.read_text())["timings_s"]
        # ru_maxrss of children is the max over all children so far: runs are ordered small->same size, so
        # a later run never reports a smaller peak than an earlier one; report each run's value anyway.
        result["peak_rss_gb"] = round(max(peak_kb, before) / 1024 / 1024, 2)
        return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("input", nargs="?", type=Path, default=IRCAD_CT)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--coarse-only", action="store_true")
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = ap.parse_args()
    if not args.input.exists():
        sys.exit(f"benchmark input not found: {args.input}")
    extra = ["--coarse-only"] if args.coarse_only else []
    runs = [run_once(args.input, args.device, args.threads, extra) for _ in range(args.repeats)]
    keys = [k for k in runs[0] if k != "peak_rss_gb"]
    med = {k: round(statistics.median(r[k] for r in runs), 2) for k in keys}
    peak = max(r["peak_rss_gb"] for r in runs)
    print(f"input: {args.input}  device: {args.device}  threads: {args.threads}  repeats: {args.repeats}")
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
