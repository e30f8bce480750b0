"""Cost of the refined network's stem settings (METHODS.md §1.4 asks to measure them): inference time per
128x128 organ patch and parameters, for each stem and depth, on the CPU (or --device cuda).

    python scripts/bench_refined_stems.py --threads 2
"""

from __future__ import annotations

import argparse
import time

import torch

from contrastseg.models.refined import RefinedNet


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    configs = [(18, (32, 64, 128, 256), 128), (18, (64, 128, 256, 512), 256), (50, (64, 128, 256, 512), 512)]
    print("| depth | widths | ASPP | stem | params (M) | ms per 128x128 patch |")
    print("| --- | --- | --- | --- | --- | --- |")
    for depth, widths, aspp in configs:
        for stem in ("paper", "stride2", "authors"):
            net = RefinedNet(depth, widths, stem, aspp, skip=True).to(device).eval()
            x = torch.randn(args.batch, 2, 128, 128, device=device)
            with torch.inference_mode():
                net(x)
                if device.type == "cuda":
                    torch.cuda.synchronize()
                t = time.perf_counter()
                for _ in range(args.repeats):
                    net(x)
                if device.type == "cuda":
                    torch.cuda.synchronize()
            ms = (time.perf_counter() - t) / args.repeats / args.batch * 1000
            params = sum(p.numel() for p in net.parameters()) / 1e6
            print(f"| {depth} | {'-'.join(map(str, widths))} | {aspp} | {stem} | {params:.1f} | {ms:.1f} |", flush=True)
            if depth == 50 and stem == "authors" and device.type == "cpu":
                break


if __name__ == "__main__":
    main()
