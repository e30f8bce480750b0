"""The segmentation Logic: volume node in, the engine's warm worker in its own process, Segmentation node(s) out.

No Qt, no `slicer.app`: the widget calls `poll()` from a QTimer, tests and the self-test call `wait()`,
and both run against real MRML (slicer-core in CI). The runner is injected (`runner`, default
worker.WorkerJob: the session's shared `contrastseg serve` process), so a test can replay a recorded event
stream instead of starting the engine.

Life of a run: the worker opens the CT (written once per volume, kept open for the next Segment and for the
click correction) and segments it; its progress updates `run.stage / fraction / eta`; the `output` event of
the coarse map loads it at once as a Segmentation node; the final map either replaces that node's segments
in place or, with `keepCoarse`, becomes a second node beside it. An engine error ends the run with
`run.error` set to the engine's sentence; a worker that died ends it with why, and the next run starts a new
one. `cancel()` stops the request (the worker writes nothing after it) and removes the run's files. A result
is loaded within one poll and a failed load removes its node, so whatever a run leaves in the scene is
complete (e.g. the coarse map shown before a cancel): never a half-loaded node.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from . import nodes
from .parameter import SegmentSettings, coarse_only, copy_settings, engine_device, segment_request
from .process import EngineEvent
from .worker import SegmentJob, WorkerJob

# The folder holding the `contrastseg` package: the module folder in a source checkout and in an installed
# extension alike (CMake installs the engine beside the module). The engine's process gets it on PYTHONPATH.
ENGINE_DIR = Path(__file__).resolve().parents[1]

STAGE_NAMES = {"read": "reading the CT", "preprocess": "preparing", "coarse": "coarse segmentation",
               "refine": "refined segmentation", "write": "writing the result"}


def slicer_python() -> str:
    """The interpreter for the engine: PythonSlicer inside Slicer (same packages, no GUI), else this one."""
    return shutil.which("PythonSlicer") or sys.executable


@dataclass
class SegmentationRun:
    """State of one segmentation, for the panel (progress bar, status line, error) and for tests."""

    volume_node: Any
    settings: SegmentSettings
    work_dir: Path
    owns_work_dir: bool
    organs: list[int]
    output_path: Path = None
    coarse_path: Path = None
    process: Any = None
    state: str = "starting"  # starting, running, done, failed, cancelled
    stage: str = ""
    fraction: float = 0.0
    eta: float | None = None
    message: str = "starting the engine"
    error: str | None = None
    coarse_node: Any = None
    result_node: Any = None
    timings: dict = field(default_factory=dict)
    notes: list = field(default_factory=list)  # the engine's notes on how the CT was run (e.g. its top repeated)
    started: float = field(default_factory=time.monotonic)
    finished_at: float | None = None
    on_update: Callable[["SegmentationRun"], None] | None = None
    load_failed: bool = False

    @property
    def finished(self) -> bool:
        return self.state in ("done", "failed", "cancelled")

    @property
    def active(self) -> bool:
        """True while engine events should still be acted on (not finished, not being cancelled)."""
        return self.state in ("starting", "running")

    @property
    def elapsed(self) -> float:
        return (self.finished_at or time.monotonic()) - self.started

    def status_text(self) -> str:
        """One line for the panel: what the engine is doing, how far, and about how long is left."""
        if self.state == "done":
            return " ".join([f"Done in {self.elapsed:.0f} s.", *self.notes])
        if self.state == "failed":
            return "Failed."
        if self.state == "cancelled":
            return "Cancelled."
        if not self.stage or (self.stage == "read" and self.message in ("starting the engine", "opening the CT")
                              and self.fraction == 0):
            # the worker's first event says it was asked to start or open; the torch import and the CT's
            # reading follow without a report: "Reading the CT: 0%" stood there through the whole import
            return ("Starting the engine (loading PyTorch)..." if self.message != "opening the CT"
                    else "Opening the CT in the engine...")
        stage = STAGE_NAMES.get(self.stage, self.stage)
        text = f"{stage[:1].upper()}{stage[1:]}: {self.fraction * 100:.0f}%"
        if self.eta is not None:
            text += f", about {max(self.eta, 0):.0f} s left"
        return text


class SegmentationLogic:
    """Segments a volume node in the engine's worker and loads its coarse and final results as Segmentations."""

    def __init__(self, runner: Callable[..., Any] = WorkerJob, python: str | None = None):
        self.runner = runner
        self.python = python

    # ---------------------------------------------------------------- starting
    def start(self, volume_node, settings: SegmentSettings | None = None, on_update=None, work_dir: Path | None = None) -> SegmentationRun:
        """Start the segmentation in the engine's worker and return the run (poll it, or wait for it).

        `work_dir` keeps the engine's files (outputs with their JSON organ tables) there; without it they go
        to a temporary folder that is deleted when the run ends.
        """
        settings = copy_settings(settings or SegmentSettings())
        if volume_node is None:
            raise ValueError("select a CT volume first")
        organs = self.organs_for(settings)  # an unknown organ name fails here, before anything is written
        owns = work_dir is None
        work = Path(tempfile.mkdtemp(prefix="ContrastSeg-")) if owns else Path(work_dir)
        work.mkdir(parents=True, exist_ok=True)
        run = SegmentationRun(volume_node, settings, work, owns, organs=organs, on_update=on_update)
        try:
            run.output_path = work / "segmentation.nii.gz"
            run.coarse_path = None if coarse_only(settings) else work / "coarse.nii.gz"
            job = SegmentJob(volume_node, segment_request(settings, run.output_path, run.coarse_path),
                             model=settings.model.strip() or None, device=engine_device(settings),
                             threads=int(settings.threads or 0), python=self.python or slicer_python(),
                             env=dict(os.environ, **self.engine_env()))
            run.process = self.runner(job=job, on_event=lambda event: self._on_event(run, event))
            run.process.start()
        except Exception:
            self._cleanup(run)
            raise
        run.state = "running"
        self._notify(run)
        return run

    @staticmethod
    def engine_env() -> dict:
        """What the engine's process needs on top of Slicer's environment: the bundled engine first on PYTHONPATH."""
        path = os.environ.get("PYTHONPATH", "")
        return {"PYTHONPATH": str(ENGINE_DIR) + (os.pathsep + path if path else "")}

    @staticmethod
    def organs_for(settings: SegmentSettings) -> list[int]:
        """Organ ids the result will hold: the chosen subset, else every organ the chosen model covers.

        Reads the model card as JSON: importing the engine's model code would load torch into Slicer.
        """
        from contrastseg.organs import parse_organs

        if settings.organs.strip():
            return parse_organs(settings.organs)
        try:
            from contrastseg.store import resolve

            card = json.loads((resolve(settings.model.strip() or None) / "card.json").read_text())
            return sorted(int(o) for o in card["organs"])
        except Exception:  # noqa: BLE001 - unknown model: the engine will say so in its own words
            return parse_organs(None)

    # ---------------------------------------------------------------- running
    def poll(self, run: SegmentationRun) -> bool:
        """Read the engine's new events (loading any finished result); True while the run goes on."""
        if run.finished:
            return False
        run.process.poll()
        if run.load_failed and run.process.running():
            run.process.cancel()  # not from inside the event callback: cancel() polls the stream itself
        if not run.process.running() and not run.finished:
            run.process.poll()  # the last lines may have arrived with the exit
            self._finish(run)
        return not run.finished

    def wait(self, run: SegmentationRun, timeout: float | None = None, interval: float = 0.1) -> SegmentationRun:
        """Poll until the run ends (tests, self-test and scripts); cancels it after `timeout` seconds."""
        end = None if timeout is None else time.monotonic() + timeout
        while self.poll(run):
            if end is not None and time.monotonic() > end:
                self.cancel(run)
                run.error = f"cancelled after {timeout:.0f} s"
                break
            time.sleep(interval)
        return run

    def cancel(self, run: SegmentationRun) -> None:
        """Stop the engine's work on this run and remove its files.

        Results are loaded in one step between polls, so a result that is in the scene is complete: a
        coarse map shown before the cancel stays (it is useful); nothing half-loaded can exist.
        """
        if run.finished:
            return
        run.state = "cancelling"  # events still read by the runner's cancel() are ignored from here
        if run.process is not None:
            run.process.cancel()
        run.state, run.message = "cancelled", "cancelled"
        self._end(run)

    # ---------------------------------------------------------------- events
    def _on_event(self, run: SegmentationRun, event: EngineEvent) -> None:
        data = event.data
        if not run.active:
            return
        if event.event == "progress":
            run.stage = data.get("stage") or run.stage
            run.fraction = float(data.get("fraction") or 0.0)
            run.eta = data.get("eta")
            run.message = data.get("message") or run.message
        elif event.event == "output" and not run.load_failed:
            try:
                self._load_output(run, Path(data.get("path", "")))
            except Exception as err:  # noqa: BLE001 - a result we cannot load ends the run, readably
                run.error = f"could not load the result: {err}"
                run.load_failed = True
        elif event.event == "error":
            run.error = data.get("message") or "the engine failed"
        elif event.event == "done":
            run.timings = data.get("timings") or {}
            run.notes = list(data.get("notes") or [])
        self._notify(run)

    def _load_output(self, run: SegmentationRun, path: Path) -> None:
        volume = run.volume_node
        base = volume.GetName()
        is_final = _same_path(path, run.output_path)
        if not is_final and not (run.coarse_path and _same_path(path, run.coarse_path)):
            return  # overlays and other side outputs are not shown
        if not is_final:  # the coarse map of a coarse-then-refined run: slice views only, at once
            run.coarse_node = nodes.load_labels(path, volume, run.organs, run.coarse_node, f"{base} segmentation (coarse)")
            self._finish_node(run, run.coarse_node, "coarse", surfaces=False)
            return
        stage = "coarse" if coarse_only(run.settings) else "refined"
        if run.coarse_node is not None and not run.settings.keepCoarse:
            target = run.coarse_node  # replace in place: the same node, now refined
        else:
            target = None
        run.result_node = nodes.load_labels(path, volume, run.organs, target, f"{base} segmentation")
        self._finish_node(run, run.result_node, stage)
        kept = keep_initial(path)
        if kept is not None:  # the export compares the correction with it ("before" Dice, edited organs)
            run.result_node.SetAttribute(INITIAL_LABELS_ATTRIBUTE, str(kept))

    def _finish_node(self, run: SegmentationRun, node, stage: str, surfaces: bool = True) -> None:
        """Tag the node with its provenance; build 3D surfaces for the final result only: surfaces of a
        full-size CT take seconds of the GUI thread, which the coarse map (replaced soon) is not worth."""
        node.SetAttribute("ContrastSeg.Stage", stage)
        node.SetAttribute("ContrastSeg.Model", run.settings.model.strip() or "default")
        node.SetAttribute("ContrastSeg.SourceVolume", run.volume_node.GetID())
        if run.settings.show3D and surfaces:
            nodes.show_3d(node)

    def _finish(self, run: SegmentationRun) -> None:
        code = run.process.returncode
        if code == 0 and run.result_node is not None and not run.load_failed:
            run.state = "done"
        else:  # a coarse result already shown stays: it is complete, and better than nothing
            run.state = "failed"
            if not run.error:
                run.error = run.process.error_message() or f"the engine stopped with exit code {code}"
        self._end(run)

    def _end(self, run: SegmentationRun) -> None:
        run.finished_at = time.monotonic()
        self._cleanup(run)
        self._notify(run)

    @staticmethod
    def _cleanup(run: SegmentationRun) -> None:
        if run.owns_work_dir:
            shutil.rmtree(run.work_dir, ignore_errors=True)

    @staticmethod
    def _notify(run: SegmentationRun) -> None:
        if run.on_update is not None:
            run.on_update(run)


