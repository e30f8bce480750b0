"""A scripted stand-in for the engine process, to test the module Logic's handling of the event stream
(coarse first, refined in place or beside, cancel, unreadable results, errors) in milliseconds.

The Logic takes its process runner as an argument (`SegmentationLogic(runner=...)`); `scripted_logic`
gives it one that replays `script` instead of asking the engine's worker.
"""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import SimpleITK as sitk

from realdata import TS

CT_SM = TS / "example_ct_sm.nii.gz"


class ScriptedProcess:
    """Stands in for the worker's WorkerJob: replays one scripted event per poll; copies prepared label files to the
    run's output paths when their `output` event is due, as the engine writes them before announcing them."""

    def __init__(self, job, on_event, script, files, returncode=0):
        from ContrastSegLib.process import EngineEvent

        self.make_event = EngineEvent
        self.job, self.on_event = job, on_event
        self.paths = {"output": job.request["output"]}
        if job.request.get("coarse_output"):
            self.paths["coarse"] = job.request["coarse_output"]
        self.script, self.files, self.code = script, files, returncode
        self.i, self.cancelled, self.events = 0, False, []

    def start(self):
        return self

    def running(self) -> bool:
        return not self.cancelled and self.i < len(self.script)

    @property
    def returncode(self):
        return None if self.running() else (-15 if self.cancelled else self.code)

    def poll(self):
        if not self.running():
            return []
        record = dict(self.script[self.i])
        self.i += 1
        if record["event"] == "output":
            target = self.paths[record.pop("file")]
            shutil.copy(self.files[record["kind"]], target)
            record["path"] = target
        event = self.make_event(record["event"], record)
        self.events.append(event)
        self.on_event(event)
        return [event]

    def cancel(self):
        self.cancelled = True

    def error_message(self):
        return next((e.data["message"] for e in reversed(self.events) if e.event == "error"), None)


def progress(stage, fraction):
    return {"event": "progress", "stage": stage, "fraction": fraction, "eta": 3.0, "message": ""}


REFINED_SCRIPT = [progress("read", 0.0), progress("coarse", 0.15), {"event": "output", "kind": "coarse", "file": "coarse"},
                  progress("refine", 0.4), progress("refine", 0.8),
                  {"event": "output", "kind": "refined", "file": "output"}, {"event": "done", "timings": {"total": 1.0}}]


@pytest.fixture
def label_files(tmp_path):
    """A coarse and a refined label map on the grid of the small CT, as the engine writes them."""
    if not CT_SM.exists():
        pytest.skip(f"real CT data not found at {CT_SM}")
    ct = sitk.ReadImage(str(CT_SM))
    files = {}
    for kind, (liver, spleen) in {"coarse": (6, 1), "refined": (6, 1)}.items():
        arr = np.zeros(ct.GetSize()[::-1], np.uint8)
        grow = 0 if kind == "coarse" else 2
        arr[5:20, 20 - grow:60, 10:50 + grow] = liver
        arr[10:25, 40:70, 70:100] = spleen
        image = sitk.GetImageFromArray(arr)
        image.CopyInformation(ct)
        files[kind] = tmp_path / f"{kind}-prepared.nii.gz"
        sitk.WriteImage(image, str(files[kind]))
    return files


def scripted_logic(script, files, returncode=0):
    from ContrastSegLib.segmentation import SegmentationLogic

    return SegmentationLogic(runner=lambda **kw: ScriptedProcess(**kw, script=script, files=files, returncode=returncode))
