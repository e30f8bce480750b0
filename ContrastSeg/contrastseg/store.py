"""The local model store: the bundled default model plus every model the user's training runs registered.

Layout: `$CONTRASTSEG_HOME/models/<name>/` (card.json + safetensors), and `$CONTRASTSEG_HOME/models/default.json`
naming the model that `contrastseg segment` uses when no `--model` is given. CONTRASTSEG_HOME defaults to
~/.contrastseg; the Slicer modules point it into Slicer's application data folder. Imports no torch, so
Slicer can list models without loading the networks.
"""

from __future__ import annotations

import json
import os
import re
import shutil
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
    try:
        return json.loads((models_root() / "default.json").read_text())["name"]
    except (OSError, json.JSONDecodeError, KeyError):
        return BUNDLED


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


def register(model_dir: Path, name: str) -> Path:
    """Copy a trained model folder into the store under a new, unused name; returns its store path."""
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}", name) or name == BUNDLED:
        raise ContrastSegError(f"model name '{name}' is not allowed (letters, digits, _ . -; not '{BUNDLED}')")
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
