"""The local model store: the bundled default model plus every model the user's training runs registered.

Layout: `$CONTRASTSEG_HOME/models/<name>/` (card.json + safetensors), and `$CONTRASTSEG_HOME/models/default.json`
naming the model that `contrastseg segment` uses when no `--model` is given. CONTRASTSEG_HOME defaults to
~/.contrastseg; the Slicer modules point it into Slicer's application data folder. Imports no torch, so
Slicer can list models without loading the networks.

Models are never overwritten or deleted: `remove` moves a model to `models/.trash/`, which listing skips, and
its name stays taken. A broken `default.json`, or one naming a model that is gone, is reported (not silently
replaced by the bundled model) when a command needs the default.
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
    chosen, _ = _default_record()
    for m in found:
        m["default"] = m["name"] == chosen
    return found


def _default_record() -> tuple[str, str | None]:
    """(the default model's name, what is wrong with default.json or None); the bundled name when it is wrong."""
    path = models_root() / "default.json"
    if not path.exists():
        return BUNDLED, None
    try:
        name = json.loads(path.read_text())["name"]
        if not isinstance(name, str):
            raise TypeError("the name is not a string")
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as err:
        return BUNDLED, (f"the store's default-model file {path} is broken ({type(err).__name__}: {err}); "
                         "choose the default again with `contrastseg models set-default NAME`")
    if name != BUNDLED and not (models_root() / name / "card.json").exists():
        return BUNDLED, (f"the store's default-model file {path} names the model '{name}', which is not in the store; "
                         "choose the default again with `contrastseg models set-default NAME`")
    return name, None


def default_problem() -> str | None:
    """What is wrong with default.json, if anything (for `models list` to report)."""
    return _default_record()[1]


def default_name() -> str:
    """The store's default model: the one `models set-default` named, else the bundled one. A default.json that
    is broken or names a model no longer in the store is refused with a sentence, not silently ignored."""
    name, problem = _default_record()
    if problem:
        raise ContrastSegError(problem)
    return name


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


def _trashed() -> set[str]:
    trash = models_root() / TRASH
    return {p.name.split("@")[0] for p in trash.iterdir()} if trash.exists() else set()


def unused_name(base: str) -> str:
    """`base`, or `base-2`, `base-3`... : the first name no model (live or in the trash) has."""
    taken = {m["name"] for m in list_models()} | _trashed()
    name, n = base, 2
    while name in taken or (models_root() / name).exists():
        name, n = f"{base}-{n}", n + 1
    return name


def _check_copy(folder: Path, card: dict) -> None:
    """The copied weights have the SHA-256s the card records (no torch needed)."""
    from .checksum import sha256

    for stage in ("coarse", "refined"):
        settings = card.get(stage) or {}
        if settings.get("sha256") and (not (folder / settings["weights"]).is_file()
                                       or sha256(folder / settings["weights"]) != settings["sha256"]):
            raise ContrastSegError(f"the copy of {settings['weights']} in the store does not match its card's SHA-256; "
                                   "the model was not registered")


def register(model_dir: Path, name: str) -> Path:
    """Copy a trained model folder into the store under a new, never used name; returns its store path.

    The caller checks the model first (`models add` loads it whole); the copy is checked against the card's
    SHA-256s before it takes its name.
    """
    check_name(name)
    target = models_root() / name
    if target.exists():
        raise ContrastSegError(f"a model named '{name}' is already in the store; models are never overwritten")
    if name in _trashed():
        raise ContrastSegError(f"the name '{name}' belonged to a removed model (in {models_root() / TRASH}); names are "
                               f"never reused: choose another, e.g. '{unused_name(name)}'")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".{name}.tmp"
    try:
        if tmp.exists():
            shutil.rmtree(tmp)
        shutil.copytree(model_dir, tmp)
        card = _read_card(tmp)
        if card is not None:
            _check_copy(tmp, card)
        os.replace(tmp, target)
    except OSError as err:
        from .outputs import os_error_message

        raise ContrastSegError(os_error_message(err, target)) from None
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
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
