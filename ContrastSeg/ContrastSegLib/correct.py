"""Prompted correction in Slicer (issues 9 and 23): points, a box, a stroke on the CT -> the warm engine worker ->
the organ's segment, and the segments of the organs it took voxels from.

The Logic behind the Correct section, without Qt. `start` writes the current segmentation as a label map
and sends `refine` to the session's worker (worker.shared_worker, shared with Segment, so a CT just
segmented is already open there) without waiting; `poll` (the panel's timer, a test's loop) applies the
answer when it comes; `cancel` drops it. The CT and model are the segmentation's own (the attributes
Segment recorded, `source_of`), never the panel's current choice, and the hints are mapped from world
coordinates into the CT's own space (`world_to_local`), so a CT under a transform gets them where they
were placed.

What an interaction changed is recorded on the organ's segment (tag `ContrastSeg.Edits`, a JSON list): the
Segment Editor's undo restores segment tags with the voxels, so an undone interaction takes its record
with it, and the training module's export stores only what is still there (`edits`).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import slicer

from contrastseg.errors import ContrastSegError
from contrastseg.organs import BY_ID, parse_organs

from . import layers, nodes

EDITS_TAG = "ContrastSeg.Edits"  # on each organ's segment: that organ's prompted edits
EDITS_ATTRIBUTE = "ContrastSeg.Edits"  # where earlier versions kept them, on the node (read, never written)
SOURCE_ATTRIBUTE, MODEL_ATTRIBUTE = "ContrastSeg.SourceVolume", "ContrastSeg.Model"
HINT_SEGMENT = "ContrastSeg hint"  # a rough stroke, painted with the Segment Editor; used and removed by refine


def world_to_local(volume_node):
    """The transform from world RAS to the CT's own RAS (its parent transform undone), or None without one."""
    if volume_node is None or volume_node.GetParentTransformNode() is None:
        return None
    import vtk

    transform = vtk.vtkGeneralTransform()
    slicer.vtkMRMLTransformNode.GetTransformBetweenNodes(None, volume_node.GetParentTransformNode(), transform)
    return transform


def _local(point, to_local) -> list[float]:
    return [float(v) for v in (to_local.TransformPoint(point) if to_local is not None else point)]


def markups_points_ras(markups_node, to_local=None) -> list[list[float]]:
    """The defined control points of a Markups node in RAS millimetres of the CT's own space (world RAS
    mapped by `to_local`, see `world_to_local`): what the engine's points_ras are."""
    if markups_node is None:
        return []
    points = []
    for i in range(markups_node.GetNumberOfControlPoints()):
        if markups_node.GetNthControlPointPositionStatus(i) != markups_node.PositionDefined:
            continue  # the point following the mouse while placing
        pos = [0.0, 0.0, 0.0]
        markups_node.GetNthControlPointPositionWorld(i, pos)
        points.append(_local(pos, to_local))
    return points


def roi_box_ras(roi_node, to_local=None) -> list[float] | None:
    """A Markups ROI as the engine's box_ras (x0, y0, z0, x1, y1, z1 in the CT's own RAS mm; a rotated or
    transformed ROI gives the box around it); None when there is no ROI or it is not finished."""
    if roi_node is None or roi_node.GetNumberOfControlPoints() == 0:
        return None
    bounds = [0.0] * 6
    roi_node.GetRASBounds(bounds)
    if not all(bounds[2 * k + 1] > bounds[2 * k] for k in range(3)):
        return None  # being placed: one corner so far
    corners = np.array([_local([x, y, z], to_local) for x in bounds[0:2] for y in bounds[2:4] for z in bounds[4:6]])
    return [*corners.min(0).tolist(), *corners.max(0).tolist()]


def hint_segment(segmentation_node, create: bool = False) -> str | None:
    """The ID of the segment the user paints a rough stroke into (no organ, so no export and no label map
    takes it); made on request, in yellow."""
    segmentation = segmentation_node.GetSegmentation()
    for i in range(segmentation.GetNumberOfSegments()):
        if segmentation.GetNthSegment(i).GetName() == HINT_SEGMENT:
            return segmentation.GetNthSegmentID(i)
    if not create:
        return None
    return segmentation.AddEmptySegment("", HINT_SEGMENT, [1.0, 0.85, 0.0])


