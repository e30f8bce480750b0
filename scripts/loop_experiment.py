"""Does the loop learn? Correct one CT, retrain with the defaults, and score CTs the run never trained on.

Start: the bundled default model. Correction: IRCAD patient 1's manual masks, exported as the clinician's
correction of the default model's own segmentation (`dataset add --initial`). Retraining: `contrastseg run plan
--start` with the defaults (coarse and refined stages), and the same with `--stages pretrain,finetune` for each
pretraining strategy; several seeds each. Scored before (the default model) and after on:
  - CHAOS CT case 1: another hospital and scanner, manual liver mask: does the correction generalise?
  - the TotalSegmentator CTs (labels are TotalSegmentator's output, not ground truth): is anything forgotten?
    example_ct is also the shipped replay case, so it is replayed during retraining; example_ct_sm is another
    TotalSegmentator run on a crop of it; the DICOM series is the default model's other training CT (it is in
    the experiment's dataset as an unlabelled CT, which only pretraining reads).
  - IRCAD patient 1 itself: the corrected case, trained on (does the model take the correction?).

Everything is read in place from ../shared/data; the correction label map (an IRCAD conversion) stays in the
work folder, which git ignores. Resumable: each finished run and each scored model is remembered in the
results file (Dice numbers only); run it again to add seeds or strategies. The README's numbers are
docs/loop-experiment.json.

    python scripts/loop_experiment.py --seeds 0,1,2                          # the defaults only
    python scripts/loop_experiment.py --strategies simclr,dcc --seeds 0 --pretrain-steps 60
    python scripts/loop_experiment.py --report                               # print the tables
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from eval_cases import chaos_truth  # noqa: E402  (one reader of CHAOS's masks for every evaluation)

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
TS = DATA / "totalsegmentator-examples"
IRCAD = DATA / "ircad-3d-01-patient1"
CHAOS = DATA / "chaos-ct-case1"
DEFAULT = "default"  # the no-pretraining configuration's name in results.json

CASES = {  # name: (image, truth, id map, what it tells)
    "chaos": (CHAOS / "DICOM_anon", "chaos", None, "unseen hospital, manual liver mask"),
    "ts_example_ct": (TS / "example_ct.nii.gz", TS / "example_seg_fast_force_split.nii.gz", "totalsegmentator",
                      "base training CT, replayed (TotalSegmentator labels)"),
    "ts_example_ct_sm": (TS / "example_ct_sm.nii.gz", TS / "example_seg.nii.gz", "totalsegmentator",
                         "crop of it, other TotalSegmentator run"),
    "ts_dicom": (TS / "example_ct_dicom", TS / "example_seg_dicom.nii.gz", "totalsegmentator",
                 "base's other training CT, not replayed (TotalSegmentator labels)"),
    "ircad": (IRCAD / "PATIENT_DICOM", IRCAD / "MASKS_DICOM.zip", None, "the corrected case (trained on)"),
}


def cli(*args: str, env: dict | None = None) -> None:
    subprocess.run([sys.executable, "-m", "contrastseg.cli", *args], check=True, env=env)


def truth_of(name: str, image):
    """{BTCV id: mask} of a case on `image`'s grid: CHAOS's PNG masks, or a label map / IRCAD's masks."""
    from contrastseg.dataset import NAMED_ID_MAPS
    from contrastseg.metrics import load_truth

    _, truth, id_map, _ = CASES[name]
    if truth == "chaos":
        return chaos_truth(image)
    return load_truth(Path(truth), image, NAMED_ID_MAPS[id_map] if id_map else None)


