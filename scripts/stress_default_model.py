"""Does an organ keep its name when the same unseen CT is acquired as another hospital would? The model is run
on IRCAD patient 1 and CHAOS CT 1 remade as thicker slices, another scanner's HU calibration, and a scan that
starts lower or ends higher than this one, each scored against the same manual masks on the new grid.

    python scripts/stress_default_model.py [--model PATH] [--out work/stress] [--variants as-is,top-cut-50] [--pad-ends 16]

Variants:
    as-is          the CT as stored
    slices-3mm     3 mm and 5 mm slices: a Gaussian slab profile (FWHM = the thickness) along the body's
    slices-5mm     axis, then resampled to that step (the manual masks by nearest neighbour)
    hu+40, hu-40   every voxel 40 HU brighter or darker (another scanner's calibration)
    top-cut-30/40/50  the scan starts lower: the top 30 / 40 / 50 % of its height removed (a scan from
                      the kidneys down sees no spleen, or its tip)
    bottom-cut-40  the scan ends higher: the bottom 40 % removed
    from-dome      the scan starts at the liver's dome (the top slice of its manual mask), as a protocol
                   "from the diaphragm" would: little or no lung in the top slice
    phase-native   each organ under its manual mask moved to the HU of a native (non-contrast) or late
    phase-arterial arterial scan (phases.simulate_phase, seed 0: the simulator the model trained with, on an
                   unseen patient's anatomy and texture); only where every listed organ has a mask (IRCAD)

Writes <out>/stress.json and prints a Markdown table: Dice and, in brackets, the share of the organ's true
voxels named as another organ, where the organ is in view. IRCAD and CHAOS stay on this machine: nothing of
them is written but numbers.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from eval_cases import CASES, available, truth_of  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
VARIANTS = ["as-is", "slices-3mm", "slices-5mm", "hu+40", "hu-40", "top-cut-30", "top-cut-40", "top-cut-50",
            "bottom-cut-40", "from-dome", "phase-native", "phase-arterial"]


def remake(image, variant: str, truth: dict | None = None):
    """(the CT as `variant` acquires it, a function taking a mask on `image`'s grid to the new grid); `truth`,
    the manual masks ({BTCV id: mask} on `image`'s grid), places "from-dome" and moves a phase's organs."""
    import SimpleITK as sitk

    from contrastseg.metrics import slice_heights
    from contrastseg.preprocess import resample_like

    def nearest(mask: np.ndarray, new) -> np.ndarray:
        m = sitk.GetImageFromArray(mask.astype(np.uint8))
        m.CopyInformation(image)
        return sitk.GetArrayFromImage(resample_like(m, new)) > 0

    if variant == "as-is":
        return image, lambda m: m
    if variant.startswith("slices-"):
        mm = float(variant[len("slices-"):-2])
        sp = image.GetSpacing()
        slab = sitk.RecursiveGaussian(sitk.Cast(image, sitk.sitkFloat32), sigma=mm / 2.355, direction=2)
        ref = sitk.Image([image.GetSize()[0], image.GetSize()[1], int(image.GetSize()[2] * sp[2] / mm)], sitk.sitkUInt8)
        ref.SetOrigin(image.GetOrigin())
        ref.SetDirection(image.GetDirection())
        ref.SetSpacing((sp[0], sp[1], mm))
        new = sitk.Cast(resample_like(slab, ref, sitk.sitkLinear, -1024.0), sitk.sitkInt16)
        return new, lambda m: nearest(m, new)
    if variant.startswith("hu"):
        return sitk.Cast(image, sitk.sitkInt16) + int(variant[2:]), lambda m: m
    if variant.startswith("phase-"):
        from contrastseg.phases import simulate_phase
        from contrastseg.tissues import btcv_to_ts

        labels = np.zeros(tuple(reversed(image.GetSize())), dtype=np.uint8)
        for organ, mask in sorted(truth.items()):
            labels[mask] = organ
        hu, _ = simulate_phase(sitk.GetArrayFromImage(image).astype(np.float32), btcv_to_ts(labels),
                               np.random.default_rng(0), image.GetSpacing()[::-1], variant[len("phase-"):], oral=0.0)
        new = sitk.GetImageFromArray(np.round(hu).astype(np.int16))
        new.CopyInformation(image)
        return new, lambda m: m
    h = slice_heights(image)
    if variant == "from-dome":
        cut = h[np.nonzero(truth[6].any(axis=(1, 2)))[0]].max()
    else:
        share = int(variant.rsplit("-", 1)[1]) / 100
        cut = h.max() - share * (h.max() - h.min()) if variant.startswith("top-cut") else h.min() + share * (h.max() - h.min())
    keep = np.nonzero(h >= cut if variant.startswith("bottom-cut") else h <= cut)[0]
    lo, hi = int(keep.min()), int(keep.max()) + 1
    return image[:, :, lo:hi], lambda m: m[lo:hi]


def score(image, truth: dict, model, variant: str, device, pad_ends: int | tuple[int, int] | None = None) -> dict:
    """The model on `image` remade as `variant`, against `truth` ({id: mask} on `image`'s grid) moved with it."""
    import SimpleITK as sitk

    from contrastseg.infer import segment
    from contrastseg.metrics import evaluate

    new, move = remake(image, variant, truth)
    moved = {o: move(m) for o, m in truth.items()}
    moved = {o: m for o, m in moved.items() if m.any()}
    refined = model.refined is not None  # a coarse-only model (e.g. a held-out run) is scored on its coarse stage
    labels = sitk.GetArrayFromImage(segment(new, model, refined=refined, device=device, pad_ends=pad_ends).labels)
    res = evaluate(labels, moved, tuple(reversed(new.GetSpacing())), [o for o in moved if o in model.organs])
    return {k: {"dice": m["dice"], "as_other": m["as_other"], "named_as": m["named_as"]} for k, m in res["organs"].items()}


def table(results: dict) -> str:
    organs = list(dict.fromkeys(o for rows in results.values() for row in rows.values() for o in row))
    lines = ["| CT, acquired as | " + " | ".join(o.replace("_", " ") for o in organs) + " |",
             "| --- |" + " --- |" * len(organs)]
    for case, rows in results.items():
        for variant, row in rows.items():
            cells = [f"{row[o]['dice']:.3f} ({100 * row[o]['as_other']:.1f} %)" if o in row else "" for o in organs]
            lines.append(f"| {case} {variant} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="a model folder (default: the bundled model)")
    ap.add_argument("--out", type=Path, default=REPO / "work" / "stress")
    ap.add_argument("--cases", default="ircad,chaos", help="case keys (scripts/eval_cases.py), e.g. s0009 for a "
                    "model that held it out")
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--pad-ends", type=lambda v: tuple(int(k) for k in v.split(",")) if "," in v else int(v), default=None,
                    help="coarse slices repeated at each end of the scan, or BOTTOM,TOP (infer.coarse_probabilities); "
                         "default: as the model's card asks (its top repeated on a scan that starts below the diaphragm)")
    args = ap.parse_args()
    variants = args.variants.split(",")
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        sys.exit(f"unknown variants {unknown}; known: {', '.join(VARIANTS)}")
    import torch

    from contrastseg.infer import pick_device
    from contrastseg.io import read_image
    from contrastseg.models.files import load_model
    from contrastseg.paths import default_model

    torch.set_num_threads(args.threads)
    model = load_model(Path(args.model) if args.model else default_model())
    cases = available([c for c in args.cases.split(",") if c in CASES])
    if not cases:
        sys.exit(f"none of the cases {args.cases} is in ../shared/data on this machine")
    args.out.mkdir(parents=True, exist_ok=True)
    results = {}
    for case in cases:
        results[case.key] = {}
        image = read_image(case.image)  # once per case: IRCAD's masks come out of a zip
        truth = truth_of(case, image)
        for v in variants:
            if v.startswith("phase-") and not set(model.organs) <= set(truth):
                continue  # a phase moves every organ's HU: only a CT with a mask for each one
            results[case.key][v] = score(image, truth, model, v, pick_device("auto"), args.pad_ends)
            print(case.key, v, {k: r["dice"] for k, r in results[case.key][v].items()}, flush=True)
    (args.out / "stress.json").write_text(json.dumps({"model": str(args.model or default_model()), "pad_ends": args.pad_ends,
                                                      "results": results}, indent=1))
    print("\n" + table(results))


if __name__ == "__main__":
    main()
