"""Does contrastive pretraining help with ONE labelled volume? Every strategy against random initialisation,
scored by per-organ Dice on IRCAD patient 1 (manual masks). CPU-sized: see docs/results.md for the settings
and the numbers. Resumable: a step whose output exists is skipped; delete work/pretrain-exp to start over.

    python scripts/pretrain_experiment.py --base work/default/coarse/model

Data (all read in place from ../shared/data; nothing is copied):
  pretraining: every CT, no labels: TotalSegmentator example_ct and its 20-slice DICOM series, IRCAD patient 1.
               Phases in the manifest: IRCAD "contrast" (its README); example_ct "non-contrast" and the DICOM
               series "contrast": the aorta's median HU in their TotalSegmentator label maps (41 and 151 HU,
               `contrastseg.pretrain.data.estimate_phase`), written down because the base coarse model finds no
               aorta in them to estimate from (supcon-mt and ce refuse a CT without a phase). Organ attention
               for all three comes from the base coarse model (`--attention`), as at inference. IRCAD's CT is the
               test image: using it unlabelled for self-supervised pretraining is transductive (stated in
               the results); its masks are used only by `contrastseg evaluate`.
  fine-tuning: example_ct with its label map (TotalSegmentator output): the one labelled volume.
  voxel-simsiam: uses labels by design (Dice); it gets the same one labelled volume.
Every command runs as its own process with 1 torch thread; `finetune` and `train-coarse` are started through a
wrapper that seeds torch first, because they build their networks without seeding (weights would otherwise
differ run to run for reasons unrelated to the pretraining).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
TS = DATA / "totalsegmentator-examples"
IRCAD = DATA / "ircad-3d-01-patient1"
ORGANS = "spleen,right_kidney,left_kidney,liver,aorta,inferior_vena_cava,portal_splenic_vein"  # what IRCAD scores
ENCODER_STRATEGIES = ("simclr", "supcon-mt", "dcc", "ce", "polycl-o", "polycl-s", "separeg")
SEEDED = "import sys, torch; torch.manual_seed(int(sys.argv[1])); from contrastseg.cli import main; sys.exit(main(sys.argv[2:]))"


def manifests(work: Path) -> tuple[Path, Path]:
    pre, fine = work / "data-pretrain", work / "data-finetune"
    for folder in (pre, fine):
        folder.mkdir(parents=True, exist_ok=True)
    src = "public file read in place from ../shared/data"
    (pre / "manifest.json").write_text(json.dumps({"format": "contrastseg-dataset/1", "entries": [
        {"id": "ts-example-ct", "image": str(TS / "example_ct.nii.gz"), "labels": None, "phase": "non-contrast",
         "source": f"TotalSegmentator (Apache-2.0), {src}"},
        {"id": "ts-example-dicom", "image": str(TS / "example_ct_dicom"), "labels": None, "phase": "contrast",
         "source": f"TotalSegmentator (Apache-2.0), {src}"},
        {"id": "ircad-patient1", "image": str(IRCAD / "PATIENT_DICOM"), "labels": None, "phase": "contrast",
         "source": f"3D-IRCADb-01 patient 1 (CC BY-NC-ND 4.0), {src}"}]}, indent=1))
    (fine / "manifest.json").write_text(json.dumps({"format": "contrastseg-dataset/1", "entries": [
        {"id": "ts-example-ct", "image": str(TS / "example_ct.nii.gz"), "labels": str(TS / "example_seg_fast_force_split.nii.gz"),
         "id_map": "totalsegmentator", "source": f"TotalSegmentator (Apache-2.0), labels are TotalSegmentator output, {src}"}]}, indent=1))
    return pre, fine


def oracle_dice(model_dir: Path, out: Path, slice_step: int = 4, seed: int = 0) -> dict:
    """Refined network alone, given IRCAD's own masks as attention, perturbed like a coarse mask.

    The coarse model decides which organs the pipeline can find at all (a missed organ has no attention and
    nothing to refine), so pipeline Dice mostly measures the coarse model. Here every organ gets attention:
    its manual mask, dilated or eroded by up to 3 px and shifted by up to 3 px per slice (the perturbation the
    refined network is trained with, fixed seed), on every `slice_step`-th slice of the refined grid
    (1.5 mm in-plane). Dice against the unperturbed mask on those slices; `copy` is the Dice of the perturbed
    attention itself, i.e. of a network that returns its attention channel unchanged.
    """
    import numpy as np
    import SimpleITK as sitk
    import torch

    from contrastseg.infer import refine
    from contrastseg.io import read_image
    from contrastseg.metrics import load_truth
    from contrastseg.models.files import load_model
    from contrastseg.organs import BY_ID, parse_organs
    from contrastseg.patches import perturb_mask
    from contrastseg.preprocess import inplane_spacing, labels_to_grid, prepare

    torch.set_num_threads(1)
    model = load_model(model_dir)
    image = read_image(IRCAD / "PATIENT_DICOM")
    organs = parse_organs(ORGANS)
    truth = load_truth(IRCAD / "MASKS_DICOM.zip", image)
    lab = np.zeros(sitk.GetArrayViewFromImage(image).shape, np.uint8)
    for o in sorted(truth, key=lambda o: -truth[o].sum()):  # large organs first: vessels inside the liver stay vessels
        lab[truth[o]] = o
    fine = prepare(image, inplane_spacing(image, model.card["refined"]["inplane_spacing"]))
    gt = labels_to_grid(lab, image, fine.grid)[::slice_step]
    rng = np.random.default_rng(seed)
    att = np.zeros_like(gt)
    for o in organs:
        for z in range(len(gt)):
            if (gt[z] == o).any():
                att[z][perturb_mask(gt[z] == o, rng) & (att[z] == 0)] = o
    pred = refine(model.refined, fine.array[::slice_step], att, organs, torch.device("cpu"))

    def dice(a, b):
        return float(2 * (a & b).sum() / max(1, a.sum() + b.sum())) if (a.any() or b.any()) else None

    result = {BY_ID[o].key: {"dice": dice(pred == o, gt == o), "copy": dice(att == o, gt == o)} for o in organs}
    scored = [v for v in result.values() if v["dice"] is not None]
    summary = {"organs": result, "mean_dice": float(np.mean([v["dice"] for v in scored])),
               "mean_copy": float(np.mean([v["copy"] for v in scored])), "slice_step": slice_step}
    out.write_text(json.dumps(summary, indent=1))
    return summary


class StepFailed(Exception):
    pass


class Runner:
    """Runs CLI steps, skips those already done, and logs command lines and wall times to work/log.jsonl."""

    def __init__(self, work: Path, dry: bool = False):
        self.work, self.dry = work, dry
        self.log = work / "log.jsonl"
        self.times = {}
        if self.log.exists():
            for line in self.log.read_text().splitlines():
                rec = json.loads(line)
                self.times[rec["name"]] = rec

    def __call__(self, name: str, argv: list[str], done: Path, seed: int | None = None) -> float:
        if done.exists():
            return self.times.get(name, {}).get("seconds", float("nan"))
        cmd = [sys.executable, "-c", SEEDED, str(seed)] + argv if seed is not None else [sys.executable, "-m", "contrastseg.cli"] + argv
        shown = ("python -c '<seed torch " + str(seed) + ">' contrastseg " if seed is not None else "contrastseg ") + " ".join(argv)
        print(f"\n[{time.strftime('%H:%M:%S')}] {name}: {shown}", flush=True)
        if self.dry:
            return 0.0
        t0, r0 = time.time(), resource.getrusage(resource.RUSAGE_CHILDREN)
        proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
        seconds = round(time.time() - t0, 1)
        r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = round(r1.ru_utime - r0.ru_utime + r1.ru_stime - r0.ru_stime, 1)  # wall time suffers from other users of the CPU; this does not
        if proc.returncode != 0:
            print(proc.stdout[-2000:], proc.stderr[-3000:], file=sys.stderr)
            raise StepFailed(f"step {name} failed: {(proc.stderr.strip().splitlines() or ['?'])[-1]}")
        rec = {"name": name, "command": shown, "seconds": seconds, "cpu_seconds": cpu, "finished": time.strftime("%Y-%m-%d %H:%M:%S")}
        with open(self.log, "a") as f:
            f.write(json.dumps(rec) + "\n")
        self.times[name] = rec
        print(f"    {seconds} s wall, {cpu} s CPU", flush=True)
        return seconds


def markdown(table: dict, times: dict) -> str:
    """The results as markdown tables (pipeline Dice, refined-alone Dice, CPU seconds per arm)."""
    keys = ["spleen", "right_kidney", "left_kidney", "liver", "aorta", "inferior_vena_cava", "portal_splenic_vein"]
    short = ["spleen", "R kid", "L kid", "liver", "aorta*", "IVC*", "portal"]
    f = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731
    lines = ["| arm | " + " | ".join(short) + " | mean |", "| --- |" + " --- |" * (len(keys) + 1)]
    for arm, row in table.items():
        if row["mean_dice"] is None:
            continue
        lines.append(f"| {arm} | " + " | ".join(f(row["dice"].get(k)) for k in keys) + f" | **{f(row['mean_dice'])}** |")
    oracle = [(a, r["oracle"]) for a, r in table.items() if "oracle" in r]
    if oracle:
        lines += ["", "| arm (refined network alone, perturbed manual attention) | " + " | ".join(short) + " | mean |",
                  "| --- |" + " --- |" * (len(keys) + 1)]
        first = oracle[0][1]
        lines.append("| *copy the attention (reference)* | " + " | ".join(f(first["organs"][k]["copy"]) for k in keys)
                     + f" | *{f(first['mean_copy'])}* |")
        for arm, o in oracle:
            lines.append(f"| {arm} | " + " | ".join(f(o["organs"][k]["dice"]) for k in keys) + f" | **{f(o['mean_dice'])}** |")
    lines += ["", "| step | wall s | CPU s |", "| --- | --- | --- |"]
    total = 0.0
    for name, rec in times.items():
        lines.append(f"| {name} | {rec.get('seconds', '-')} | {rec.get('cpu_seconds', '-')} |")
        total += rec.get("cpu_seconds") or 0.0
    lines.append(f"| **total** | | **{total:.0f}** |")
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, default=REPO / "work" / "pretrain-exp")
    ap.add_argument("--base", type=Path, default=REPO / "work" / "default" / "coarse" / "model", help="coarse model: attention + segmentation")
    ap.add_argument("--pretrain-steps", type=int, default=60)
    ap.add_argument("--pretrain-batch", type=int, default=8)
    ap.add_argument("--slice-size", type=int, default=128, help="PolyCL slice size (the paper: 256; 128 to fit a CPU budget)")
    ap.add_argument("--finetune-steps", type=int, default=60)
    ap.add_argument("--finetune-batch", type=int, default=8)
    ap.add_argument("--random-seeds", type=int, default=2, help="random-initialisation fine-tunes (seeds 0..n-1): the noise floor")
    ap.add_argument("--coarse-steps", type=int, default=60)
    ap.add_argument("--coarse-crop", default="32,64,64")
    ap.add_argument("--strategies", default=",".join(ENCODER_STRATEGIES))
    ap.add_argument("--skip-voxel", action="store_true")
    ap.add_argument("--seed-check", default="random:2,simclr:1,ce:1",
                    help="extra fine-tunes NAME:SEED scored by refined-alone Dice only: is a difference larger than seed noise?")
    ap.add_argument("--no-oracle", dest="oracle", action="store_false", help="skip the refined-network-alone Dice")
    ap.add_argument("--dry-run", action="store_true")
    args = ap.parse_args()
    if not (args.base / "card.json").exists():
        raise SystemExit(f"no coarse model at {args.base}; train one (scripts/train_default_model.py) or pass --base")
    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    pre, fine = manifests(work)
    run = Runner(work, args.dry_run)
    t = ["--threads", "1", "--progress", "none", "--device", "cpu"]
    ircad_ct = str(IRCAD / "PATIENT_DICOM")
    arms = {}

    def score(arm: str, model: Path, coarse_only: bool = False) -> None:
        pred = work / "pred" / f"{arm}.nii.gz"
        pred.parent.mkdir(exist_ok=True)
        run(f"segment-{arm}", ["segment", ircad_ct, "-o", str(pred), "--model", str(model), "--organs", ORGANS,
                               "--timings", str(work / "pred" / f"{arm}.timings.json"), *(["--coarse-only"] if coarse_only else []), *t], pred)
        metrics = work / "pred" / f"{arm}.dice.json"
        run(f"evaluate-{arm}", ["evaluate", str(pred), str(IRCAD / "MASKS_DICOM.zip"), "--organs", ORGANS, "-o", str(metrics)], metrics)
        arms[arm] = metrics

    score("base-coarse-only", args.base, coarse_only=True)

    ft = ["--base", str(args.base), "--steps", str(args.finetune_steps), "--batch", str(args.finetune_batch), "--organs", ORGANS]
    for seed in range(args.random_seeds):
        r = work / f"finetune-random-s{seed}"
        run(f"finetune-random-s{seed}", ["finetune", str(fine), "--run", str(r), "--seed", str(seed), *ft, *t], r / "model" / "card.json", seed)
        score(f"random-s{seed}", r / "model")

    failed = {}
    for name in args.strategies.split(","):
      try:
        p = work / f"pretrain-{name}"
        extra = ["--slice-size", str(args.slice_size)] if name.startswith("polycl") else []
        run(f"pretrain-{name}", ["pretrain", str(pre), "--strategy", name, "--run", str(p), "--attention", str(args.base),
                                 "--steps", str(args.pretrain_steps), "--batch", str(args.pretrain_batch), "--seed", "0",
                                 *extra, *t], p / "encoder.safetensors")
        r = work / f"finetune-{name}"
        run(f"finetune-{name}", ["finetune", str(fine), "--run", str(r), "--init", str(p / "encoder.safetensors"), "--seed", "0",
                                 *ft, *t], r / "model" / "card.json", 0)
        score(name, r / "model")
      except StepFailed as err:
        failed[name] = str(err)
        print(err, file=sys.stderr)

    if not args.skip_voxel:
        card = json.loads((args.base / "card.json").read_text())
        ch = ",".join(map(str, card["coarse"]["channels"]))
        tc = ["--channels", ch, "--crop", args.coarse_crop, "--organs", ORGANS, "--seed", "0", *t]
        c = args.coarse_steps
        for label, steps, init in (("coarse-random", c, None), ("coarse-random-2x", 2 * c, None), ("coarse-voxel-simsiam", c, True)):
            if init:
                p = work / "pretrain-voxel-simsiam"
                run("pretrain-voxel-simsiam", ["pretrain", str(fine), "--strategy", "voxel-simsiam", "--run", str(p), "--steps", str(c),
                                               "--channels", ch, "--crop", args.coarse_crop, "--organs", ORGANS, "--seed", "0", *t],
                    p / "coarse.safetensors")
            r = work / f"train-{label}"
            run(f"train-{label}", ["train-coarse", str(fine), "--run", str(r), "--steps", str(steps), *tc,
                                   *(["--init", str(work / "pretrain-voxel-simsiam" / "coarse.safetensors")] if init else [])],
                r / "model" / "card.json", 0)
            score(label, r / "model", coarse_only=True)

    for spec in filter(None, args.seed_check.split(",")):  # more seeds, refined-alone Dice only (no segment/evaluate)
        name, seed = spec.split(":")
        r = work / f"finetune-{name}-s{seed}" if name != "random" else work / f"finetune-random-s{seed}"
        arm = r.name[len("finetune-"):]
        init = [] if name == "random" else ["--init", str(work / f"pretrain-{name}" / "encoder.safetensors")]
        run(f"finetune-{arm}", ["finetune", str(fine), "--run", str(r), *init, "--seed", seed, *ft, *t], r / "model" / "card.json", int(seed))
        arms[arm] = work / "pred" / f"{arm}.dice.json"

    if args.oracle:
        for arm in [a for a in arms if not a.startswith(("base", "coarse"))]:
            out = work / "pred" / f"{arm}.oracle.json"
            if not out.exists() and not args.dry_run:
                t0, c0 = time.time(), time.process_time()
                oracle_dice(work / f"finetune-{arm}" / "model", out)
                run.times[f"oracle-{arm}"] = {"seconds": round(time.time() - t0, 1), "cpu_seconds": round(time.process_time() - c0, 1)}
                with open(run.log, "a") as f:
                    f.write(json.dumps({"name": f"oracle-{arm}", **run.times[f"oracle-{arm}"]}) + "\n")
    table = {}
    for arm, path in arms.items():
        m = json.loads(path.read_text()) if path.exists() else {"mean_dice": None, "organs": {}}
        if path.exists() or (work / "pred" / f"{arm}.oracle.json").exists():
            table[arm] = {"mean_dice": m["mean_dice"], "dice": {k: v["dice"] for k, v in m["organs"].items()}}
            oracle = work / "pred" / f"{arm}.oracle.json"
            if oracle.exists():
                table[arm]["oracle"] = json.loads(oracle.read_text())
    (work / "results.json").write_text(json.dumps({"arms": table, "failed": failed, "times": run.times, "settings": vars(args)},
                                                  indent=1, default=str))
    (work / "results-tables.md").write_text(markdown(table, run.times))
    print(json.dumps({a: round(v["mean_dice"], 3) if v["mean_dice"] is not None else None for a, v in table.items()}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