def score(model_dir: Path, threads: int) -> dict:
    """Per case and organ Dice of a model (the full coarse + refined pipeline, on the CT's own grid)."""
    import SimpleITK as sitk
    import torch

    from contrastseg.infer import segment
    from contrastseg.io import read_image
    from contrastseg.metrics import evaluate
    from contrastseg.models.files import load_model

    torch.set_num_threads(threads)
    model = load_model(model_dir)
    out = {}
    for name, (image_path, *_rest) in CASES.items():
        image = read_image(image_path)
        truth = truth_of(name, image)
        organs = sorted(set(truth) & set(model.organs))
        pred = sitk.GetArrayFromImage(segment(image, model, organs, device=torch.device("cpu")).labels)
        m = evaluate(pred, {o: truth[o] for o in organs}, tuple(reversed(image.GetSpacing())), organs)
        out[name] = {k: v["dice"] for k, v in m["organs"].items()}
    return out


def prepare(work: Path, env: dict, threads: int) -> Path:
    """The experiment's dataset: IRCAD patient 1 corrected (manual masks) + the TS DICOM series unlabelled."""
    import SimpleITK as sitk

    from contrastseg.io import read_image
    from contrastseg.metrics import load_truth

    dataset = work / "dataset"
    if (dataset / "manifest.json").exists():
        return dataset
    image = read_image(IRCAD / "PATIENT_DICOM")
    masks = load_truth(IRCAD / "MASKS_DICOM.zip", image)
    labels = np.zeros(tuple(reversed(image.GetSize())), dtype=np.uint8)
    for oid in sorted(masks):  # vessels (8-10) are painted after the liver (6): IRCAD's masks overlap there
        labels[masks[oid]] = oid
    out = sitk.GetImageFromArray(labels)
    out.CopyInformation(image)
    correction, initial = work / "ircad-correction.nii.gz", work / "ircad-initial.nii.gz"
    sitk.WriteImage(out, str(correction), useCompression=True)
    cli("segment", str(IRCAD / "PATIENT_DICOM"), "-o", str(initial), "--threads", str(threads), "--progress", "none",
        "--model", "default", env=env)
    cli("dataset", "add", str(IRCAD / "PATIENT_DICOM"), str(correction), "--initial", str(initial), "--model", "default",
        "--case", "ircad-patient1", "--phase", "contrast", "--dataset", str(dataset), env=env)
    # phases (for supcon-mt and ce): both are contrast-enhanced (IRCAD's README; the TS series' aorta median
    # HU in its TotalSegmentator labels is 151, contrastseg.pretrain.data.estimate_phase)
    cli("dataset", "add", str(TS / "example_ct_dicom"), "--case", "ts-dicom", "--phase", "contrast", "--dataset",
        str(dataset), env=env)
    return dataset


def load_results(path: Path) -> dict:
    return json.loads(path.read_text()) if path.exists() else {"runs": {}, "scores": {}}


def save_results(path: Path, results: dict) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(results, indent=1))
    os.replace(tmp, path)


def run_config(strategy: str, seed: int, dataset: Path, env: dict, args) -> tuple[str, float]:
    name = f"loop-{strategy}-s{seed}"
    stages = ["--stages", "pretrain,finetune", "--strategy", strategy, "--pretrain-steps", str(args.pretrain_steps)] \
        if strategy != DEFAULT else []
    run_dir = Path(env["CONTRASTSEG_HOME"]) / "runs" / name
    t0 = time.perf_counter()
    if (run_dir / "plan.json").exists():
        cli("run", "start", str(run_dir), "--progress", "none", env=env)
    else:
        cli("run", "plan", "--dataset", str(dataset), "--name", name, "--seed", str(seed), "--threads", str(args.threads),
            "--base", "default", *stages, "--start", "--progress", "none", env=env)
    return name, round(time.perf_counter() - t0, 1)


