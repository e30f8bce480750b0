"""Where along the body an organ's errors lie, on one of the shared real CTs: per 16 mm slab from the top of
the organ's true mask, the voxels wrongly called the organ, those missed, those named as another organ, and
the Dice the organ would have were that slab alone right, or it and every slab above (metrics.errors_by_height).

    python scripts/errors_by_height.py --case chaos --organ liver [--model PATH] [--slab 16]

It told where the default model's two unmet goals lie (docs/default-model.md): the CHAOS liver's lost Dice
is in the heart above and beside the liver's dome, and IRCAD's IVC named as liver is its stretch behind and
inside the liver, up to the heart.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from eval_cases import CASES, available, truth_of  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--case", required=True, choices=sorted(CASES))
    ap.add_argument("--organ", required=True, help="an organ's key, e.g. liver or inferior_vena_cava")
    ap.add_argument("--model", default=None, help="a model folder (default: the bundled model)")
    ap.add_argument("--slab", type=float, default=16.0, help="slab height in mm")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()

    import SimpleITK as sitk
    import torch

    from contrastseg.infer import pick_device, segment
    from contrastseg.io import read_image
    from contrastseg.metrics import errors_by_height, slice_heights
    from contrastseg.models.files import load_model
    from contrastseg.organs import BY_KEY
    from contrastseg.paths import default_model

    if args.organ not in BY_KEY:
        sys.exit(f"unknown organ '{args.organ}'; one of: {', '.join(sorted(BY_KEY))}")
    if not available([args.case]):
        sys.exit(f"case {args.case} is not in ../shared/data on this machine")
    torch.set_num_threads(args.threads)
    case = CASES[args.case]
    image = read_image(case.image)
    truth = truth_of(case, image)
    organ = BY_KEY[args.organ].id
    if organ not in truth:
        sys.exit(f"{case.title} has no reference mask of {args.organ}")
    model = load_model(Path(args.model) if args.model else default_model())
    labels = sitk.GetArrayFromImage(segment(image, model, device=pick_device("auto")).labels)
    rows = errors_by_height(labels, truth, organ, slice_heights(image), args.slab)
    truth_voxels = int(truth[organ].sum())
    print(f"{case.title}, {args.organ} ({truth_voxels} true voxels); heights from the top of its mask, mm\n")
    print("| slab (mm) | false | missed | named as another organ | Dice were this slab right | ... and every one above |")
    print("| --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['from_mm']:+.0f} to {r['to_mm']:+.0f} | {r['false']} | {r['missed']} | {r['named_as_other']} "
              f"({100 * r['named_as_other'] / truth_voxels:.1f} %) | {r['dice_if_right']:.3f} | "
              f"{r['dice_if_right_from_top']:.3f} |")


if __name__ == "__main__":
    main()
