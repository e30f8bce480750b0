"""Interactive correction with simulated clicks (METHODS.md §10): Dice after 1, 3 and 5 clicks and NoC@85 per
organ, starting from the model's own segmentation, through the warm worker (`contrastseg serve --stdio`).

After each prediction the next click goes to the innermost voxel (largest distance to the boundary, in mm)
of the largest error component: a positive click on a miss, a negative click on a false positive. Cases
(read in place from ../shared/data): IRCAD patient 1 (manual masks) and the TotalSegmentator CTs (their
labels are a model's output). The worker applies today's rules (docs/clicks.md): a positive click takes its organ
from whichever organ holds it, a negative click in the middle of a piece takes the piece. Prints the table per
organ, the means per CT, how many voxels the clicks took from other organs, and the time per interaction.

    python scripts/click_eval.py [--clicks 5] [--cases ircad,ts_example_ct_sm] [--organs right_kidney,spleen] [--model M]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))

from loop_experiment import CASES, truth_of  # noqa: E402  (the same cases and truths as the loop experiment)


def next_click(pred: np.ndarray, truth: np.ndarray, spacing_zyx) -> tuple[bool, tuple[int, int, int]] | None:
    """(positive?, (z, y, x)) of the next simulated click, or None if prediction == truth."""
    errors = []
    for positive, region in ((True, truth & ~pred), (False, pred & ~truth)):
        cc, n = ndimage.label(region)
        if n:
            sizes = np.bincount(cc.ravel())[1:]
            errors.append((sizes.max(), positive, cc == (sizes.argmax() + 1)))
    if not errors:
        return None
    _, positive, component = max(errors, key=lambda e: e[0])
    dist = ndimage.distance_transform_edt(component, sampling=spacing_zyx)
    return positive, tuple(int(v) for v in np.unravel_index(dist.argmax(), dist.shape))


def dice(a: np.ndarray, b: np.ndarray) -> float:
    total = int(a.sum()) + int(b.sum())
    return 2 * int((a & b).sum()) / total if total else 1.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clicks", type=int, default=5)
    ap.add_argument("--cases", default="ircad,ts_example_ct,ts_example_ct_sm,ts_dicom")
    ap.add_argument("--organs", default=None, help="organ keys (default: every organ the case's truth holds)")
    ap.add_argument("--model", default=None)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    from contrastseg.io import read_image
    from contrastseg.organs import BY_ID, parse_organs
    from contrastseg.serve_client import Client

    wanted = set(parse_organs(args.organs)) if args.organs else None
    work = Path(tempfile.mkdtemp(prefix="click-eval-"))
    client = Client([sys.executable, "-m", "contrastseg.cli", "serve", "--stdio", "--threads", str(args.threads)],
                    env=dict(os.environ)).start()
    rows, times, taken = [], [], {}
    try:
        for case in args.cases.split(","):
            image_path = CASES[case][0]
            image = read_image(image_path)
            truth = truth_of(case, image)
            spacing = tuple(reversed(image.GetSpacing()))
            ct = client.request("open", ct=str(image_path), model=args.model)
            # uncompressed label files, as the Slicer module exchanges them with the worker at every click
            seg = client.request("segment", ct=ct["ct"], output=str(work / f"{case}.nii"))
            assert seg["ok"], seg
            for organ in sorted(truth):
                if (wanted and organ not in wanted) or organ not in ct["organs"]:
                    continue
                current = work / f"{case}.nii"
                pred = sitk.GetArrayFromImage(sitk.ReadImage(str(current))) == organ
                scores = [dice(pred, truth[organ])]
                noc = 0 if scores[0] >= 0.85 else None  # NoC@85: clicks until Dice >= 0.85; 0 if it starts there
                points_pos, points_neg = [], []
                for k in range(1, args.clicks + 1):
                    click = next_click(pred, truth[organ], spacing)
                    if click is None:
                        break
                    positive, (z, y, x) = click
                    lps = image.TransformIndexToPhysicalPoint((x, y, z))
                    (points_pos if positive else points_neg).append([-lps[0], -lps[1], lps[2]])
                    out = work / f"{case}-refined.nii"  # overwritten at each click (34 MB for IRCAD)
                    t0 = time.perf_counter()
                    answer = client.request("refine", ct=ct["ct"], organ=BY_ID[organ].key, labels=str(current),
                                            output=str(out), points_ras=points_pos, neg_points_ras=points_neg)
                    times.append(time.perf_counter() - t0)
                    assert answer["ok"], answer
                    for other, n in (answer["change"].get("taken") or {}).items():
                        key = (case, BY_ID[organ].key, other)
                        taken[key] = taken.get(key, 0) + n
                    pred = sitk.GetArrayFromImage(sitk.ReadImage(str(out))) == organ
                    scores.append(dice(pred, truth[organ]))
                    if noc is None and scores[-1] >= 0.85:
                        noc = k
                rows.append((case, BY_ID[organ].key, scores, noc))
                print(f"{case} {BY_ID[organ].key}: " + " -> ".join(f"{s:.3f}" for s in scores), flush=True)
            client.request("close", ct=ct["ct"])
    finally:
        client.stop()
        shutil.rmtree(work, ignore_errors=True)
    pick = lambda s, k: s[min(k, len(s) - 1)]  # noqa: E731  (a case that reached Dice 1 keeps its last score)
    print("\n| CT | organ | Dice before | after 1 click | after 3 | after 5 | NoC@85 |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for case, organ, s, noc in rows:
        print(f"| {case} | {organ.replace('_', ' ')} | {s[0]:.3f} | {pick(s, 1):.3f} | {pick(s, 3):.3f} | {pick(s, 5):.3f} | "
              f"{noc if noc is not None else f'>{args.clicks}'} |")
    print("\n| CT | organs | mean Dice before | after 1 click | after 3 | after 5 | NoC@85 reached |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for case in dict.fromkeys(r[0] for r in rows):
        mine = [r for r in rows if r[0] == case]
        mean = lambda k: float(np.mean([pick(r[2], k) for r in mine]))  # noqa: E731
        reached = sum(1 for r in mine if r[3] is not None)
        print(f"| {case} | {len(mine)} | {mean(0):.3f} | {mean(1):.3f} | {mean(3):.3f} | {mean(5):.3f} | "
              f"{reached} of {len(mine)} |")
    if taken:
        print("\nvoxels the clicks for an organ took from another organ (all clicks):")
        for (case, organ, other), n in sorted(taken.items()):
            print(f"  {case} {organ} <- {other}: {n}")
    if times:
        print(f"\ntime per interaction (request to answer, label files read and written): median {np.median(times):.1f} s, max {max(times):.1f} s "
              f"({len(times)} interactions, {args.threads} threads)")


if __name__ == "__main__":
    main()
