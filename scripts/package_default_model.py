"""Copy a trained model into Resources/Models/default with fp16 weights and the card's validation numbers.

    python scripts/package_default_model.py work/default/refined/model --eval work/eval --clicks docs/click-eval.md
    python scripts/package_default_model.py --clicks docs/click-eval.md    # only the shipped card's click table

The second form is for a change of the prompt rules (prompts.py), which changes the clicks' numbers and not
the weights: the weights files are left as they are.

fp16 halves the files (the networks run in fp32: loading casts back). The card gains the per-organ
numbers written by scripts/evaluate_default_model.py (case0 = IRCAD manual masks; the others agreement
with TotalSegmentator output on its example CTs) and, with --clicks, the simulated-click table of
scripts/click_eval.py: both paths of the refined network (a coarse mask's attention, a user's clicks).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from contrastseg.models.files import load_model, read_card, save_stage, write_card

REPO = Path(__file__).resolve().parents[1]
TARGET = REPO / "Resources" / "Models" / "default"
CASE_NAMES = {0: "ircad_patient1_manual", 1: "ts_example_ct_agreement_training", 2: "ts_dicom_agreement_training",
              3: "ts_example_ct_sm_agreement"}

NOTES = ("Refined stem 'stride2' (7x7 stride 2, no max-pool, output stride 16) with a ResNet-18 at half width "
         "(32-256 channels), ASPP width 128 and a DeepLabV3+ skip from stage 1: on 2 CPU threads the paper's "
         "stride-1 stem costs about 16x the compute, and the 'paper' stem (with max-pool, output stride 32) loses "
         "thin organs; the skip restores detail at a fraction of the cost. Coarse U-Net 8-64 channels at 3 mm. "
         "Trained on two CTs only, with TotalSegmentator's labels as targets: a starting point to fine-tune on "
         "corrected local data, not a clinical model. Esophagus is absent from the training labels, so it is not covered. "
         "The refined network was then trained 600 more steps (lr 3e-4) with each patch at a random scale and "
         "contrast (--augment): on the unseen IRCAD CT both of its paths improved, the coarse mask's attention and "
         "a user's clicks. It was not trained on prompt-like masks: on these two CTs they lowered both (README).")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", type=Path, nargs="?", default=None, help="the trained model (omitted: --clicks only)")
    ap.add_argument("--eval", type=Path, default=None, help="folder of case*-{coarse,refined}.json from the evaluation")
    ap.add_argument("--coarse", type=Path, default=None,
                    help="take the coarse network (and its training record) from this model instead")
    ap.add_argument("--coarse-start", type=Path, action="append", default=[],
                    help="the models --coarse was initialised from (--init), newest first; recorded in the card")
    ap.add_argument("--refined-start", type=Path, default=None,
                    help="the model whose refined network --init started from (a copy of the previous default); "
                         "its training record is kept in the card")
    ap.add_argument("--clicks", type=Path, default=None, help="scripts/click_eval.py's Markdown table (e.g. docs/click-eval.md)")
    args = ap.parse_args()
    if args.model is None:
        if not args.clicks or args.eval or args.coarse or args.coarse_start or args.refined_start:
            ap.error("without a model, give --clicks only (it updates the shipped card's click table)")
        card = read_card(TARGET)
        card.setdefault("validation", {})["clicks"] = click_table(args.clicks)
        write_card(TARGET, card)
        print(f"updated the click table of {TARGET / 'card.json'}")
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
    TARGET.mkdir(parents=True, exist_ok=True)
    card = dict(model.card, name="default", version="0.2.0", notes=NOTES, license="Apache-2.0",
                coarse=dict(model.card["coarse"], weights=save_stage(TARGET, "coarse", model.coarse, half=True)),
                refined=dict(model.card["refined"], weights=save_stage(TARGET, "refined", model.refined, half=True)))
    if args.eval:
        validation = {}
        for i, name in CASE_NAMES.items():
            entry = {}
            for stage in ("coarse", "refined"):
                f = args.eval / f"case{i}-{stage}.json"
                if f.exists():
                    data = json.loads(f.read_text())
                    entry[stage] = {"mean_dice": data["mean_dice"],
                                    "organs": {k: {m: v[m] for m in ("dice", "hd95", "assd")} for k, v in data["organs"].items()}}
            if entry:
                validation[name] = entry
        card["validation"] = validation
    if args.clicks:
        card.setdefault("validation", {})["clicks"] = click_table(args.clicks)
    write_card(TARGET, card)
    print(f"packaged {args.model} into {TARGET}")


def click_table(path: Path) -> dict:
    """{CT: {organ: {"dice": [before, 1, 3, 5 clicks], "noc85": n or None}}} from click_eval.py's table."""
    out: dict = {}
    for line in path.read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 7 or cells[0] in ("CT", "---"):
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
