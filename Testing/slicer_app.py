"""A stand-in for the Slicer application in tests: real MRML and module logics (slicer-core), no Qt.

Shared by the tests of both Slicer modules (ContrastSeg and ContrastSegTraining): import the fixture into a
test module with `from slicer_app import slicer_app  # noqa: F401` and use `slicer_app` as a test argument.
A test that asks for it is skipped, with the reason, where slicer-core is not installed (`require_slicer`);
tests of the same module that need no MRML still run.

What it provides (docs/SLICER-TESTING.md): a fresh `vtkMRMLScene` with a `vtkSlicerApplicationLogic`, the
default colour nodes, and the Colors, Volumes, Segmentations and SubjectHierarchy module logics registered
with the application logic; `slicer.mrmlScene` set to that scene and a small `slicer.modules` namespace
whose `volumes.logic()`, `segmentations.logic()`, `subjecthierarchy.logic()` and `colors.logic()` return
them, which is what module Logic code (and `slicer.util`) reaches for. `slicer.app` is deliberately absent,
so Logic code that needs the GUI application fails here instead of in a user's Slicer.
Everything is put back and the scene cleared when the test ends.

The colour and terminology files are not in the slicer-core wheel: expect harmless error-log lines about
them, and keep terminology lookups out of tests (the engine's organ table carries the SNOMED CT codes).
"""

from __future__ import annotations

import contextlib
import sys
import types
from pathlib import Path

import pytest

_MISSING = object()
SKIP_REASON = ("slicer-core is not installed (pip install slicer-core, or the project's [slicer] extra): "
               "the Slicer module tests need its real MRML")


def require_slicer():
    """Import slicer-core's `slicer`, or skip the calling test with the reason (never PyPI's unrelated 'slicer')."""
    slicer = pytest.importorskip("slicer", reason=SKIP_REASON)
    if not hasattr(slicer, "vtkMRMLScene"):
        pytest.skip(SKIP_REASON + " (an unrelated package named 'slicer' is installed instead)")
    return slicer


class SlicerApp:
    """The scene, the application logic and the module logics of one test."""

    def __init__(self):
        import slicer

        self.scene = slicer.vtkMRMLScene()
        self.app_logic = slicer.vtkSlicerApplicationLogic()
        self.app_logic.SetMRMLScene(self.scene)
        colors = self.app_logic.GetColorLogic() or slicer.vtkSlicerColorLogic()
        colors.SetMRMLScene(self.scene)
        colors.AddDefaultColorNodes()
        self.logics = {"Colors": colors}
        for name, cls in (("Volumes", slicer.vtkSlicerVolumesLogic),
                          ("Segmentations", slicer.vtkSlicerSegmentationsModuleLogic),
                          ("SubjectHierarchy", slicer.vtkSlicerSubjectHierarchyModuleLogic)):
            logic = cls()
            logic.SetMRMLApplicationLogic(self.app_logic)
            logic.SetMRMLScene(self.scene)
            self.logics[name] = logic
        for name, logic in self.logics.items():
            self.app_logic.SetModuleLogic(name, logic)
        self._saved = {}

    def install(self) -> "SlicerApp":
        """Make this the scene and module registry that `slicer.mrmlScene` / `slicer.modules` point to."""
        import slicer

        namespace = types.SimpleNamespace(**{name.lower(): types.SimpleNamespace(logic=(lambda lg=logic: lg))
                                              for name, logic in self.logics.items()})
        for attr, value in (("mrmlScene", self.scene), ("modules", namespace)):
            self._saved[attr] = getattr(slicer, attr, _MISSING)
            setattr(slicer, attr, value)
        return self

    def close(self) -> None:
        import slicer

        self.scene.Clear(1)
        for attr, value in self._saved.items():
            if value is _MISSING:
                delattr(slicer, attr)
            else:
                setattr(slicer, attr, value)

    # ------------------------------------------------------------ helpers for tests
    def load_volume(self, path: str | Path, name: str | None = None, labelmap: bool = False):
        """Load an image file as a (label map) volume node, the way Slicer's volume reader does."""
        node = self.logics["Volumes"].AddArchetypeVolume(str(path), name or Path(path).name.split(".")[0], int(labelmap))
        if node is None:
            raise OSError(f"slicer-core could not read {path}")
        return node

    def nodes(self, class_name: str = "vtkMRMLNode") -> list:
        """All nodes of a class in the scene (e.g. to check that nothing was left behind)."""
        return [self.scene.GetNthNodeByClass(i, class_name) for i in range(self.scene.GetNumberOfNodesByClass(class_name))]


@contextlib.contextmanager
def slicer_app_context():
    app = SlicerApp().install()
    try:
        yield app
    finally:
        worker = sys.modules.get("ContrastSegLib.worker")
        if worker is not None:  # the engine worker a test started goes with its Slicer session, as in Slicer
            worker.shutdown_shared_worker()
        app.close()


@pytest.fixture
def slicer_app():
    """A fresh Slicer application stand-in (see the module docstring) for one test."""
    require_slicer()
    with slicer_app_context() as app:
        yield app
