"""Evaluate a model (default: the bundled one) on the shared real CTs: Dice, HD95, ASSD and identity.

For each case (scripts/eval_cases.py) and organ: Dice of the coarse and the refined stage, the refined stage's
HD95 and ASSD (mm), and the share of the organ's true voxels named as *another* organ (a confusion of
identity, which Dice does not separate from a missed boundary). IRCAD patient 1 and CHAOS are unseen manual
truth; the TotalSegmentator CTs were training data (agreement, not generalisation).

    python scripts/evaluate_default_model.py [--model PATH] [--cases ircad,chaos] [--out work/eval] [--coarse-only]

Writes work/eval/<case>.json and an overlay of each case (IRCAD's stays on your machine: its licence forbids
redistributing renderings), and prints Markdown tables.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from eval_cases import available, truth_of  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def score_case(case, model, device, coarse_only: bool, out: Path) -> dict:
    import SimpleITK as sitk

    from contrastseg.infer import segment
    from contrastseg.io import read_image
    from contrastseg.metrics import evaluate
    from contrastseg.overlay import render_overlay

    image = read_image(case.image)
    truth = truth_of(case, image)
    organs = [o for o in truth if o in model.organs]
    t = time.perf_counter()
    seg = segment(image, model, refined=not coarse_only and model.refined is not None, device=device)
    seconds = time.perf_counter() - t
    spacing = tuple(reversed(image.GetSpacing()))
    row = {"case": case.key, "title": case.title, "unseen": case.unseen, "seconds": round(seconds, 1)}
    for stage, labels in (("coarse", seg.coarse), ("refined", seg.labels)):
        if stage == "refined" and coarse_only:
            continue
        row[stage] = evaluate(sitk.GetArrayFromImage(labels), truth, spacing, organs)
    render_overlay(image, seg.labels, out / f"{case.key}.png", title=case.title)
    return row


def table(row: dict) -> str:
    dice = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731
    pct = lambda v: "-" if v is None else f"{100 * v:.1f} %"  # noqa: E731
    mm = lambda v: "-" if v is None else f"{v:.1f}"  # noqa: E731
    last = row.get("refined") or row["coarse"]
    lines = [f"\n### {row['title']}\n", "| organ | Dice coarse | Dice refined | HD95 | ASSD | named as another organ |",
             "| --- | --- | --- | --- | --- | --- |"]
    for key, m in last["organs"].items():
        c = row["coarse"]["organs"].get(key, {})
        r = row.get("refined", {}).get("organs", {}).get(key, {})
        worst = max(m["named_as"].items(), key=lambda kv: kv[1], default=None)
        other = pct(m["as_other"]) + (f" ({worst[0].replace('_', ' ')} {pct(worst[1])})" if worst and worst[1] >= 0.005 else "")
        lines.append(f"| {key.replace('_', ' ')} | {dice(c.get('dice'))} | {dice(r.get('dice'))} | {mm(m.get('hd95'))} | "
                     f"{mm(m.get('assd'))} | {other} |")
    lines.append(f"| **mean** | {dice(row['coarse']['mean_dice'])} | {dice(row.get('refined', {}).get('mean_dice'))} | | | |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="a model folder or store name (default: the bundled model)")
    ap.add_argument("--out", type=Path, default=REPO / "work" / "eval")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--cases", default=None, help="comma-separated case keys (default: all found): "
                    "ircad, chaos, ts-ct, ts-dicom, s0009")
    ap.add_argument("--coarse-only", action="store_true")
    args = ap.parse_args()

    import torch

    from contrastseg.infer import pick_device
    from contrastseg.models.files import load_model
    from contrastseg.paths import default_model

    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    model = load_model(Path(args.model) if args.model else default_model(),
                       stages=("coarse",) if args.coarse_only else ("coarse", "refined"))
    device = pick_device("auto")
    for case in available(args.cases.split(",") if args.cases else None):
        row = score_case(case, model, device, args.coarse_only, args.out)
        (args.out / f"{case.key}.json").write_text(json.dumps(row, indent=1))
        print(table(row), flush=True)


if __name__ == "__main__":
    main()
