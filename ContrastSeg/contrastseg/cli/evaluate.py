"""`contrastseg evaluate PRED TRUTH`: per-organ Dice, HD95 and ASSD (mm), printed as a table and written as JSON."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..errors import ContrastSegError
from ..organs import BY_ID, parse_organs

ID_MAPS = ["btcv", "totalsegmentator"]  # contrastseg.dataset.NAMED_ID_MAPS, named here to keep start-up light


def register(sub) -> None:
    p = sub.add_parser("evaluate", help="per-organ Dice, HD95 and ASSD of a label map against the truth",
                       description="Compare a BTCV label map with the truth: a label map (BTCV ids, or mapped with "
                                   "--truth-id-map) or 3D-IRCADb masks (MASKS_DICOM.zip or its folder).")
    p.add_argument("pred", type=Path, help="predicted label map (BTCV ids)")
    p.add_argument("truth", type=Path, help="truth label map, or IRCAD MASKS_DICOM.zip / folder")
    p.add_argument("--truth-id-map", default=None, choices=ID_MAPS, help="id map of the truth label map")
    p.add_argument("--organs", default=None, help="score only these organs (names or ids)")
    p.add_argument("-o", "--output", type=Path, default=None, help="write the metrics as JSON")
    p.add_argument("--bars", type=Path, default=None, help="write a PNG bar chart of per-organ Dice")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import SimpleITK as sitk

    from ..dataset import _id_map
    from ..io import read_labels, write_json
    from ..metrics import evaluate, load_truth
    from ..outputs import check_outputs

    check_outputs({"-o": args.output, "--bars": args.bars}, [args.pred, args.truth])  # never onto an input
    pred_img = read_labels(args.pred)
    truth = load_truth(args.truth, pred_img, _id_map(args.truth_id_map))
    try:
        organs = parse_organs(args.organs) if args.organs else None
    except ValueError as err:
        raise ContrastSegError(str(err)) from None
    pred = sitk.GetArrayFromImage(pred_img)
    spacing_zyx = tuple(reversed(pred_img.GetSpacing()))
    result = evaluate(pred, truth, spacing_zyx, organs)
    result.update({"pred": str(args.pred), "truth": str(args.truth)})
    fmt = lambda v, d=2: "   -  " if v is None else f"{v:6.{d}f}"  # noqa: E731
    print(f"{'organ':<24}{'Dice':>8}{'HD95 mm':>10}{'ASSD mm':>10}  named as another organ")
    for key, m in result["organs"].items():
        worst = max(m["named_as"].items(), key=lambda kv: kv[1], default=None)
        other = f"{100 * m['as_other']:5.1f} %"
        if worst:
            other += f" (most: {worst[0].replace('_', ' ')} {100 * worst[1]:.1f} %)"
        print(f"{BY_ID[m['id']].name:<24}{fmt(m['dice'], 3):>8}{fmt(m['hd95']):>10}{fmt(m['assd']):>10}  {other}")
    print(f"{'mean Dice':<24}{fmt(result['mean_dice'], 3):>8}")
    if args.output:
        write_json(result, args.output)
    if args.bars:
        from ..plots import dice_bars

        dice_bars({BY_ID[m["id"]].name: m["dice"] for m in result["organs"].values()}, args.bars, title=args.pred.name)
    if not result["organs"]:
        print("no organ is present in either the prediction or the truth", file=sys.stderr)
    return 0