def paint_hint_mode(editor_node) -> int:
    """Let the stroke painted into the hint segment overlap the organs: the Segment Editor's default mode
    overwrites every other segment, which would cut the stroke out of each organ under it. Returns the mode
    to restore once the stroke is used."""
    previous = editor_node.GetOverwriteMode()
    editor_node.SetOverwriteMode(editor_node.OverwriteNone)
    return previous


def edits(segmentation_node) -> list[dict]:
    """The prompted edits recorded on a segmentation node, oldest first: those on its segments (what an undo
    has not taken back) and any an earlier version kept on the node."""
    if segmentation_node is None:
        return []
    found = []
    segmentation = segmentation_node.GetSegmentation()
    for i in range(segmentation.GetNumberOfSegments()):
        found += _json_list(nodes.segment_tag(segmentation.GetNthSegment(i), EDITS_TAG))
    found += _json_list(segmentation_node.GetAttribute(EDITS_ATTRIBUTE))
    return sorted(found, key=lambda e: e.get("time", ""))


def _json_list(text) -> list[dict]:
    try:
        value = json.loads(text) if text else []
    except ValueError:
        return []
    return value if isinstance(value, list) else []


def source_of(segmentation_node) -> tuple[Any, str | None]:
    """(the CT a segmentation was made from, its model name or None for the default), or a sentence why not.

    Segment records both (`ContrastSeg.SourceVolume`, `ContrastSeg.Model`); a segmentation made otherwise
    counts as belonging to the volume that sets its geometry. The panel's CT selector is never used: after
    another CT is chosen there, a correction exported segmentation A onto CT B's grid."""
    if segmentation_node is None:
        raise ContrastSegError("Segment the CT first: the hints correct its segmentation.")
    recorded = segmentation_node.GetAttribute(SOURCE_ATTRIBUTE)
    volume = slicer.mrmlScene.GetNodeByID(recorded) if recorded else None
    if recorded and volume is None:
        raise ContrastSegError(f"The CT '{segmentation_node.GetName()}' was made from is no longer in the scene; "
                               "load it again (or segment the CT again) to correct it.")
    if volume is None:
        volume = segmentation_node.GetNodeReference(segmentation_node.GetReferenceImageGeometryReferenceRole())
    if volume is None or not volume.IsA("vtkMRMLScalarVolumeNode") or volume.IsA("vtkMRMLLabelMapVolumeNode"):
        raise ContrastSegError(f"'{segmentation_node.GetName()}' does not say which CT it belongs to; segment the CT "
                               "with ContrastSeg to correct it here.")
    model = (segmentation_node.GetAttribute(MODEL_ATTRIBUTE) or "").strip()
    return volume, (None if model in ("", "default") else model)


@dataclass
class CorrectionJob:
    """One interaction sent to the worker: what it asked for, and (once answered) what it changed."""

    segmentation: Any
    volume: Any
    organ_id: int
    hints: dict  # counts recorded with the edit: positive, negative, box, stroke
    output: Path
    rid: int | None = None
    open_rid: int | None = None
    state: str = "running"  # running, done, failed, cancelled
    change: dict | None = None
    error: str | None = None
    started: float = field(default_factory=time.monotonic)
    id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])  # the edit record's, for undo (interaction.py)
    placed: list = field(default_factory=list)  # the hint points this interaction placed (interaction.py)
    written: tuple | None = None  # (box, BTCV labels there before, after): what an undo writes back

    @property
    def finished(self) -> bool:
        return self.state != "running"


