"""The base model of a run, read without torch (the Slicer panel plans runs): its card, checked against its
weights' SHA-256, and the refined architecture the run trains (the base's, overridden by explicit options)."""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import ContrastSegError
from ..train.settings import RefinedSettings


def read_card(folder: Path) -> dict:
    """A model card as JSON, checked like models.files.read_card but without importing torch (Slicer plans
    runs): its weights files exist and have the SHA-256 the card records, so a broken base is found at plan."""
    from ..checksum import sha256

    path = Path(folder) / "card.json"
    try:
        card = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ContrastSegError(f"no readable model card at {path} ({err})") from None
    if not isinstance(card, dict) or card.get("format") != "contrastseg-model/1" or not card.get("coarse"):
        raise ContrastSegError(f"{path} is not a ContrastSeg model card with a coarse network")
    for stage in ("coarse", "refined"):
        settings = card.get(stage)
        if not isinstance(settings, dict):
            continue
        weights = Path(folder) / str(settings.get("weights"))
        if not weights.is_file():
            raise ContrastSegError(f"model {folder}: its {stage} weights file {settings.get('weights')} is missing")
        if settings.get("sha256") and sha256(weights) != settings["sha256"]:
            raise ContrastSegError(f"model {folder}: {weights.name} does not match the SHA-256 its card records "
                                   "(changed or damaged); copy the model again or choose another base")
    return card


def refined_card(base_card: dict, finetune_args: list[str]) -> dict:
    """The refined network this run trains: the base model's architecture, overridden by explicit options."""
    if base_card.get("refined"):
        card = {k: v for k, v in base_card["refined"].items() if k != "weights"}
    else:  # a coarse-only base: the engine's default refined network
        card = RefinedSettings().card()
    args = finetune_args
    for opt, key, conv in (("--depth", "depth", int), ("--widths", "widths", lambda s: [int(v) for v in s.split(",")]),
                           ("--stem", "stem", str), ("--aspp-width", "aspp_width", int)):
        if opt in args and args.index(opt) + 1 < len(args):
            card[key] = conv(args[args.index(opt) + 1])
    return card


def arch_args(card: dict) -> list[str]:
    args = ["--depth", str(card["depth"]), "--widths", ",".join(map(str, card["widths"])), "--stem", card["stem"],
            "--aspp-width", str(card["aspp_width"])]
    return args + ([] if card.get("skip", True) else ["--no-skip"])
