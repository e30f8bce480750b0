"""Where the engine may read from and where it may write: one rule for every command and the warm worker.

Reading: an input is a regular file or a folder. A named pipe, a device or a socket is refused before it is
opened, since reading one blocks for ever (a FIFO given to `dataset add` hung it) or never ends (/dev/zero).

Writing: a user-given output never lands in a folder ContrastSeg keeps, since overwriting one of its files
destroys what the project keeps (`refine-organ --model mine -o <store>/mine/card.nii.gz` replaced the model's
card with its organ table):
- a model folder (it holds a `card.json` naming the model format), a dataset (a `manifest.json` naming the
  dataset format) or a run (a `plan.json` naming the run format), at any depth below it (a folder of
  another program that happens to hold a `manifest.json` is not one);
- anything under the store's own folders: `$CONTRASTSEG_HOME/models`, `/runs` and `/dataset`.
The engine's own writes into those folders (`dataset add`, `run start`, `models add`) do not go through this
check; they have their own locks and temporary names. A new dataset or run folder is not made inside a
model, another dataset or run, or a store folder that is not its own (`check_home_of`).

Torch-free and SimpleITK-free, so the store (which Slicer lists without loading networks) can use it.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from .errors import ContrastSegError

# a file of this name, naming this format, marks a folder ContrastSeg keeps; and what it is
MARKERS = (("card.json", b'"contrastseg-model/', "model folder"), ("manifest.json", b'"contrastseg-dataset/', "dataset"),
           ("plan.json", b'"contrastseg-run/', "run folder"))
MARKER_BYTES = 4 << 20  # cards and plans are a few kB; a manifest names its format first
HOME_FOLDERS = (("models", "model store"), ("runs", "runs folder"), ("dataset", "local dataset"))


def check_input(path: str | os.PathLike, what: str = "input", folder_ok: bool = True) -> Path:
    """`path` exists and is a regular file (or, with `folder_ok`, a folder), symlinks followed; else one sentence.

    Refusing special files here is what keeps a read from blocking: `open()` on a FIFO waits for a writer."""
    path = Path(path)
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise ContrastSegError(f"{what} not found: {path}") from None
    except (OSError, ValueError) as err:  # ValueError: a NUL byte in the name
        raise ContrastSegError(f"cannot read {what} {path}: {getattr(err, 'strerror', None) or err}") from None
    if stat.S_ISREG(mode) or (folder_ok and stat.S_ISDIR(mode)):
        return path
    if stat.S_ISDIR(mode):
        raise ContrastSegError(f"{what} {path} is a folder; give a file")
    kind = ("a named pipe" if stat.S_ISFIFO(mode) else "a socket" if stat.S_ISSOCK(mode)
            else "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "not a regular file")
    raise ContrastSegError(f"{what} {path} is {kind}; ContrastSeg reads regular files and folders only")


def is_regular(path: str | os.PathLike, follow: bool = True) -> bool:
    """A regular file (not a pipe, device, socket or folder); with `follow=False` a symlink is not one either."""
    try:
        mode = os.stat(path, follow_symlinks=follow).st_mode
    except (OSError, ValueError):
        return False
    return stat.S_ISREG(mode)


def _real(path: str | os.PathLike) -> Path:
    return Path(os.path.realpath(os.path.abspath(path)))


def kept_folder(path: str | os.PathLike) -> tuple[str, Path] | None:
    """(what it is, the folder) if `path` (resolved) lies in a folder ContrastSeg keeps, else None."""
    real = _real(path)
    from .paths import home

    root = _real(home())
    for name, kind in HOME_FOLDERS:
        folder = root / name
        if real == folder or folder in real.parents:
            return kind, folder
    for folder in real.parents:
        for marker, token, kind in MARKERS:
            if _names_format(folder / marker, token):
                return kind, folder
    return None


def _names_format(path: Path, token: bytes) -> bool:
    if not is_regular(path):
        return False
    try:
        with open(path, "rb") as f:
            return token in f.read(MARKER_BYTES)
    except OSError:
        return False


def check_home_of(folder: str | os.PathLike, kind: str) -> None:
    """A dataset (`kind` "dataset") or a run folder ("run") is not made inside a model, another dataset or run,
    or a store folder that is not its own: `dataset add --dataset <a model folder>` would write a manifest
    and images among the model's files. Its own place is fine: an existing dataset or run, the local dataset
    ($CONTRASTSEG_HOME/dataset), or a run folder directly in $CONTRASTSEG_HOME/runs."""
    real = _real(folder)
    found = kept_folder(real / ".probe")
    if found is None:
        return
    where, holder = found
    own = {"dataset": (("dataset", real), ("local dataset", real)),
           "run": (("run folder", real), ("runs folder", real.parent))}[kind]
    if (where, holder) not in own:
        raise ContrastSegError(f"the {kind} folder {folder} would be inside the {where} {holder}; ContrastSeg keeps "
                               f"models, datasets and runs apart: choose another folder")


def check_not_kept(out: str | os.PathLike, what: str = "output") -> None:
    """Refuse an output path inside a model, a dataset, a run or the store (module docstring)."""
    found = kept_folder(out)
    if found is not None:
        kind, folder = found
        raise ContrastSegError(f"{what} '{out}' is inside the {kind} {folder}; ContrastSeg never writes its outputs into "
                               "a model, a dataset or a run: choose another folder")
