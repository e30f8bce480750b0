"""Does contrastive pretraining help the default model's recipe? Random initialisation against a pretrained
encoder for the refined network, three seeds each, scored on the unseen CTs with manual masks.

The question the five papers answer yes to: with few labelled CTs, does a contrastively pretrained encoder give a
better segmentation network than random weights? Here, for the recipe `scripts/train_default_model.py` ships:
  pretraining: every CT the licences allow (the TotalSegmentator example CT, its DICOM series and subject s0009,
               their labels unused), organ attention from the default model's coarse network as at inference;
               DCC-CL (`--strategy dcc`) by default, the method written for contrast that differs per organ and phase.
  fine-tuning: the refined network on the recipe's labelled CTs (the same three, their labels), with patch
               augmentation, from random weights (arm `random`) or from the pretrained encoder (arm `dcc`); the
               default model's coarse network gives the attention, so only the refined network differs.
  scoring:     the whole pipeline (`scripts/evaluate_default_model.py`) on IRCAD patient 1 and CHAOS CT 1, never
               trained or pretrained on (non-commercial licences: evaluation only), and the refined network alone
               on IRCAD with its manual masks as perturbed attention (`pretrain_experiment.oracle_dice`).
Seed s seeds both the pretraining and the fine-tuning of arm `dcc` and the fine-tuning of arm `random`.

    python scripts/pretrain_default_experiment.py --base Resources/Models/default            # ~40 min on 2 threads
    python scripts/pretrain_default_experiment.py --report                                   # the table again

Resumable: a step whose output exists is skipped (work/pretrain-default). The numbers: docs/pretraining.md.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from pretrain_experiment import Runner, oracle_dice  # noqa: E402
from train_default_model import manifest  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
LISTED = ["spleen", "right_kidney", "left_kidney", "liver", "aorta", "inferior_vena_cava"]
CASES = ["ircad", "chaos"]


def datasets(work: Path) -> tuple[Path, Path]:
    """The pretraining dataset (the recipe's CTs without labels) and the fine-tuning one (with)."""
    labelled = manifest()
    pre, fine = work / "data-pretrain", work / "data-finetune"
    for folder in (pre, fine):
        folder.mkdir(parents=True, exist_ok=True)
    (fine / "manifest.json").write_text(json.dumps(labelled, indent=1))
    unlabelled = [{k: v for k, v in e.items() if k not in ("labels", "id_map", "organs")} | {"labels": None}
                  for e in labelled["entries"]]
    (pre / "manifest.json").write_text(json.dumps({"format": labelled["format"], "entries": unlabelled}, indent=1))
    return pre, fine


def scores(work: Path, arm: str, model: Path, threads: int) -> dict:
    """Pipeline Dice per case over the listed organs, and the refined network alone on IRCAD."""
    out = work / "eval" / arm
    if not all((out / f"{c}.json").exists() for c in CASES):
        subprocess.run([sys.executable, str(REPO / "scripts" / "evaluate_default_model.py"), "--model", str(model),
                        "--cases", ",".join(CASES), "--out", str(out), "--threads", str(threads)], check=True)
    oracle = out / "oracle.json"
    if not oracle.exists():
        oracle_dice(model, oracle)
    result = {}
    for case in CASES:
        organs = json.loads((out / f"{case}.json").read_text())["refined"]["organs"]
        result[case] = {k: round(organs[k]["dice"], 4) for k in LISTED if k in organs}
    result["oracle"] = round(json.loads(oracle.read_text())["mean_dice"], 4)
    return result


def report(results: dict) -> str:
    def spread(values):
        return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}" if len(values) > 1 else f"{values[0]:.3f}"

    lines = ["| arm | seeds | IRCAD mean of six | IRCAD R / L kidney | CHAOS liver | IRCAD refined alone (manual attention) |",
             "| --- | --- | --- | --- | --- | --- |"]
    for arm in sorted({k.rsplit("-s", 1)[0] for k in results}):
        runs = [v for k, v in results.items() if k.rsplit("-s", 1)[0] == arm]
        lines.append(f"| {arm} | {len(runs)} | {spread([statistics.mean(r['ircad'].values()) for r in runs])} | "
                     f"{spread([r['ircad']['right_kidney'] for r in runs])} / {spread([r['ircad']['left_kidney'] for r in runs])} | "
                     f"{spread([r['chaos']['liver'] for r in runs])} | {spread([r['oracle'] for r in runs])} |")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, default=REPO / "work" / "pretrain-default")
    ap.add_argument("--base", type=Path, default=REPO / "Resources" / "Models" / "default",
                    help="model whose coarse network gives the attention (and stays the same in every arm)")
    ap.add_argument("--strategy", default="dcc")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--pretrain-steps", type=int, default=1000)
    ap.add_argument("--finetune-steps", type=int, default=300)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--report", action="store_true", help="print the table of the finished runs")
    args = ap.parse_args()
    work = args.work
    results_file = work / "results.json"
    results = json.loads(results_file.read_text()) if results_file.exists() else {}
    if args.report:
        print(report(results))
        return 0
    work.mkdir(parents=True, exist_ok=True)
    pre, fine = datasets(work)
    run = Runner(work)
    t = ["--threads", str(args.threads), "--progress", "none", "--device", "cpu"]
    ft = ["--base", str(args.base), "--steps", str(args.finetune_steps), "--batch", str(args.batch), "--augment",
          "--organs", ",".join(LISTED)]
    for seed in [int(s) for s in args.seeds.split(",")]:
        for arm in ("random", args.strategy):
            name = f"{arm}-s{seed}"
            if name in results:
                continue
            init = []
            if arm != "random":
                p = work / f"pretrain-{name}"
                run(f"pretrain-{name}", ["pretrain", str(pre), "--strategy", arm, "--run", str(p), "--attention", str(args.base),
                                         "--steps", str(args.pretrain_steps), "--batch", str(args.batch), "--seed", str(seed), *t],
                    p / "encoder.safetensors")
                init = ["--init", str(p / "encoder.safetensors")]
            r = work / f"finetune-{name}"
            run(f"finetune-{name}", ["finetune", str(fine), "--run", str(r), *init, "--seed", str(seed), *ft, *t],
                r / "model" / "card.json", seed)
            results[name] = scores(work, name, r / "model", args.threads) | {
                "seconds": {k: v.get("seconds") for k, v in run.times.items() if k.endswith(name)}}
            results_file.write_text(json.dumps(results, indent=1))
            print(report(results), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
