"""What each ingredient of the default model's recipe does on CTs it never saw: one coarse run per ingredient left
out, against the whole recipe, on the same short schedule.

Every run starts from default model v0.2's networks (as v0.3 did), trains the coarse network only, for the same
number of steps and seed, with TotalSegmentator subject s0009 held out (`--holdout ts-s0009`), so three CTs are
unseen: IRCAD patient 1 and CHAOS CT 1 (manual masks, other hospitals) and s0009 (reference masks, another
field of view). Runs (`scripts/train_default_model.py` flags):

    recipe        the whole recipe
    no-painted    without the three CTs painted from label-only subjects
    no-lateral    without the lateral (distance from the midline) input channel
    no-phase      without per-structure contrast phases (--phase 0)
    no-fov        without field-of-view cuts (--fov 0)
    percentile    v0.2's percentile intensity window instead of fixed HU with the top compressed

Scored coarse-only (`scripts/evaluate_default_model.py --coarse-only`) over the six organs the card lists, where a
case's truth has them: Dice and the share of each organ's true voxels named as another organ. Resumable: a
finished run or score is not redone. Results: work/ablation/results.json (and docs/ablation.json with --publish).

    mkdir -p work/v02 && git archive 5101c7b^ Resources/Models/default | tar -x -C work/v02   # v0.2: every run starts there
    python scripts/ablate_default_model.py --start-from work/v02/Resources/Models/default --steps 300 \
        [--seed 1] [--work work/ablation-s1] [--runs recipe,no-lateral] [--device cuda]
    python scripts/ablate_default_model.py --report
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RUNS = {
    "recipe": [],
    "no-painted": ["--no-painted"],
    "no-lateral": ["--no-lateral"],
    "no-phase": ["--phase", "0"],
    "no-fov": ["--fov", "0"],
    "percentile": ["--intensity", "percentile"],
}
CASES = ["ircad", "chaos", "s0009"]
LISTED = ["spleen", "right_kidney", "left_kidney", "liver", "aorta", "inferior_vena_cava"]


def run(name: str, args) -> dict:
    work = args.work / name
    model = work / "coarse" / "model"
    if not (model / "card.json").exists():
        t = time.time()
        subprocess.run([sys.executable, str(REPO / "scripts" / "train_default_model.py"), "--work", str(work),
                        "--start-from", str(args.start_from), "--holdout", "ts-s0009", "--coarse-only",
                        "--coarse-steps", str(args.steps), "--seed", str(args.seed), "--threads", str(args.threads),
                        "--device", args.device, *RUNS[name]], check=True)
        (work / "train_seconds.txt").write_text(f"{time.time() - t:.0f}\n")
    scores = work / "eval"
    if not all((scores / f"{c}.json").exists() for c in CASES):
        subprocess.run([sys.executable, str(REPO / "scripts" / "evaluate_default_model.py"), "--model", str(model),
                        "--coarse-only", "--cases", ",".join(CASES), "--out", str(scores), "--threads", str(args.threads)],
                       check=True)
    out = {"train_seconds": int((work / "train_seconds.txt").read_text()) if (work / "train_seconds.txt").exists() else None}
    for case in CASES:
        organs = json.loads((scores / f"{case}.json").read_text())["coarse"]["organs"]
        out[case] = {k: {"dice": round(organs[k]["dice"], 3), "as_other": round(organs[k]["as_other"], 3)}
                     for k in LISTED if k in organs}
    return out


def mean(values) -> float | None:
    values = [v for v in values if v is not None]
    return round(sum(values) / len(values), 3) if values else None


def report(results: dict) -> str:
    lines = ["| run | " + " | ".join(f"{c} mean Dice" for c in CASES) + " | all three | IRCAD R / L kidney | IRCAD worst named-as-other |",
             "| --- |" + " --- |" * (len(CASES) + 3)]
    for name in RUNS:
        r = results.get(name)
        if r is None:
            continue
        means = [mean(o["dice"] for o in r[c].values()) for c in CASES]
        every = mean(o["dice"] for c in CASES for o in r[c].values())
        ircad = r["ircad"]
        worst = max(ircad.items(), key=lambda kv: kv[1]["as_other"])
        lines.append(f"| {name} | " + " | ".join(f"{m:.3f}" for m in means) + f" | **{every:.3f}** | "
                     f"{ircad['right_kidney']['dice']:.3f} / {ircad['left_kidney']['dice']:.3f} | "
                     f"{worst[0].replace('_', ' ')} {100 * worst[1]['as_other']:.1f} % |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--start-from", type=Path, default=None, help="default model v0.2's folder (needed to train)")
    ap.add_argument("--work", type=Path, default=REPO / "work" / "ablation")
    ap.add_argument("--steps", type=int, default=250)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu", help="cpu or cuda (bf16 on a GPU, as train_default_model.py)")
    ap.add_argument("--runs", default=",".join(RUNS))
    ap.add_argument("--report", action="store_true", help="only print the table of what is done")
    ap.add_argument("--publish", action="store_true", help="also write docs/ablation.json")
    args = ap.parse_args()
    path = args.work / "results.json"
    results = json.loads(path.read_text()) if path.exists() else {}
    if not args.report:
        if args.start_from is None or not (args.start_from / "card.json").exists():
            sys.exit("give --start-from: the folder of default model v0.2 (see the docstring for how to get it)")
        args.work.mkdir(parents=True, exist_ok=True)
        for name in args.runs.split(","):
            if name not in RUNS:
                sys.exit(f"unknown run '{name}' (one of {', '.join(RUNS)})")
            results[name] = run(name, args)
            results["_settings"] = {"steps": args.steps, "seed": args.seed, "threads": args.threads, "device": args.device,
                                    "start_from": "default model v0.2", "holdout": "ts-s0009", "cases": CASES}
            path.write_text(json.dumps(results, indent=1) + "\n")
            print(report(results), flush=True)
    print(report(results))
    if args.publish:
        (REPO / "docs" / "ablation.json").write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
