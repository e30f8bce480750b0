"""Helpers of the ContrastSeg Slicer module, one room each (after KitwareMedical/SlicerNNUnet):

- `parameter`: the user's choices (`SegmentSettings`, a parameterPack) and the engine command line;
- `process`: the engine in a background process, its JSON-lines events, cancel of the process tree;
- `nodes`: MRML nodes <-> the engine's files (volume out, label map in, organs as named segments);
- `segmentation`: the Logic of a run (the process runner injected, so tests can replace it);
- `install`: first-use installation of the Python requirements;
- `widget`: the Qt panel (the only module here that imports Qt).

Importing this package imports neither Qt nor torch, so it works in Slicer before the requirements are
installed and under slicer-core in CI. The ContrastSegTraining module reuses `process`, `nodes` and
`engine_home`.
"""

from __future__ import annotations

import os
from pathlib import Path


def engine_home() -> Path:
    """Where the model store and the local datasets live for Slicer users.

    `CONTRASTSEG_HOME` if set (so a user, a cluster or a test can point it elsewhere), else a `ContrastSeg`
    folder beside Slicer's user settings file, else the engine's own default (~/.contrastseg).
    """
    if os.environ.get("CONTRASTSEG_HOME"):
        return Path(os.environ["CONTRASTSEG_HOME"])
    try:
        import slicer

        return Path(slicer.app.slicerUserSettingsFilePath).parent / "ContrastSeg"
    except (ImportError, AttributeError):
        return Path.home() / ".contrastseg"


def use_engine_home() -> Path:
    """Set CONTRASTSEG_HOME for this process and the engine processes it starts (both modules call it)."""
    home = engine_home()
    os.environ["CONTRASTSEG_HOME"] = str(home)
    return home
