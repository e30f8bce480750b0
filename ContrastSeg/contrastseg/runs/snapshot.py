"""What a run trains on: the validation rule, and the frozen data snapshot (written at plan, checked at start).

The snapshot is the runs' record of which entries (ids and SHA-256) trained the model and which were held out;
`check_snapshot` refuses to train when a file changed after planning.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..errors import ContrastSegError

AUTO_VALIDATION_FROM = 4  # labelled cases needed before one (not a correction) is held out without being marked


def is_correction(record: dict) -> bool:
    """A case the user corrected (exported with its initial segmentation), as opposed to an imported label map."""
    prov = record.get("provenance") or {}
    return bool(prov.get("edited") is not None or prov.get("initial_dice") is not None or prov.get("model"))


def split_validation(labelled: list[dict], seed: int = 0) -> tuple[list[dict], list[dict], str]:
    """(train, held out, why): the validation rule (docs/retraining.md).

    Corrected cases always train. A case is held out only when the user marked it (`dataset add --validation`,
    the checkbox in Slicer), or, when there are at least AUTO_VALIDATION_FROM labelled cases and none is
    marked, one labelled case that is not a correction (chosen by the seed).
    """
    marked = [r for r in labelled if r.get("validation")]
    if marked:
        held = marked
        why = f"{len(marked)} case(s) marked for validation held out: {', '.join(r['id'] for r in marked)}"
    else:
        candidates = sorted((r for r in labelled if not is_correction(r)), key=lambda r: r["id"])
        if len(labelled) >= AUTO_VALIDATION_FROM and candidates:
            pick = candidates[int(np.random.default_rng(seed).integers(len(candidates)))]
            held = [pick]
            why = f"{pick['id']} held out for validation ({len(labelled)} labelled cases, it is not a correction)"
        else:
            held = []
            why = ("no case was held out for validation: every labelled case trains (mark one with "
                   "`dataset add --validation` or the Validation checkbox of the export to get after-numbers)")
    ids = {r["id"] for r in held}
    return [r for r in labelled if r["id"] not in ids], held, why


def write_snapshot(dataset: Path, records: list[dict], path: Path) -> list[dict]:
    """Write records as a dataset manifest with absolute paths; returns their ids and checksums."""
    from ..dataset import DATASET_FORMAT
    from ..io import write_json

    base = Path(dataset)
    out = []
    for r in records:
        rec = dict(r)
        for key in ("image", "labels"):
            if rec.get(key):
                rec[key] = str((base / rec[key]).resolve())
        out.append(rec)
    write_json({"format": DATASET_FORMAT, "entries": out, "snapshot_of": str(base.resolve())}, path)
    return [{"id": r["id"], "image_sha256": r.get("image_sha256"), "labels_sha256": r.get("labels_sha256")} for r in records]


def check_snapshot(run_dir: Path, plan: dict) -> None:
    """The files the plan froze still have their SHA-256: a dataset changed after planning is refused."""
    from ..checksum import sha256

    for split in ("train", "validation"):
        frozen = {d["id"]: d for d in plan["data"].get(split, [])}
        try:
            records = json.loads((Path(run_dir) / "data" / f"{split}.json").read_text())["entries"]
        except (OSError, json.JSONDecodeError, KeyError) as err:
            raise ContrastSegError(f"{run_dir}/data/{split}.json is unreadable ({err}); plan the run again") from None
        for rec in records:
            want = frozen.get(rec["id"], {})
            for key in ("image", "labels"):
                if rec.get(key) and want.get(f"{key}_sha256"):
                    path = Path(rec[key])
                    if not path.exists() or sha256(path) != want[f"{key}_sha256"]:
                        raise ContrastSegError(
                            f"the dataset changed after this run was planned: {rec['id']}'s {key} ({path}) "
                            f"{'is gone' if not path.exists() else 'has another SHA-256'}; plan a new run")
