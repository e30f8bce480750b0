"""`contrastseg refine-organ`: fix one organ of a label map with a few clicks, a box or a rough stroke.

The refined network takes the hints as its attention channel (METHODS §10); only the chosen organ changes.
Points are Slicer's RAS millimetres (`--point-ras`) or voxel indices of the CT's own grid in ITK/NIfTI order
(`--point-ijk`); both may repeat.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from ..errors import ContrastSegError
from ._common import add_runtime_options, runtime


def _triple(text: str) -> tuple[float, float, float]:
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not three numbers x,y,z") from None
    if len(values) != 3:
        raise argparse.ArgumentTypeError(f"'{text}' is not three numbers x,y,z")
    return values


def _six(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        values = ()
    if len(values) != 6:
        raise argparse.ArgumentTypeError(f"'{text}' is not six numbers x0,y0,z0,x1,y1,z1")
    return values


def register(sub) -> None:
    p = sub.add_parser("refine-organ", help="re-segment one organ from clicks, a box or a stroke",
                       description="Replace one organ of a label map by the refined network's segmentation from "
                                   "prompts; every other organ's voxels stay as they are.")
    p.add_argument("ct", type=Path, help="CT file or DICOM folder")
    p.add_argument("--labels", type=Path, required=True, help="the current label map (BTCV ids) on the CT's grid")
    p.add_argument("-o", "--output", type=Path, required=True, help="where to write the corrected label map")
    p.add_argument("--organ", required=True, help="the organ to re-segment, e.g. right_kidney (or its BTCV id)")
    p.add_argument("--point-ras", type=_triple, action="append", default=[], help="positive point, RAS mm (repeatable)")
    p.add_argument("--point-ijk", type=_triple, action="append", default=[], help="positive point, voxel i,j,k of the CT")
    p.add_argument("--neg-point-ras", type=_triple, action="append", default=[], help="negative point, RAS mm")
    p.add_argument("--neg-point-ijk", type=_triple, action="append", default=[], help="negative point, voxel i,j,k")
    p.add_argument("--box-ras", type=_six, action="append", default=[], help="box corners x0,y0,z0,x1,y1,z1 in RAS mm")
    p.add_argument("--scribble", type=Path, default=None, help="a mask on the CT's grid (non-zero = a rough stroke)")
    p.add_argument("--ignore-current", action="store_true", help="do not start from the organ's current segment")
    p.add_argument("--model", default=None, help="model name or folder (default: the store's default)")
    add_runtime_options(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from .. import store
    from ..io import check_sidecar, organ_table, read_ct, read_labels, write_labels
    from ..models.files import load_model, model_files, read_card
    from ..organs import parse_organs
    from ..outputs import check_label_output, check_outputs
    from ..prompts import Prompts, ijk_to_lps, ras_to_lps, refine_organ

    try:
        organs = parse_organs(args.organ)
    except ValueError as err:
        raise ContrastSegError(str(err)) from None
    if len(organs) != 1:
        raise ContrastSegError("--organ takes one organ")
    check_label_output(args.output, "-o")
    model_dir = store.resolve(args.model)
    card = read_card(model_dir)
    if organs[0] not in card["organs"]:  # the same sentence as Model.check_covers, before the CT is read
        raise ContrastSegError(f"model '{card.get('name')}' does not cover organ ids {organs}; it covers {card['organs']}")
    # before any computation: no output is an input, one of the model's files, or inside what ContrastSeg keeps
    inputs = [args.ct, args.labels] + ([args.scribble] if args.scribble else []) + model_files(model_dir, card)
    check_outputs({"-o": args.output, "its organ table": organ_table(args.output)}, inputs)
    check_sidecar(args.output)  # an organ table never replaces a file ContrastSeg did not write
    device, progress = runtime(args, {"refine": 1.0})
    t0 = time.perf_counter()
    image = read_ct(args.ct)  # the checks `segment` runs: a label map or a [0, 1] image is not a CT
    current = read_labels(args.labels, image)
    if current.GetSize() != image.GetSize():
        raise ContrastSegError(f"{args.labels} is not on the CT's voxel grid")
    scribble = read_labels(args.scribble, image) if args.scribble else None
    prompts = Prompts(
        positive=[ras_to_lps(p) for p in args.point_ras] + [ijk_to_lps(image, p) for p in args.point_ijk],
        negative=[ras_to_lps(p) for p in args.neg_point_ras] + [ijk_to_lps(image, p) for p in args.neg_point_ijk],
        boxes=[(ras_to_lps(b[:3]), ras_to_lps(b[3:])) for b in args.box_ras], scribble=scribble,
        use_current=not args.ignore_current)
    model = load_model(model_dir)
    progress.begin("refine", f"re-segmenting {args.organ}")
    labels, change = refine_organ(image, current, model, organs[0], prompts, device)
    write_labels(labels, args.output, _ids(labels))
    change["seconds"] = round(time.perf_counter() - t0, 2)
    progress.finish(change=change)
    if progress.mode != "json":
        print(f"wrote {args.output}: {change['organ']} {change['voxels_before']} -> {change['voxels_after']} voxels "
              f"(+{change['added']} -{change['removed']}) in {change['seconds']} s")
    return 0


def _ids(labels) -> list[int]:
    import SimpleITK as sitk

    from ..io import label_values

    return [v for v in label_values(sitk.GetArrayViewFromImage(labels)) if v]
