"""The Slicer modules' Logic classes inside trame-slicer: one scene, the module logics they reach for.

ContrastSegLib and ContrastSegTrainingLib are written for Slicer, where `slicer.mrmlScene` is the scene and
`slicer.modules.volumes.logic()` / `segmentations.logic()` are the module logics. trame-slicer's `SlicerApp`
creates a scene and registers the same logics with its application logic, but sets no globals. `install`
points the globals at the app's scene and logics (as Testing/slicer_app.py does for the Logic tests), so the
web app runs the same Logic code as the Qt panels, not a copy of it.
"""

from __future__ import annotations

import sys
import types
from pathlib import Path


def module_paths() -> list[Path]:
    """The Slicer module folders in a source checkout (ContrastSegLib, ContrastSegTrainingLib live there); an
    installed wheel carries both packages itself (pyproject's packages list)."""
    root = Path(__file__).resolve().parents[3]
    return [p for p in (root / "ContrastSeg", root / "ContrastSegTraining") if (p / f"{p.name}Lib").is_dir()]


def import_logic_packages() -> None:
    """Make `ContrastSegLib` / `ContrastSegTrainingLib` importable (from the wheel or the source tree)."""
    for path in module_paths():
        if str(path) not in sys.path:
            sys.path.append(str(path))
    import ContrastSegLib  # noqa: F401 - fail here, with the import error, if neither is there
    import ContrastSegTrainingLib  # noqa: F401


def install(slicer_app) -> None:
    """Point `slicer.mrmlScene` and `slicer.modules.<name>.logic()` at a trame-slicer SlicerApp's scene and logics.

    One app per process: trame serves one scene to every browser tab of a server, and so do these globals."""
    import slicer

    logics = {"volumes": slicer_app.volumes_logic, "segmentations": slicer_app.segmentations_logic,
              "subjecthierarchy": slicer_app.subject_hierarchy_logic, "colors": slicer_app.color_logic,
              "terminologies": slicer_app.terminologies_logic}
    slicer.mrmlScene = slicer_app.scene
    slicer.modules = types.SimpleNamespace(**{name: types.SimpleNamespace(logic=(lambda lg=lg: lg))
                                              for name, lg in logics.items()})
    import_logic_packages()