class CorrectionLogic:
    """Re-segments one organ of a Segmentation node from hints, in the session's worker."""

    def __init__(self, python: str | None = None, device: str = "auto", threads: int = 0,
                 save_undo: Callable[[], None] | None = None):
        """`device` and `threads` as the Segment settings give them, so both use the same worker. `save_undo`
        is called right before a result changes the segments (the Segment Editor's saveStateForUndo)."""
        from .segmentation import slicer_python

        self.python, self.device, self.threads = python or slicer_python(), device, threads
        self.save_undo = save_undo
        self.work = Path(tempfile.mkdtemp(prefix="ContrastSegCorrect-"))
        self._seq = 0

    def worker(self):
        from .segmentation import SegmentationLogic
        from .worker import shared_worker

        return shared_worker(self.python, dict(os.environ, **SegmentationLogic.engine_env()), self.device, self.threads)

    # ------------------------------------------------------------------ one interaction
    def start(self, segmentation_node, organ: str, positive=None, negative=None, box=None,
              volume_node=None) -> CorrectionJob:
        """Send the refinement of `organ` from its hints without waiting: the points of the Markups nodes
        `positive` / `negative`, the Markups ROI `box`, and a stroke painted into the hint segment.
        `volume_node`, if given, must be the CT the segmentation was made from (else a sentence says so)."""
        volume, model = source_of(segmentation_node)
        if volume_node is not None and volume_node is not volume:
            raise ContrastSegError(f"'{segmentation_node.GetName()}' was made from '{volume.GetName()}', not "
                                   f"'{volume_node.GetName()}': its hints correct it on its own CT.")
        try:
            (organ_id,) = parse_organs(organ)
        except ValueError as err:
            raise ContrastSegError(str(err)) from None
        to_local = world_to_local(volume)
        pos, neg = markups_points_ras(positive, to_local), markups_points_ras(negative, to_local)
        box_ras = roi_box_ras(box, to_local)
        hint = hint_segment(segmentation_node)
        stroke = slicer.util.arrayFromSegmentBinaryLabelmap(segmentation_node, hint, volume) if hint else None
        if stroke is not None and not stroke.any():
            stroke = None
        if not pos and not neg and not box_ras and stroke is None:
            raise ContrastSegError("place at least one point, a box or a stroke on the organ first")
        worker = self.worker()
        if worker.client is not None and worker.client.busy:
            raise ContrastSegError("the engine is still busy (segmenting, or the last update); wait for it or cancel it")
        self._seq += 1
        job = CorrectionJob(segmentation_node, volume, organ_id, output=self.work / f"refined-{self._seq}.nii",
                            hints={"positive": len(pos), "negative": len(neg), "box": bool(box_ras),
                                   "stroke": int(stroke.sum()) if stroke is not None else 0})
        try:
            job.open_rid = worker.send_open(volume, model)
            client = worker.connection(wait=False)
            # uncompressed: these files are written and read at every click (gzip of a 512x512 CT's labels
            # took about a second each way)
            current = nodes.write_labels_like(nodes.labelmap_array(segmentation_node, volume), volume, self.work / "current.nii")
            scribble = nodes.write_labels_like(stroke > 0, volume, self.work / "stroke.nii") if stroke is not None else None
            job.rid = client.send("refine", ct=volume.GetID(), organ=BY_ID[organ_id].key, labels=str(current),
                                  output=str(job.output), points_ras=pos, neg_points_ras=neg, box_ras=box_ras,
                                  scribble=str(scribble) if scribble else None, output_box=True)
        except ContrastSegError as err:
            raise ContrastSegError(worker.died(str(err)) if worker.client is None or not worker.client.alive() else str(err)) from None
        return job

    def poll(self, job: CorrectionJob) -> bool:
        """Apply the answer if it has come; True while the job still runs."""
        if job.finished:
            return False
        worker = self.worker()
        try:
            if job.open_rid is not None:
                for msg in worker.client.take(job.open_rid):
                    if "ok" in msg:
                        worker.opened_done(job.volume.GetID(), msg)
                        job.open_rid = None
                        if not msg["ok"]:
                            worker.client.abandon(job.rid)
                            return self._fail(job, msg["error"])
            answer = next((m for m in worker.client.take(job.rid) if "ok" in m), None)
        except ContrastSegError as err:
            return self._fail(job, worker.died(str(err)))
        if answer is None:
            return True
        if not answer["ok"]:
            return self._fail(job, answer.get("error") or "the engine failed")
        try:
            self._apply(job, answer["change"])
        except Exception as err:  # noqa: BLE001 - a result that cannot be read in ends the job readably
            return self._fail(job, f"could not load the result: {err}")
        job.state = "done"
        return False

    def wait(self, job: CorrectionJob, timeout: float = 600.0) -> CorrectionJob:
        """Poll until the job ends (tests, batch use); cancels it after `timeout` seconds."""
        end = time.monotonic() + timeout
        while self.poll(job):
            if time.monotonic() > end:
                self.cancel(job)
                job.error = f"cancelled after {timeout:.0f} s"
                break
            time.sleep(0.02)
        return job

    def cancel(self, job: CorrectionJob) -> None:
        """Stop waiting for the job: the worker drops it at its next check and nothing is applied."""
        if job.finished:
            return
        job.state = "cancelled"
        client = self.worker().client
        for rid in (job.open_rid, job.rid):
            if rid is not None and client is not None and client.alive():
                try:
                    client.abandon(client.send("cancel", target=rid))
                except ContrastSegError:
                    pass
                client.abandon(rid)
        if job.open_rid is not None:  # it may never have opened: open it again next time
            self.worker().opened.pop(job.volume.GetID(), None)

    def refine(self, volume_node, segmentation_node, organ: str, positive=None, negative=None, box=None,
               model: str | None = None) -> dict:
        """One interaction, waited for (batch mode and scripts); returns the change. `model` is ignored: the
        segmentation's own model is used. Raises ContrastSegError with the worker's sentence on failure."""
        job = self.wait(self.start(segmentation_node, organ, positive, negative, box, volume_node=volume_node))
        if job.state != "done":
            raise ContrastSegError(job.error or "the update was cancelled")
        return job.change

    # ------------------------------------------------------------------ applying
    def _fail(self, job: CorrectionJob, message: str) -> bool:
        job.state, job.error = "failed", message
        return False

    def _apply(self, job: CorrectionJob, change: dict) -> None:
        """Write the changed organs into their segments. The worker sends only the box that changed, written in
        place into the organs' shared layer where they have one, else through Slicer's import of each changed
        organ (`layers.write_box`). Records the change on the organ's segment; a change of nothing is no edit."""
        box = change.pop("box", None)
        change = dict(change, **job.hints, time=time.strftime("%Y-%m-%dT%H:%M:%S%z"), id=job.id)
        job.change = change
        if change["added"] or change["removed"]:
            box = tuple(slice(int(a), int(b)) for a, b in box)
            labels = _read_array(job.output)
            if labels.shape != tuple(s.stop - s.start for s in box):
                raise ValueError(f"the result's {labels.shape} voxels do not fill the changed box {box}")
            if self.save_undo is not None:
                self.save_undo()  # the Segment Editor's Ctrl+Z takes back exactly this
            before = layers.box_labels(job.segmentation, job.volume, box)
            job.written = (box, before, labels)  # what an undo writes back (web page)
            layers.write_box(job.segmentation, job.volume, box, labels, organs=[job.organ_id], before=before)
            segment = nodes.organ_segment(job.segmentation, job.organ_id)
            segment.SetTag(EDITS_TAG, json.dumps(_json_list(nodes.segment_tag(segment, EDITS_TAG)) + [change]))
        hint = hint_segment(job.segmentation)
        if hint is not None:
            job.segmentation.GetSegmentation().RemoveSegment(hint)
        job.output.unlink(missing_ok=True)

    def cleanup(self) -> None:
        """Remove this Logic's files; the worker is the session's (worker.shutdown_shared_worker stops it)."""
        shutil.rmtree(self.work, ignore_errors=True)


def change_message(organ_name: str, change: dict) -> str:
    """The status line after a correction: what changed, what was taken from which organ, and why nothing
    changed when nothing did (that surprises: a point inside the segment has nothing new to add)."""
    if not change["added"] and not change["removed"]:
        return (f"{organ_name}: nothing changed. A point well inside the organ's segment adds nothing: place Inside "
                "points where the organ is missing, Outside points on what is wrong.")
    taken = ", ".join(f"{n} from {BY_ID[parse_organs(k)[0]].name}" for k, n in (change.get("taken") or {}).items())
    return (f"{organ_name}: +{change['added']} / -{change['removed']} voxels"
            + (f" ({taken})" if taken else "") + f" in {change['seconds']:.1f} s.")


def _read_array(path: Path) -> np.ndarray:
    import SimpleITK as sitk

    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))
