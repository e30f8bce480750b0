"""Model folders: weights as safetensors plus a JSON model card. Nothing is ever unpickled.

A model folder holds `card.json` and one safetensors file per stage. The card says which architecture and
settings rebuild each network, which BTCV organs it covers, the preprocessing, where the training data came
from and the validation numbers. Loading checks every tensor name and shape against the rebuilt network, so
a file for another architecture or organ set is refused with a sentence instead of a shape error.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from ..errors import ContrastSegError
from ..organs import BY_ID, NUM_CLASSES
from .coarse import CoarseUNet
from .refined import RefinedNet

CARD_FORMAT = "contrastseg-model/1"
CARD_NAME = "card.json"


def build_coarse(settings: dict) -> CoarseUNet:
    return CoarseUNet(NUM_CLASSES, tuple(settings["channels"]))


def build_refined(settings: dict) -> RefinedNet:
    return RefinedNet(settings["depth"], tuple(settings["widths"]), settings["stem"], settings["aspp_width"], settings["skip"])


BUILDERS = {"CoarseUNet": build_coarse, "RefinedNet": build_refined}


@dataclass
class Model:
    """A loaded model: its card (dict), folder, and the networks present (refined may be None)."""

    card: dict
    folder: Path
    coarse: CoarseUNet | None
    refined: RefinedNet | None

    @property
    def organs(self) -> list[int]:
        return list(self.card["organs"])


def card_path(path: str | os.PathLike) -> Path:
    path = Path(path)
    return path / CARD_NAME if path.is_dir() else path


def read_card(path: str | os.PathLike) -> dict:
    """Read and validate a model card (folder or card.json path)."""
    cpath = card_path(path)
    if not cpath.exists():
        raise ContrastSegError(f"no model at {path} (expected a folder holding {CARD_NAME})")
    try:
        card = json.loads(cpath.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ContrastSegError(f"model card {cpath} is not valid JSON ({err})") from None
    if not isinstance(card, dict) or card.get("format") != CARD_FORMAT:
        raise ContrastSegError(f"{cpath} is not a ContrastSeg model card (format must be '{CARD_FORMAT}')")
    organs = card.get("organs")
    if not organs or any(o not in BY_ID for o in organs):
        raise ContrastSegError(f"model card {cpath} lists organs {organs}, which are not BTCV organ ids 1-13")
    return card


def _load_stage(folder: Path, card: dict, stage: str) -> torch.nn.Module | None:
    settings = card.get(stage)
    if settings is None:
        return None
    arch = settings.get("architecture")
    if arch not in BUILDERS:
        raise ContrastSegError(f"model {folder} has a {stage} network of unknown architecture '{arch}'")
    try:
        net = BUILDERS[arch](settings)
    except (KeyError, ValueError, TypeError) as err:
        raise ContrastSegError(f"model {folder}: cannot build the {stage} network from its card ({err})") from None
    wpath = folder / settings["weights"]
    if not wpath.exists():
        raise ContrastSegError(f"model {folder}: weights file {settings['weights']} is missing")
    try:
        state = load_file(str(wpath))
    except Exception as err:  # safetensors raises its own error types for truncated/corrupt files
        raise ContrastSegError(f"model {folder}: cannot read {wpath.name} ({err})") from None
    expected = net.state_dict()
    bad = [k for k in expected if k not in state or state[k].shape != expected[k].shape]
    extra = [k for k in state if k not in expected]
    if bad or extra:
        raise ContrastSegError(
            f"model {folder}: {wpath.name} does not fit the {arch} described by its card "
            f"({len(bad)} missing or mis-shaped tensors, {len(extra)} unexpected); it is for another architecture"
        )
    net.load_state_dict({k: v.to(expected[k].dtype) for k, v in state.items()})
    return net.eval()


def load_model(path: str | os.PathLike, stages: tuple[str, ...] = ("coarse", "refined")) -> Model:
    """Load a model folder; `stages` limits which networks are built (e.g. coarse only)."""
    card = read_card(path)
    folder = card_path(path).parent
    nets = {s: (_load_stage(folder, card, s) if s in stages else None) for s in ("coarse", "refined")}
    if nets["coarse"] is None and "coarse" in stages:
        raise ContrastSegError(f"model {folder} has no coarse network")
    return Model(card, folder, nets["coarse"], nets["refined"])


def save_stage(folder: Path, stage: str, net: torch.nn.Module, half: bool = False) -> str:
    """Write one stage's weights atomically as safetensors; fp16 halves the file for shipping."""
    name = f"{stage}.safetensors"
    state = {k: (v.detach().half() if half and v.is_floating_point() else v.detach()).contiguous().cpu()
             for k, v in net.state_dict().items()}
    tmp = folder / f".{name}.tmp"
    save_file(state, str(tmp))
    os.replace(tmp, folder / name)
    return name


def write_card(folder: Path, card: dict) -> None:
    from ..io import write_json

    card = dict(card, format=CARD_FORMAT)
    write_json(card, folder / CARD_NAME)
