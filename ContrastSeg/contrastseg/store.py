"""The local model store: the bundled default model plus every model the user's training runs registered.

Layout: `$CONTRASTSEG_HOME/models/<name>/` (card.json + safetensors), and `$CONTRASTSEG_HOME/models/default.json`
naming the model that `contrastseg segment` uses when no `--model` is given. CONTRASTSEG_HOME defaults to
~/.contrastseg; the Slicer modules point it into Slicer's application data folder. Imports no torch, so
Slicer can list models without loading the networks.

Models are never overwritten or deleted: `remove` moves a model to `models/.trash/`, which listing skips.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from pathlib import Path

from .errors import ContrastSegError
from .paths import default_model as bundled_model

BUNDLED = "default"


def home() -> Path:
    return Path(os.environ.get("CONTRASTSEG_HOME", Path.home() / ".contrastseg"))


def models_root() -> Path:
    return home() / "models"


def _read_card(folder: Path) -> dict | None:
    try:
        return json.loads((folder / "card.json").read_text())
    except (OSError, json.JSONDecodeError):
        return None


def list_models() -> list[dict]:
    """Every usable model: {name, path, card, default}; the bundled model first, then by name."""
    found = []
    card = _read_card(bundled_model())
    if card is not None:
        found.append({"name": BUNDLED, "path": str(bundled_model()), "card": card, "bundled": True})
    root = models_root()
    if root.exists():
        for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
            card = _read_card(folder)
            if card is not None:
                found.append({"name": folder.name, "path": str(folder), "card": card, "bundled": False})
    chosen = default_name()
    for m in found:
        m["default"] = m["name"] == chosen
    return found


def default_name() -> str:
    """The store's default model: the one `models set-default` named, if it is still there, else the bundled one."""
    try:
        name = json.loads((models_root() / "default.json").read_text())["name"]
    except (OSError, json.JSONDecodeError, KeyError, TypeError):
        return BUNDLED
    return name if name == BUNDLED or (models_root() / name / "card.json").exists() else BUNDLED


def resolve(name_or_path: str | os.PathLike | None) -> Path:
    """A model folder from a store name, a path, or None (the store's default model)."""
    if name_or_path is None:
        name_or_path = default_name()
    path = Path(name_or_path)
    if path.exists():
        return path
    for m in list_models():
        if m["name"] == str(name_or_path):
            return Path(m["path"])
    raise ContrastSegError(f"no model named or found at '{name_or_path}'; `contrastseg models list` shows the store")


NAME_RE = r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}"
TRASH = ".trash"


def check_name(name: str) -> None:
    if not re.fullmatch(NAME_RE, name) or name == BUNDLED:
        raise ContrastSegError(f"model name '{name}' is not allowed (letters, digits, _ . -; not '{BUNDLED}')")


def unused_name(base: str) -> str:
    """`base`, or `base-2`, `base-3`... : the first name no model (live or in the trash) has."""
    taken = {m["name"] for m in list_models()}
    trash = models_root() / TRASH
    if trash.exists():
        taken |= {p.name.split("@")[0] for p in trash.iterdir()}
    name, n = base, 2
    while name in taken or (models_root() / name).exists():
        name, n = f"{base}-{n}", n + 1
    return name


def register(model_dir: Path, name: str) -> Path:
    """Copy a trained model folder into the store under a new, unused name; returns its store path."""
    check_name(name)
    target = models_root() / name
    if target.exists():
        raise ContrastSegError(f"a model named '{name}' is already in the store; models are never overwritten")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".{name}.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    shutil.copytree(model_dir, tmp)
    os.replace(tmp, target)
    return target


def show(name: str) -> dict:
    """One store entry ({name, path, card, default, bundled}) by name."""
    for m in list_models():
        if m["name"] == name:
            return m
    raise ContrastSegError(f"no model named '{name}' in the store; `contrastseg models list` shows it")


def set_default(name: str, check: bool = True) -> None:
    """Make `name` the model `contrastseg segment` (and the Slicer modules) use when none is chosen."""
    if check:
        show(name)  # refuses unknown names
    from .io import write_json

    models_root().mkdir(parents=True, exist_ok=True)
    write_json({"name": name, "set": time.strftime("%Y-%m-%dT%H:%M:%S%z")}, models_root() / "default.json")


def remove(name: str) -> Path:
    """Move a registered model to `models/.trash/<name>@<time>` (never deleted); the bundled one stays.

    If it was the default, the bundled model becomes the default again.
    """
    model = show(name)
    if model["bundled"]:
        raise ContrastSegError(f"the bundled model '{BUNDLED}' cannot be removed")
    trash = models_root() / TRASH
    trash.mkdir(parents=True, exist_ok=True)
    target = trash / f"{name}@{time.strftime('%Y%m%d-%H%M%S')}"
    if model["default"]:
        set_default(BUNDLED, check=False)
    os.replace(model["path"], target)
    return target
