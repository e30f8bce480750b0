"""The local model store: the bundled default model plus every model the user's training runs registered.

Layout: `$CONTRASTSEG_HOME/models/<name>/` (card.json + safetensors), and `$CONTRASTSEG_HOME/models/default.json`
naming the model that `contrastseg segment` uses when no `--model` is given. CONTRASTSEG_HOME defaults to
~/.contrastseg; the Slicer modules point it into Slicer's application data folder. Imports no torch, so
Slicer can list models without loading the networks.

Models are never overwritten or deleted: `remove` moves a model to `models/.trash/`, which listing skips, and
its name stays taken. A broken `default.json`, or one naming a model that is gone, is reported (not silently
replaced by the bundled model) when a command needs the default. A model folder whose card is missing or
invalid is reported by `models list` and skipped; the others stay usable.

Names: `resolve` reads a bare name (`default`, `mine`) as a store name only, never as a folder in the current
directory; a folder is given as a path (`./mine`, `/data/models/mine`): see `is_path`.
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
from .paths import home  # noqa: F401 - store.home() is where models, runs and the dataset live

BUNDLED = "default"


def models_root() -> Path:
    return home() / "models"


def _read_card(folder: Path) -> tuple[dict | None, str | None]:
    """(the folder's card, None) if it is a valid model card (`models.card.check_card`), else (None, why not)."""
    from .guards import is_regular
    from .models.card import check_card

    path = folder / "card.json"
    if not is_regular(path):
        return None, ("it holds no card.json" if not os.path.lexists(path) else "its card.json is not a regular file")
    try:
        card = json.loads(path.read_bytes()[: 64 << 20])
        return check_card(card, str(path)), None
    except (OSError, ValueError, RecursionError) as err:  # ValueError: bad JSON or UTF-8
        return None, f"its card.json is not valid JSON ({str(err)[:120]})"
    except ContrastSegError as err:
        return None, str(err)


def _scan() -> tuple[list[dict], list[dict]]:
    """(usable models, broken model folders): the bundled model first, then the store's folders by name."""
    found, broken = [], []
    folders = [(BUNDLED, bundled_model(), True)]
    root = models_root()
    if root.is_dir():
        folders += [(p.name, p, False) for p in sorted(root.iterdir()) if p.is_dir() and not p.name.startswith(".")]
    for name, folder, bundled in folders:
        card, why = _read_card(folder)
        if card is not None:
            found.append({"name": name, "path": str(folder), "card": card, "bundled": bundled})
        elif not (bundled and not folder.exists()):
            broken.append({"name": name, "path": str(folder), "problem": why, "bundled": bundled})
    return found, broken


def list_models() -> list[dict]:
    """Every usable model: {name, path, card, default, bundled}; the bundled model first, then by name. A folder
    whose card is missing or invalid is left out (`broken_models` says why), so one broken card hides no other."""
    found, _ = _scan()
    chosen, _ = _default_record()
    for m in found:
        m["default"] = m["name"] == chosen
    return found


def broken_models() -> list[dict]:
    """The store's folders that are not usable models: {name, path, problem} (for `models list` to report)."""
    return _scan()[1]


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


def is_path(value: str | os.PathLike) -> bool:
    """How a `--model` value is read: a path when it is a path object or its text holds a folder separator
    ('/', or '\\' on Windows) or starts with '~'; otherwise it is a store name. So `default` is always the
    bundled model, even beside a folder of that name, and `./default` is that folder."""
    if not isinstance(value, str):
        return True
    seps = {"/", os.sep} | ({os.altsep} if os.altsep else set())
    return any(sep in value for sep in seps) or value.startswith("~")


def resolve(name_or_path: str | os.PathLike | None) -> Path:
    """A model folder from a store name, an explicit folder path (`is_path`), or None (the store's default).

    A bare name is looked up in the store only, never in the current directory."""
    if name_or_path is None:
        name_or_path = default_name()
    if is_path(name_or_path):
        path = Path(name_or_path).expanduser()
        if path.exists():
            return path
        raise ContrastSegError(f"no model found at '{name_or_path}'; `contrastseg models list` shows the store")
    name = str(name_or_path)
    for m in list_models():
        if m["name"] == name:
            return Path(m["path"])
    for b in broken_models():
        if b["name"] == name:
            raise ContrastSegError(f"the model '{name}' in the store is broken: {b['problem']}")
    here = f"; to use the folder '{name}' here, give it as a path: ./{name}" if Path(name).is_dir() else ""
    raise ContrastSegError(f"no model named '{name}' in the store{here}; `contrastseg models list` shows the store")


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
        if settings and not (folder / settings["weights"]).is_file():
            raise ContrastSegError(f"{settings['weights']} was not copied into the store (it is not a regular file: "
                                   "models are copied without following symbolic links); the model was not registered")
        if settings.get("sha256") and sha256(folder / settings["weights"]) != settings["sha256"]:
            raise ContrastSegError(f"the copy of {settings['weights']} in the store does not match its card's SHA-256; "
                                   "the model was not registered")


def _copy_regular(source: Path, target: Path) -> None:
    """Copy a model folder's regular files and real subfolders; symlinks and special files are not followed or
    copied (a link to /usr/share/doc once copied 169 MB into the store, and a named pipe would hang the copy).
    The files a model needs (its card, its weights) must themselves be regular files: `load_model` reads them
    through `is_regular` and `check_weights`, which refuse anything else, before `models add` registers."""
    from .guards import is_regular

    target.mkdir()
    with os.scandir(source) as entries:
        for entry in entries:
            if entry.is_symlink():
                continue
            if entry.is_dir(follow_symlinks=False):
                _copy_regular(Path(entry.path), target / entry.name)
            elif is_regular(entry.path, follow=False):
                shutil.copy2(entry.path, target / entry.name, follow_symlinks=False)


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
        _copy_regular(Path(model_dir), tmp)
        card, why = _read_card(tmp)
        if card is None:  # e.g. card.json was a symbolic link, which is not copied
            raise ContrastSegError(f"the copy of {model_dir} is not a model ({why}); models are copied as regular "
                                   "files only (no symbolic links): the model was not registered")
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
    for b in broken_models():
        if b["name"] == name:
            raise ContrastSegError(f"the model '{name}' in the store is broken: {b['problem']}")
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
