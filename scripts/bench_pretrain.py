"""Pretraining throughput per strategy: patches (views) per second through the encoder, CPU and GPU.

    python scripts/bench_pretrain.py --threads 2            # CPU, fp32, the default encoder and patch size
    python scripts/bench_pretrain.py --device cuda          # GPU, bf16 autocast + channels-last (when CUDA exists)

Each strategy runs its real training step (sampling from cached volumes, augmentation, forward, loss, backward,
optimizer) through `contrastseg.pretrain` for `--steps` steps; the rate is taken from the loop's history after
`--warmup` steps, so start-up, data preparation and the embedding plot are not counted. Data: the two
TotalSegmentator example CTs (Apache-2.0) with their label maps as organ attention, from ../shared/data.
What one "item" is: a patch view (simclr, supcon-mt, dcc, ce; 2 per patch), a whole slice (polycl: 3 per
triplet), a region view (separeg inter/intra: 2 per region; student: 1), a 3D crop (voxel-simsiam).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "totalsegmentator-examples"
STRATEGIES = ("simclr", "supcon-mt", "dcc", "ce", "polycl-o", "polycl-s", "separeg", "voxel-simsiam")


def rate(run_dir: Path, warmup: int) -> tuple[float, int]:
    """Items per second over the steps after `warmup` (from history.jsonl's cumulative times)."""
    hist = [json.loads(line) for line in (run_dir / "history.jsonl").read_text().splitlines()]
    if len(hist) <= warmup:
        return hist[-1]["items_per_s"], len(hist)
    first, last = hist[warmup - 1] if warmup else {"time": 0.0, "step": 0}, hist[-1]
    items = last["items_per_s"] * last["time"] / last["step"]  # items per step
    return items * (last["step"] - first["step"]) / max(1e-9, last["time"] - first["time"]), len(hist) - warmup


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--slice-size", type=int, default=256)
    ap.add_argument("--strategies", default=",".join(STRATEGIES))
    ap.add_argument("--json", type=Path, default=None, help="also write the table as JSON")
    args = ap.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        print("no CUDA device here; run with --device cpu", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    from contrastseg.pretrain.run import pretrain
    from contrastseg.pretrain.settings import PretrainSettings

    work = Path(tempfile.mkdtemp(prefix="bench-pretrain-"))
    (work / "data").mkdir()
    (work / "data" / "manifest.json").write_text(json.dumps({"format": "contrastseg-dataset/1", "entries": [
        {"id": "ts-example-ct", "image": str(DATA / "example_ct.nii.gz"), "labels": str(DATA / "example_seg_fast_force_split.nii.gz"),
         "id_map": "totalsegmentator"},
        {"id": "ts-example-dicom", "image": str(DATA / "example_ct_dicom"), "labels": str(DATA / "example_seg_dicom.nii.gz"),
         "id_map": "totalsegmentator", "phase": "contrast"}]}))
    device = torch.device(args.device)
    rows = []
    for name in args.strategies.split(","):
        steps = args.steps + args.warmup
        s = PretrainSettings(strategy=name, steps=steps, batch=args.batch, slice_size=args.slice_size, probe=16,
                             target_organ=3, region_slices=8, max_regions=512, epoch_steps=10_000)
        run = work / name
        t0 = time.perf_counter()
        pretrain(work / "data", run, s, device)
        wall = time.perf_counter() - t0
        phases = [p for p in json.loads((run / "summary.json").read_text())["phases"]]
        seen_intra = False
        for ph in phases:
            if ph.startswith("intra"):
                if seen_intra:
                    continue  # the K intra-organ models are the same network as inter: one row is enough
                seen_intra = True
            folder = run if ph == "train" else run / ph
            r, n = rate(folder, args.warmup if ph in ("train", "inter", "student") else 0)
            rows.append({"strategy": name, "phase": ph, "items_per_s": round(r, 2), "steps_timed": n, "wall_s": round(wall, 1)})
    env = {"device": str(device), "threads": args.threads, "torch": torch.__version__, "cpu": platform.processor() or platform.machine(),
           "precision": "bf16 autocast + channels-last" if device.type == "cuda" else "fp32",
           "batch": args.batch, "patch": PretrainSettings().patch, "slice_size": args.slice_size,
           "encoder": f"ResNet-{PretrainSettings().depth} widths {PretrainSettings().widths} stem {PretrainSettings().stem}"}
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(0)
    print(json.dumps(env))
    print(f"| strategy | phase | items/s | steps timed |\n| --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['strategy']} | {r['phase']} | {r['items_per_s']:.1f} | {r['steps_timed']} |")
    if args.json:
        args.json.write_text(json.dumps({"environment": env, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
