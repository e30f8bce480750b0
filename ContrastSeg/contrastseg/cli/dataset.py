"""`contrastseg dataset add | list | remove | check`: the local dataset of corrected labels.

The same functions back the ContrastSegTraining module's Export button and dataset table.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..organs import BY_ID
from .evaluate import ID_MAPS  # the named id maps, without importing SimpleITK at start-up


def _dataset_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dataset", type=Path, default=None,
                   help="dataset folder (default: $CONTRASTSEG_HOME/dataset, the one the Slicer module uses)")


def register(sub) -> None:
    p = sub.add_parser("dataset", help="the local dataset of corrected labels: add, list, remove, check",
                       description="Manage the local dataset that training runs read. Entries are immutable "
                                   "(re-adding a case makes a new version) and removal moves files to a trash folder.")
    dsub = p.add_subparsers(dest="action", metavar="ACTION", required=True)

    a = dsub.add_parser("add", help="add a CT and its corrected label map (or a CT alone, for pretraining)")
    a.add_argument("image", type=Path, help="CT file or DICOM folder")
    a.add_argument("labels", type=Path, nargs="?", default=None, help="label map (BTCV ids unless --id-map); none: unlabelled")
    a.add_argument("--id-map", default=None, choices=ID_MAPS, help="label ids of LABELS (default: BTCV)")
    a.add_argument("--phase", default=None, help="contrast phase, e.g. arterial, portal, native")
    a.add_argument("--source", default=None, help="free text: where the case comes from")
    a.add_argument("--case", default=None, help="case name (default: the same case as an earlier entry of this image, else the file name)")
    a.add_argument("--id", dest="entry_id", default=None, help="entry id (default: CASE-vN)")
    a.add_argument("--initial", type=Path, default=None, help="the segmentation before correction, to record what was edited")
    a.add_argument("--initial-id-map", default=None, choices=ID_MAPS)
    a.add_argument("--model", default=None, help="the model (name/version) that produced the initial segmentation")
    a.add_argument("--volume-name", default=None, help="the volume's name (default: the file name)")
    a.add_argument("--organs", default=None,
                   help="the organs LABELS annotates, e.g. liver,spleen (default: the ids it holds); training ignores "
                        "the others instead of teaching them as background, and a listed organ with no voxels is 'absent'")
    a.add_argument("--validation", action="store_true",
                   help="hold this case out of training: it only gives before/after numbers")
    _dataset_option(a)
    a.set_defaults(func=run_add)

    ls = dsub.add_parser("list", help="list the entries")
    ls.add_argument("--removed", action="store_true", help="also list removed entries")
    ls.add_argument("--json", action="store_true", help="print the manifest records as JSON")
    _dataset_option(ls)
    ls.set_defaults(func=run_list)

    r = dsub.add_parser("remove", help="remove an entry (its files move to the dataset's trash folder)")
    r.add_argument("entry", help="entry id (see `contrastseg dataset list`)")
    _dataset_option(r)
    r.set_defaults(func=run_remove)

    c = dsub.add_parser("check", help="verify checksums, geometry and label ids of every entry")
    c.add_argument("--fix", action="store_true",
                   help="move files no entry uses (partial files of interrupted writes) to trash/orphans/; "
                        "a referenced file is never touched")
    _dataset_option(c)
    c.set_defaults(func=run_check)


def _folder(args) -> Path:
    from ..dataset_edit import default_dataset

    return args.dataset or default_dataset()


def run_add(args: argparse.Namespace) -> int:
    from ..dataset_edit import add_entry
    from ..errors import ContrastSegError
    from ..organs import parse_organs

    try:
        organs = parse_organs(args.organs) if args.organs else None
    except ValueError as err:
        raise ContrastSegError(str(err)) from None
    rec = add_entry(_folder(args), args.image, args.labels, case=args.case, entry_id=args.entry_id, phase=args.phase,
                    source=args.source, id_map=args.id_map, initial=args.initial, initial_id_map=args.initial_id_map,
                    model=args.model, volume_name=args.volume_name, organs=organs, validation=args.validation)
    names = ", ".join(BY_ID[o].name for o in rec.get("organs", [])) or "none (unlabelled)"
    print(f"added {rec['id']} to {_folder(args)}: organs annotated {names}"
          f"{' (held out for validation)' if rec.get('validation') else ''}")
    before = rec.get("provenance", {}).get("initial_dice")
    if before:
        print("initial segmentation vs the correction (Dice): " + ", ".join(f"{k} {v:.3f}" for k, v in before.items()))
    return 0


def run_list(args: argparse.Namespace) -> int:
    from ..dataset import read_manifest
    from ..dataset_edit import summary_row

    records = [r for r in read_manifest(_folder(args)).get("entries", []) if args.removed or not r.get("removed")]
    if args.json:
        print(json.dumps(records, indent=2))
        return 0
    print(f"{'entry':<28}{'labels':<8}{'organs':>7}  {'phase':<10}{'created':<18}edited")
    for rec in records:
        row = summary_row(rec)
        flag = " (removed)" if row["removed"] else ""
        print(f"{row['id'] + flag:<28}{'yes' if row['labelled'] else 'no':<8}{len(row['organs']):>7}  {row['phase']:<10}"
              f"{row['created']:<18}{', '.join(row['edited'])}")
    labelled = sum(1 for r in records if r.get("labels") and not r.get("removed"))
    print(f"{len(records)} entries, {labelled} labelled", file=sys.stderr)
    return 0


def run_remove(args: argparse.Namespace) -> int:
    from ..dataset_edit import remove_entry

    rec = remove_entry(_folder(args), args.entry)
    moved = ", ".join(rec.get("trash", {}).values()) or "nothing (its image is used by another entry)"
    print(f"removed {rec['id']}; moved to the trash: {moved}")
    return 0


def run_check(args: argparse.Namespace) -> int:
    from ..dataset_edit import check

    problems, warnings = check(_folder(args), fix=args.fix)
    for w in warnings:
        print(f"warning: {w}")
    for p in problems:
        print(f"PROBLEM: {p}")
    print("dataset OK" if not problems else f"{len(problems)} problem(s) found", file=sys.stderr)
    return 1 if problems else 0
