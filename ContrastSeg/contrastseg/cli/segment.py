"""`contrastseg segment [INPUT] -o OUTPUT`: CT in, BTCV label map (+ organ table, overlay PNG, timings) out."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from ..errors import ContrastSegError
from ..organs import parse_organs
from ..paths import sample_ct
from ..store import resolve
from ._common import add_runtime_options, runtime


def register(sub) -> None:
    p = sub.add_parser("segment", help="segment the abdominal organs of a CT",
                       description="Segment a CT (NIfTI, NRRD, MHA or a DICOM series folder) into BTCV organ labels. "
                                   "With no INPUT, segments the bundled sample CT.")
    p.add_argument("input", nargs="?", type=Path, help="CT file or DICOM folder (default: the bundled sample CT)")
    p.add_argument("-o", "--output", type=Path, required=True, help="label map to write (.nii.gz, .nrrd, .seg.nrrd, .mha)")
    p.add_argument("--model", default=None, help="model folder or model-store name (default: the store's default model)")
    p.add_argument("--organs", default=None, help="comma-separated organ names or ids (default: all the model covers)")
    p.add_argument("--coarse-only", action="store_true", help="stop after the coarse 3D stage")
    p.add_argument("--coarse-output", type=Path, default=None, help="also write the coarse label map here, as soon as it exists")
    p.add_argument("--overlay", type=Path, default=None, help="write a PNG of axial slices with the organs drawn in colour")
    p.add_argument("--timings", type=Path, default=None, help="write per-stage wall times (s) as JSON")
    add_runtime_options(p)
    p.set_defaults(func=run)


def _outputs(args: argparse.Namespace) -> dict[str, Path | None]:
    """Every file this run will write, by the name a message calls it."""
    from ..io import organ_table

    def table(path: Path | None) -> Path | None:
        return None if path is None else organ_table(path)

    return {"output": args.output, "the output's organ table": table(args.output),
            "coarse output": args.coarse_output, "the coarse output's organ table": table(args.coarse_output),
            "overlay": args.overlay, "timings": args.timings}


def run(args: argparse.Namespace) -> int:
    from ..ct_checks import check_memory
    from ..infer import segment
    from ..io import check_sidecar, read_ct, write_labels
    from ..models.files import load_model, model_files, read_card
    from ..outputs import check_label_output, check_outputs

    t_all = time.perf_counter()
    check_label_output(args.output, "output")
    if args.coarse_output:
        check_label_output(args.coarse_output, "coarse output")
    source = args.input or sample_ct()
    model_dir = resolve(args.model)
    card = read_card(model_dir)
    # before any computation: no output is an input (the CT, the model's files), and every folder is writable
    check_outputs(_outputs(args), [source, *model_files(model_dir, card)])
    for label_map in (args.output, args.coarse_output):  # an organ table never replaces a file not ours
        if label_map is not None:
            check_sidecar(label_map)
    try:
        organs = parse_organs(args.organs)
    except ValueError as err:
        raise ContrastSegError(str(err)) from None
    stages = {"read": 0.05, "preprocess": 0.1, "coarse": 0.25, "refine": 0.5, "write": 0.1}
    if args.coarse_only:  # no refine stage: let the overall fraction (and the ETA) reach 1 without it
        del stages["refine"]
    device, progress = runtime(args, stages)
    progress.begin("read", "reading the CT")
    t = time.perf_counter()
    image = read_ct(source)
    model = load_model(model_dir, ("coarse",) if args.coarse_only else ("coarse", "refined"))
    if args.organs is None:
        organs = model.organs
    check_memory(image, model.card, refined=not args.coarse_only, source=source)
    t_read = time.perf_counter() - t

    def on_coarse(labels):
        if args.coarse_output:
            write_labels(labels, args.coarse_output, organs)
            progress.output("coarse", args.coarse_output)

    result = segment(image, model, organs, refined=not args.coarse_only, device=device, progress=progress, on_coarse=on_coarse)
    progress.begin("write", "writing the label map")
    t = time.perf_counter()
    written = write_labels(result.labels, args.output, result.organs)
    progress.output("refined" if not args.coarse_only else "coarse", args.output)
    if args.overlay:
        from ..overlay import render_overlay

        render_overlay(image, result.labels, args.overlay, title=f"ContrastSeg: {Path(source).name}")
        progress.output("overlay", args.overlay)
    timings = {"read": t_read, **result.timings, "write": time.perf_counter() - t, "total": time.perf_counter() - t_all}
    timings = {k: round(v, 3) for k, v in timings.items()}
    if args.timings:
        from ..io import write_json

        write_json({"input": str(source), "device": str(device), "timings_s": timings}, args.timings)
    progress.finish(outputs=[str(p) for p in written], timings=timings, organs=result.organs, notes=result.notes)
    if args.progress != "json":
        for note in result.notes:
            print(note, file=sys.stderr)
        print(f"wrote {', '.join(str(p) for p in written)}" + (f" and {args.overlay}" if args.overlay else ""), file=sys.stderr)
        print("timings (s): " + json.dumps(timings), file=sys.stderr)
    return 0