def report(results: dict) -> None:
    base = results["scores"].get("base")
    if not base:
        print("no scores yet")
        return
    configs: dict[str, list[str]] = {}
    for name in results["runs"]:
        if name in results["scores"]:
            configs.setdefault(results["runs"][name]["strategy"], []).append(name)
    print("\n### Per organ, before (default model) and after retraining with the defaults (mean over seeds)\n")
    names = configs.get(DEFAULT, [])
    print(f"{len(names)} seed(s); run wall time {', '.join(str(results['runs'][n]['seconds']) for n in names)} s\n")
    print("| CT | organ | before | after | change |")
    print("| --- | --- | --- | --- | --- |")
    for case, organs in base.items():
        for organ, before in organs.items():
            after = [results["scores"][n][case].get(organ) for n in names]
            after = [a for a in after if a is not None]
            if before is None or not after or (before == 0 and not any(after)):
                continue  # organs neither model finds (gallbladder, pancreas, adrenals) say nothing here
            a = float(np.mean(after))
            sd = f" ± {np.std(after):.3f}" if len(after) > 1 else ""
            print(f"| {case} | {organ.replace('_', ' ')} | {before:.3f} | {a:.3f}{sd} | {a - before:+.3f} |")
    print("\n### Mean Dice per CT over the organs scored (never-found organs count 0): before, and after each "
          "configuration (mean ± sd over seeds)\n")
    cases = list(base)
    print("| configuration | seeds | " + " | ".join(cases) + " |")
    print("| --- | --- | " + " | ".join("---" for _ in cases) + " |")
    mean = lambda d: float(np.mean([v for v in d.values() if v is not None])) if d else float("nan")  # noqa: E731
    print("| before (default model) | - | " + " | ".join(f"{mean(base[c]):.3f}" for c in cases) + " |")
    for strategy, names in sorted(configs.items(), key=lambda kv: (kv[0] != DEFAULT, kv[0])):
        cells = []
        for c in cases:
            vals = [mean(results["scores"][n][c]) for n in names]
            cells.append(f"{np.mean(vals):.3f}" + (f" ± {np.std(vals):.3f}" if len(vals) > 1 else ""))
        label = "retrained, defaults (no pretraining)" if strategy == DEFAULT else f"pretrain {strategy} + finetune"
        print(f"| {label} | {len(names)} | " + " | ".join(cells) + " |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, default=REPO / "work" / "loop-exp")
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--strategies", default="", help="pretraining strategies to try besides the defaults, comma-separated")
    ap.add_argument("--no-default", action="store_true", help="skip the no-pretraining configuration")
    ap.add_argument("--pretrain-steps", type=int, default=60)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--report", action="store_true", help="only print the tables of what is done")
    ap.add_argument("--results", type=Path, default=None,
                    help="results file (default WORK/results.json; docs/loop-experiment.json holds the published ones: "
                         "give it to add seeds or strategies to them)")
    args = ap.parse_args()
    if not IRCAD.exists() or not CHAOS.exists():
        raise SystemExit(f"needs ../shared/data (IRCAD patient 1 and CHAOS case 1) beside the repository: {DATA}")
    args.work.mkdir(parents=True, exist_ok=True)
    results_path = args.results or args.work / "results.json"
    results = load_results(results_path)
    if args.report:
        report(results)
        return
    env = dict(os.environ, CONTRASTSEG_HOME=str(args.work / "home"))
    os.environ["CONTRASTSEG_HOME"] = env["CONTRASTSEG_HOME"]
    dataset = prepare(args.work, env, args.threads)
    from contrastseg.paths import default_model
    from contrastseg.store import resolve

    if "base" not in results["scores"]:
        results["scores"]["base"] = score(default_model(), args.threads)
        save_results(results_path, results)
    strategies = ([] if args.no_default else [DEFAULT]) + [s for s in args.strategies.split(",") if s]
    for strategy in strategies:
        for seed in (int(s) for s in args.seeds.split(",")):
            name = f"loop-{strategy}-s{seed}"
            if name not in results["runs"]:
                _, seconds = run_config(strategy, seed, dataset, env, args)
                results["runs"][name] = {"strategy": strategy, "seed": seed, "seconds": seconds}
                save_results(results_path, results)
            if name not in results["scores"]:
                results["scores"][name] = score(resolve(name), args.threads)
                save_results(results_path, results)
            print(f"{name}: done ({results['runs'][name]['seconds']} s)", flush=True)
    report(results)


if __name__ == "__main__":
    main()
