"""Model folders: weights as safetensors plus a JSON model card. Nothing is ever unpickled.

A model folder holds `card.json` and one safetensors file per stage. The card says which architecture and
settings rebuild each network, which BTCV organs it covers, the preprocessing, where the training data came
from, the validation numbers and each weights file's SHA-256. The coarse weights file itself names the
organs whose output channels were trained (safetensors metadata `organs`), so a card that claims an organ
the network never learnt is refused.

Every load (and `models add`) checks, in this order: the card's fields and sizes (`card.check_card`), the
weights file's name and SHA-256, that the file is a whole safetensors file, every tensor's name and shape in
its header against the network the card describes (built on the meta device, so nothing is allocated for a
card that does not fit), finite values, and the card's organs against the coarse network's trained channels.
A tampered or broken model is refused with one sentence. A card written before SHA-256s were recorded gets
every check but the hash.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file

from ..checksum import sha256
from ..errors import ContrastSegError
from ..outputs import safetensors_header, write_safetensors
from ..organs import BY_ID, NUM_CLASSES
from .card import CARD_FORMAT, check_card  # noqa: F401  (CARD_FORMAT: one definition, torch-free)
from .coarse import CoarseUNet
from .refined import RefinedNet

CARD_NAME = "card.json"


def build_coarse(settings: dict) -> CoarseUNet:
    """The coarse U-Net a card's `coarse` table describes; `inputs` (default: the image alone) sets its input
    channels (inputs.COARSE_INPUTS)."""
    return CoarseUNet(NUM_CLASSES, tuple(settings["channels"]), in_channels=len(settings.get("inputs", ["image"])))


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
    trained: list[int] | None = None  # the coarse output channels trained (its weights say), if more than listed

    @property
    def organs(self) -> list[int]:
        return list(self.card["organs"])

    @property
    def competing(self) -> list[int]:
        """The organs whose channels compete in the coarse softmax: every trained one. A trained organ the card
        does not list still claims its voxels (they become background) rather than handing them to the
        next-best listed organ (default v0.3 without its portal vein: the vein's voxels went to the IVC)."""
        return sorted(set(self.trained or []) | set(self.organs))

    def check_covers(self, organs) -> None:
        """Refuse organs the card does not list: every command that takes a model and organs says this."""
        missing = sorted(set(organs) - set(self.organs))
        if missing:
            raise ContrastSegError(f"model '{self.card.get('name')}' does not cover organ ids {missing}; it covers {self.organs}")


def card_path(path: str | os.PathLike) -> Path:
    path = Path(path)
    return path / CARD_NAME if path.is_dir() else path


def read_card(path: str | os.PathLike) -> dict:
    """Read and validate a model card (folder or card.json path): `card.check_card`, before anything is built."""
    from ..guards import is_regular

    cpath = card_path(path)
    if not cpath.exists():
        raise ContrastSegError(f"no model at {path} (expected a folder holding {CARD_NAME})")
    if not is_regular(cpath):  # a named pipe would block the read
        raise ContrastSegError(f"model card {cpath} is not a regular file")
    try:
        card = json.loads(cpath.read_bytes()[: 64 << 20])
    except (ValueError, RecursionError, OSError) as err:  # ValueError: bad JSON or UTF-8
        raise ContrastSegError(f"model card {cpath} is not valid JSON ({str(err)[:120]})") from None
    return check_card(card, str(cpath))


def model_files(folder: str | os.PathLike, card: dict) -> list[Path]:
    """The files a model consists of (its card and weights): inputs no output may overwrite."""
    folder = card_path(folder).parent
    return [folder / CARD_NAME] + [folder / card[s]["weights"] for s in ("coarse", "refined") if card.get(s)]


def trained_organs(path: Path) -> list[int] | None:
    """The organs whose coarse output channels were trained, as the weights file records them (None if it does not)."""
    meta = safetensors_header(path).get("__metadata__") or {}
    if "organs" not in meta:
        return None
    return sorted(int(o) for o in json.loads(meta["organs"]))


def check_weights(folder: Path, card: dict, stage: str) -> Path:
    """The stage's weights file: present, with the SHA-256 the card records, and a whole safetensors file."""
    settings = card[stage]
    wpath = folder / settings["weights"]
    if not wpath.is_file():
        raise ContrastSegError(f"model {folder}: weights file {settings['weights']} is missing")
    recorded = settings.get("sha256")
    if recorded is not None and sha256(wpath) != recorded:
        raise ContrastSegError(f"model {folder}: {wpath.name} does not match the SHA-256 its card records; the file "
                               "was changed or damaged: copy the model again")
    try:
        safetensors_header(wpath)
    except (ValueError, OSError) as err:
        raise ContrastSegError(f"model {folder}: {wpath.name} is not a whole safetensors file ({err})") from None
    if stage == "coarse":
        try:
            trained = trained_organs(wpath)
        except (ValueError, TypeError) as err:
            raise ContrastSegError(f"model {folder}: {wpath.name} has an unreadable organ list ({err})") from None
        untrained = sorted(set(card["organs"]) - set(trained if trained is not None else card["organs"]))
        if untrained:
            names = ", ".join(f"{BY_ID[o].name} ({o})" for o in untrained)
            raise ContrastSegError(f"model {folder}: its card lists {len(card['organs'])} organs, but the coarse network's "
                                   f"output channels were trained for {len(trained)}: not for {names}")
    return wpath


def _load_stage(folder: Path, card: dict, stage: str) -> torch.nn.Module | None:
    settings = card.get(stage)
    if settings is None:
        return None
    arch = settings.get("architecture")
    if arch not in BUILDERS:
        raise ContrastSegError(f"model {folder} has a {stage} network of unknown architecture '{arch}'")
    wpath = check_weights(folder, card, stage)
    _check_shapes(folder, wpath, arch, stage, settings)  # on the meta device: no memory for a wrong card
    try:
        net = BUILDERS[arch](settings)
    except (KeyError, ValueError, TypeError) as err:
        raise ContrastSegError(f"model {folder}: cannot build the {stage} network from its card ({err})") from None
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
    broken = [k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if broken:
        raise ContrastSegError(f"model {folder}: {wpath.name} holds NaN or infinite weights in {len(broken)} tensors "
                               f"(first: {broken[0]}); the file is broken: retrain or copy the model again")
    net.load_state_dict({k: v.to(expected[k].dtype) for k, v in state.items()})
    return net.eval()


def _check_shapes(folder: Path, wpath: Path, arch: str, stage: str, settings: dict) -> None:
    """The network the card describes, built on torch's meta device (shapes only, nothing allocated), against
    the tensor names and shapes in the weights file's header: a card that does not fit its weights is refused
    before the real network takes memory."""
    try:
        with torch.device("meta"):
            expected = {k: tuple(v.shape) for k, v in BUILDERS[arch](settings).state_dict().items()}
    except (KeyError, ValueError, TypeError, RuntimeError) as err:
        raise ContrastSegError(f"model {folder}: cannot build the {stage} network from its card ({err})") from None
    header = {k: tuple(v.get("shape", ())) for k, v in safetensors_header(wpath).items() if k != "__metadata__"}
    bad = [k for k in expected if header.get(k) != expected[k]]
    extra = [k for k in header if k not in expected]
    if bad or extra:
        raise ContrastSegError(
            f"model {folder}: {wpath.name} does not fit the {arch} described by its card "
            f"({len(bad)} missing or mis-shaped tensors, {len(extra)} unexpected); it is for another architecture")


def load_model(path: str | os.PathLike, stages: tuple[str, ...] = ("coarse", "refined")) -> Model:
    """Load a model folder; `stages` limits which networks are built (e.g. coarse only)."""
    card = read_card(path)
    folder = card_path(path).parent
    nets = {s: (_load_stage(folder, card, s) if s in stages else None) for s in ("coarse", "refined")}
    if nets["coarse"] is None and "coarse" in stages:
        raise ContrastSegError(f"model {folder} has no coarse network")
    trained = trained_organs(folder / card["coarse"]["weights"]) if nets["coarse"] is not None else None
    return Model(card, folder, nets["coarse"], nets["refined"], trained)


def save_stage(folder: Path, stage: str, net: torch.nn.Module, half: bool = False, organs: list[int] | None = None) -> str:
    """Write one stage's weights atomically as safetensors; fp16 halves the file for shipping. `organs` (the
    coarse stage) records which output channels were trained; `write_card` fills it in from the card if absent."""
    name = f"{stage}.safetensors"
    state = {k: (v.detach().half() if half and v.is_floating_point() else v.detach()).contiguous().cpu()
             for k, v in net.state_dict().items()}
    metadata = {"stage": stage}
    if organs is not None:
        metadata["organs"] = json.dumps(sorted(int(o) for o in organs))
    write_safetensors(state, folder / name, metadata)
    return name


def _record_organs(wpath: Path, organs: list[int]) -> None:
    """Stamp the trained organs into a coarse weights file that does not name them yet (tensors unchanged)."""
    from safetensors import safe_open

    with safe_open(str(wpath), "pt") as f:
        meta = dict(f.metadata() or {})
        state = {k: f.get_tensor(k) for k in f.keys()}
    meta["organs"] = json.dumps(sorted(int(o) for o in organs))
    write_safetensors(state, wpath, meta)


def write_card(folder: Path, card: dict) -> None:
    """Write card.json atomically, recording each weights file's SHA-256 (and, in a coarse weights file that
    does not say yet, the card's organs as its trained channels). A card claiming organs the coarse weights
    were not trained for is refused."""
    from ..io import write_json

    card = dict(card, format=CARD_FORMAT)
    for stage in ("coarse", "refined"):
        settings = card.get(stage)
        if not settings or "weights" not in settings:
            continue
        wpath = Path(folder) / settings["weights"]
        if not wpath.is_file():
            raise ContrastSegError(f"cannot write the card of {folder}: its {stage} weights {settings['weights']} are missing")
        if stage == "coarse":
            trained = trained_organs(wpath)
            if trained is None:
                _record_organs(wpath, card["organs"])
            elif set(card["organs"]) - set(trained):
                raise ContrastSegError(f"cannot write the card of {folder}: it lists organs "
                                       f"{sorted(set(card['organs']) - set(trained))} the coarse network was not trained for")
        card[stage] = dict(settings, sha256=sha256(wpath))
    write_json(card, Path(folder) / CARD_NAME)