INITIAL_LABELS_ATTRIBUTE = "ContrastSeg.InitialLabels"  # the engine's label map before any correction


def keep_initial(path: Path) -> Path | None:
    """Copy the engine's final label map out of the (temporary) work folder, into $CONTRASTSEG_HOME/initial,
    so a later export can record what the user changed. None if it cannot be kept (the export then says
    nothing about edits, as before)."""
    from contrastseg.store import home

    import uuid

    target = home() / "initial" / f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:8]}.nii.gz"
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)
    except OSError:
        return None
    return target


def only_volume(scene):
    """The scene's only scalar volume that is not a label map (the CT the user means), else None."""
    found = [scene.GetNthNodeByClass(i, "vtkMRMLScalarVolumeNode")
             for i in range(scene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode"))]
    found = [n for n in found if not n.IsA("vtkMRMLLabelMapVolumeNode") and not n.GetHideFromEditors()]
    return found[0] if len(found) == 1 else None


def segment_blocked(volume, no_organs: bool, running: bool) -> str | None:
    """Why Segment cannot start now (shown on the disabled button), or None."""
    if running:
        return "A segmentation is running: wait for it or cancel it."
    if volume is None:
        return "Select a CT volume first (or load the sample CT)."
    if no_organs:
        return "Choose at least one organ to segment."
    return None


def _same_path(a: Path, b: Path | None) -> bool:
    return b is not None and os.path.abspath(a) == os.path.abspath(b)

