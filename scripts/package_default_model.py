"""Copy a trained model into Resources/Models/default with fp16 weights and the card's validation numbers.

    python scripts/package_default_model.py work/default/refined/model --eval work/eval --clicks docs/click-eval.md
    python scripts/package_default_model.py --clicks docs/click-eval.md    # only the shipped card's click table
    python scripts/package_default_model.py --eval work/eval               # only its validation numbers

The last two forms are for a change of the engine around the same weights (the prompt rules in prompts.py,
the final map's postprocessing in infer.py): the weights files are left as they are, and with --eval only the
cases evaluated again are replaced in the card.

fp16 halves the files (the networks run in fp32: loading casts back). The card gains the list of training CTs
with their licences and the attribution the CC BY data asks for, the per-organ numbers written by
scripts/evaluate_default_model.py (Dice, HD95, ASSD and the share named as another organ, per case: IRCAD
and CHAOS manual truth, unseen; agreement with TotalSegmentator on its CTs) and, with --clicks, the
simulated-click table of scripts/click_eval.py.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from contrastseg.models.files import load_model, read_card, save_stage, write_card
from contrastseg.organs import BY_ID, parse_organs

REPO = Path(__file__).resolve().parents[1]
TARGET = REPO / "Resources" / "Models" / "default"
VERSION = "0.3.0"

NOTES = ("Coarse 3D U-Net at 3 mm taking the CT and a lateral channel (each voxel's distance from the body's "
         "midline), trained on three real CTs and three CTs painted from label-only TotalSegmentator subjects, every "
         "crop with a random contrast phase per structure (kidney cortex and medulla, aorta, portal vein, liver, "
         "mottled arterial spleen, oral contrast), another scanner's calibration, noise, blur and slice thickness, "
         "a field of view that may end inside it, scale, rotation and elastic deformation, never a left-right flip. "
         "Intensities: the abdominal window at fixed HU with the HU above it compressed (an enhanced kidney stays "
         "below bone). Refined network: ResNet-18 at half width with the 'stride2' stem, ASPP and a low-level skip, "
         "trained on organ patches with the same phase and scanner variation. A starting point for a hospital's "
         "own corrected cases, not a clinical model: the README's accuracy table says where it fails.")
ATTRIBUTION = ("Trained on data of the TotalSegmentator project: its example CTs and label maps (Apache-2.0) and "
               "subjects s0009, s0001, s0004 and s0006 of the TotalSegmentator dataset v2.0.1 (CC BY 4.0; Wasserthal J. "
               "et al., TotalSegmentator: robust segmentation of 104 anatomic structures in CT images, Radiology: "
               "Artificial Intelligence 2023, doi 10.1148/ryai.230024).")
PAINTED_SOURCE = "TotalSegmentator dataset v2.0.1 subject {s}, label maps only (CC BY 4.0): CTs painted from the labels"


def training_data(card: dict) -> list[dict]:
    """Each training CT of the card's training records with its licence and source (the card's data list)."""
    seen, out = set(), []
    for stage, rec in (card.get("training") or {}).items():
        for d in rec.get("data", []) if isinstance(rec, dict) else []:
            if d["id"] not in seen:
                seen.add(d["id"])
                out.append({k: d.get(k) for k in ("id", "image", "labels", "license", "source", "image_sha256", "labels_sha256")})
        for folder in rec.get("painted", []) if isinstance(rec, dict) else []:
            subject = Path(folder).parent.name
            if subject not in seen:
                seen.add(subject)
                out.append({"id": f"painted-{subject}", "image": None, "labels": f"{subject}/segmentations",
                            "license": "CC-BY-4.0", "source": PAINTED_SOURCE.format(s=subject)})
    return out


def validation_of(folder: Path) -> dict:
    """{case: title, unseen, per stage mean Dice and per organ Dice, HD95, ASSD, share named as another organ}
    from scripts/evaluate_default_model.py's <case>.json files."""
    validation = {}
    for f in sorted(folder.glob("*.json")):
        row = json.loads(f.read_text())
        validation[row["case"]] = {"title": row["title"], "unseen": row["unseen"], **{
            stage: {"mean_dice": row[stage]["mean_dice"],
                    "organs": {k: {m: v[m] for m in ("dice", "hd95", "assd", "as_other")} for k, v in row[stage]["organs"].items()}}
            for stage in ("coarse", "refined") if stage in row}}
    return validation


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", type=Path, nargs="?", default=None, help="the trained model (omitted: --clicks only)")
    ap.add_argument("--eval", type=Path, default=None, help="folder of <case>.json from scripts/evaluate_default_model.py")
    ap.add_argument("--coarse", type=Path, default=None,
                    help="take the coarse network (and its training record) from this model instead")
    ap.add_argument("--coarse-start", type=Path, action="append", default=[],
                    help="the models --coarse was initialised from (--init), newest first; recorded in the card")
    ap.add_argument("--refined-start", type=Path, default=None,
                    help="the model whose refined network --init started from (a copy of the previous default); "
                         "its training record is kept in the card")
    ap.add_argument("--clicks", type=Path, default=None, help="scripts/click_eval.py's Markdown table (e.g. docs/click-eval.md)")
    ap.add_argument("--organs", default=None,
                    help="comma-separated organ names the card lists (default: every organ trained); an organ left out "
                         "is one no unseen CT shows found (Dice above 0.5): the card says so under 'not_listed'")
    ap.add_argument("--why-not", default="no unseen CT shows it found (Dice above 0.5)",
                    help="the reason recorded for the organs --organs leaves out")
    args = ap.parse_args()
    if args.model is None:  # the weights stay: the engine around them changed (its postprocessing, the clicks)
        if not (args.clicks or args.eval) or args.coarse or args.coarse_start or args.refined_start or args.organs:
            ap.error("without a model, give --eval and/or --clicks only (they update the shipped card's "
                     "validation and click tables)")
        card = read_card(TARGET)
        if args.eval:
            card.setdefault("validation", {}).update(validation_of(args.eval))  # cases not evaluated again stay
        if args.clicks:
            card.setdefault("validation", {})["clicks"] = click_table(args.clicks)
        write_card(TARGET, card)
        print(f"updated the validation of {TARGET / 'card.json'}")
        return
    model = load_model(args.model)
    if args.coarse:
        other = load_model(args.coarse, ("coarse",))
        model.coarse = other.coarse
        record = dict(other.card["training"]["coarse"])
        if args.coarse_start:
            record["started_from"] = [read_card(p)["training"]["coarse"] for p in args.coarse_start]
        model.card = dict(model.card, coarse=other.card["coarse"],
                          training=dict(model.card.get("training", {}), coarse=record))
    if args.refined_start:
        start = read_card(args.refined_start)
        record = dict(model.card["training"]["refined"],
                      init=f"the refined network of model '{start.get('name')}' v{start.get('version')}",
                      started_from=start["training"]["refined"])
        model.card = dict(model.card, training=dict(model.card["training"], refined=record))
    trained = list(model.card["organs"])
    listed = trained
    if args.organs:
        try:
            listed = parse_organs(args.organs)
        except ValueError as err:
            ap.error(str(err))
        if set(listed) - set(trained):
            ap.error(f"--organs names organs the model was not trained for: {sorted(set(listed) - set(trained))}")
    TARGET.mkdir(parents=True, exist_ok=True)
    card = dict(model.card, name="default", organs=listed,
                not_listed={BY_ID[o].key: args.why_not for o in trained if o not in listed}, version=VERSION, notes=NOTES, license="Apache-2.0", attribution=ATTRIBUTION,
                training_data=training_data(model.card),
                coarse=dict(model.card["coarse"], weights=save_stage(TARGET, "coarse", model.coarse, half=True, organs=trained)),
                refined=dict(model.card["refined"], weights=save_stage(TARGET, "refined", model.refined, half=True)))
    if args.eval:
        card["validation"] = validation_of(args.eval)
    if args.clicks:
        card.setdefault("validation", {})["clicks"] = click_table(args.clicks)
    write_card(TARGET, card)
    print(f"packaged {args.model} into {TARGET}")


def click_table(path: Path) -> dict:
    """{CT: {organ: {"dice": [before, 1, 3, 5 clicks], "noc85": n or None}}} from click_eval.py's table."""
    out: dict = {}
    for line in path.read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 7 or cells[0] in ("CT", "---") or cells[1].isdigit():  # a digit: the per-CT summary's count
            continue
        try:
            dice = [float(c) for c in cells[2:6]]
        except ValueError:
            continue
        out.setdefault(cells[0], {})[cells[1].replace(" ", "_")] = {
            "dice": dice, "noc85": int(cells[6]) if cells[6].isdigit() else None}
    if not out:
        raise SystemExit(f"{path}: no click_eval.py table rows found")
    return out


if __name__ == "__main__":
    main()
