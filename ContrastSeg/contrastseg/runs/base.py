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
    from ..guards import is_regular
    from ..models.card import check_card

    path = Path(folder) / "card.json"
    try:
        if not is_regular(path):  # missing, or a named pipe that would block the read
            raise OSError("missing or not a regular file")
        card = json.loads(path.read_bytes()[: 64 << 20])
    except (OSError, ValueError, RecursionError) as err:
        raise ContrastSegError(f"no readable model card at {path} ({str(err)[:120]})") from None
    check_card(card, str(path))  # types, ranges, organ ids and sizes, as every load checks them
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
            value = args[args.index(opt) + 1]
            try:
                card[key] = conv(value)
            except ValueError:
                raise ContrastSegError(f"the fine-tuning options give {opt} {value!r}, which is not a valid value") from None
    from ..models.card import check_refined

    check_refined(dict(card, architecture="RefinedNet", weights="refined.safetensors"), "(this run's refined network: the base model's, changed by --finetune-args)")
    return card


STEP_OPTIONS = {"finetune": "--finetune-args", "train-coarse": "--coarse-args", "pretrain": "--pretrain-args"}


def check_step_args(steps: list[dict]) -> None:
    """Each training step's command line parses as its `contrastseg` command parses it, so an option given in
    --finetune-args (or the coarse and pretrain ones) that the command refuses is refused at plan, in one
    sentence, and not by a step that fails minutes into the run."""
    import contextlib
    import io

    from ..cli import build_parser

    parser = build_parser()
    for step in steps:
        if step.get("kind") != "cli":
            continue
        said = io.StringIO()
        try:
            with contextlib.redirect_stderr(said):
                parser.parse_args(step["argv"])
        except SystemExit:
            last = [ln for ln in said.getvalue().splitlines() if ln.strip()]
            why = last[-1].split("error: ", 1)[-1] if last else "it does not parse"
            option = STEP_OPTIONS.get(step["argv"][0], "the options")
            raise ContrastSegError(f"the {step['name']} step's command line is refused ({why}); check {option}") from None


def arch_args(card: dict) -> list[str]:
    args = ["--depth", str(card["depth"]), "--widths", ",".join(map(str, card["widths"])), "--stem", card["stem"],
            "--aspp-width", str(card["aspp_width"])]
    return args + ([] if card.get("skip", True) else ["--no-skip"])
