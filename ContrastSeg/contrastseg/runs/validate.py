"""The last two steps of a run: before/after metrics on the held-out entries, then the model card and the store.

Validation segments each held-out CT with the new model and with the model the run started from, with the
same pipeline as `contrastseg segment`, and scores both against the user's corrected labels. The numbers
go into the model card, so `contrastseg models show` and the Slicer module can say whether the run helped.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

import numpy as np

from .. import store
from ..errors import ContrastSegError
from ..io import write_json


def _model_dir(run_dir: Path, state: dict, plan: dict | None = None) -> Path:
    from .plan import final_model_step, read_plan

    step = final_model_step(plan or read_plan(run_dir))
    announced = state.get("outputs", {}).get(step, {}).get("model")
    return Path(announced) if announced else run_dir / "steps" / step / "model"


def _mean(values: list[float]) -> float | None:
    return round(float(np.mean(values)), 4) if values else None


def validate(run_dir: Path, plan: dict, report: Callable[[float, str], None]) -> dict:
    """Before/after numbers; writes validation.json (+ validation.png).

    - Held-out cases (marked for validation, or the rule's pick): the new and the base model, both scored
      against the user's labels.
    - Corrected cases the run trained on: "before" is the initial segmentation against the correction (how
      much the user had to fix, recorded at export), "after" the new model on the same CT. They are training
      cases, so "after" says the model learned the correction, not that it generalises; the table says so.
    """
    import SimpleITK as sitk
    import torch

    from ..dataset import entries
    from ..infer import pick_device, segment
    from ..io import read_image, read_labels
    from ..metrics import evaluate
    from ..models.files import load_model
    from ..organs import BY_ID, BY_KEY
    from .plan import read_state

    val = entries(run_dir / "data" / "validation.json", labelled_only=True)
    corrected = [e for e in entries(run_dir / "data" / "train.json", labelled_only=True)
                 if (e.record.get("provenance") or {}).get("initial_dice")]
    result = {"entries": [e.id for e in val], "model": None, "base": None, "delta_mean_dice": None, "per_entry": {},
              "held_out": bool(val), "note": plan.get("validation_rule") or ("" if val else "no labelled case was held out for validation"),
              "corrected": {}}
    request = plan.get("request", {})
    if request.get("threads"):
        torch.set_num_threads(int(request["threads"]))
    if not val and not corrected:
        write_json(result, run_dir / "validation.json")
        return result
    device = pick_device(request.get("device", "auto"))
    models = {"model": load_model(_model_dir(run_dir, read_state(run_dir), plan)), "base": load_model(plan["base"]["path"])}
    val_ids = {e.id for e in val}
    jobs = [(e, key) for e in val for key in models] + [(e, "model") for e in corrected]
    truths: dict[str, tuple] = {}
    for done, (e, key) in enumerate(jobs):
        report(done / len(jobs), f"segmenting {e.id} with the {'new' if key == 'model' else 'base'} model")
        if e.id not in truths:
            image = read_image(e.image)
            truth = sitk.GetArrayFromImage(read_labels(e.labels, image, e.id_map))
            annotated = e.organs if e.organs is not None else sorted(int(v) for v in np.unique(truth) if v)
            truths = {e.id: (image, truth, annotated)}  # one CT in memory at a time
        image, truth, annotated = truths[e.id]
        model = models[key]
        organs = sorted(set(annotated) & set(model.organs))
        if not organs:
            raise ContrastSegError(f"case {e.id} annotates none of the organs model {key} segments")
        pred = sitk.GetArrayFromImage(segment(image, model, organs, device=device).labels)
        scores = evaluate(pred, {o: truth == o for o in organs}, tuple(reversed(image.GetSpacing())), organs)
        if e.id in val_ids:
            result["per_entry"].setdefault(e.id, {})[key] = scores
        else:
            result["corrected"][e.id] = {"before": e.record["provenance"]["initial_dice"],
                                         "after": {k: m["dice"] for k, m in scores["organs"].items()},
                                         "trained_on": True}
    if val:
        # the means compare like with like: the organs both models list (a new model may list organs the base
        # does not, e.g. the stomach of a correction under a base that leaves it out, and these would pull its
        # mean down though no organ got worse)
        common = {BY_ID[o].key for o in set(models["model"].organs) & set(models["base"].organs)}
        result["compared_organs"] = sorted(common)
        for key in models:
            organ_dice: dict[str, list[float]] = {}
            for per in result["per_entry"].values():
                for organ, m in per[key]["organs"].items():
                    organ_dice.setdefault(organ, []).append(m["dice"])
            means = [_mean([m["dice"] for k, m in p[key]["organs"].items() if k in common]) for p in result["per_entry"].values()]
            result[key] = {"mean_dice": _mean([v for v in means if v is not None]),
                           "organs": {k: _mean(v) for k, v in organ_dice.items()}}
        if result["model"]["mean_dice"] is not None and result["base"]["mean_dice"] is not None:
            result["delta_mean_dice"] = round(result["model"]["mean_dice"] - result["base"]["mean_dice"], 4)
    write_json(result, run_dir / "validation.json")
    try:
        from ..plots import dice_bars

        if val:
            dice_bars({BY_KEY[k].name: v for k, v in result["model"]["organs"].items()},
                      run_dir / "validation.png", title=f"{plan['name']}: Dice on {len(val)} held-out case(s) "
                      f"(base {result['base']['mean_dice']}, new {result['model']['mean_dice']})")
    except Exception as err:  # a picture must never fail a run
        result["plot_error"] = repr(err)
    return result


def organ_table(val: dict | None) -> list[dict]:
    """Rows of the before/after table (CLI and Slicer): one per organ and case, before -> after Dice."""
    rows = []
    for case, per in ((val or {}).get("per_entry") or {}).items():
        for organ, m in per.get("model", {}).get("organs", {}).items():
            before = per.get("base", {}).get("organs", {}).get(organ, {}).get("dice")
            rows.append({"case": case, "organ": organ, "kind": "held out (base model -> new model)",
                         "before": before, "after": m.get("dice")})
    for case, per in ((val or {}).get("corrected") or {}).items():
        for organ in sorted(set(per["before"]) | set(per["after"])):
            rows.append({"case": case, "organ": organ, "kind": "trained on (initial segmentation -> new model)",
                         "before": per["before"].get(organ), "after": per["after"].get(organ)})
    return rows


def register_model(run_dir: Path, plan: dict, state: dict) -> str:
    """Complete the new model's card (data snapshot, strategy, settings, before/after metrics) and register it.

    Idempotent: if a crash came after registering, the store's copy (which names this run) is kept.
    """
    from ..models.files import read_card, write_card

    name = plan["name"]
    existing = next((m for m in store.list_models() if m["name"] == name), None)
    if existing is not None:
        if existing["card"].get("run", {}).get("path") == str(run_dir):
            return name
        raise ContrastSegError(f"the store already has a model named '{name}' from another run")
    model_dir = _model_dir(run_dir, state, plan)
    card = read_card(model_dir)
    request = plan.get("request", {})
    val = state.get("validation") or {}
    card.update({
        "name": name,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "base_model": plan["base"],
        "strategy": request.get("strategy") if "pretrain" in request.get("stages", []) else None,
        "stages": request.get("stages"),
        "run": {"path": str(run_dir), "settings": request, "steps": [s.get("argv", s["kind"]) for s in plan["steps"]]},
        "data_snapshot": plan["data"],
        "validation": {k: val.get(k) for k in ("entries", "model", "base", "delta_mean_dice", "compared_organs", "note",
                                               "held_out", "corrected") if k in val},
    })
    write_card(model_dir, card)
    store.register(model_dir, name)
    return name
