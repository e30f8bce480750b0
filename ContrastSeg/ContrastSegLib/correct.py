"""Prompted correction in Slicer (issue 9): points, a box, a stroke on the CT -> the warm engine worker -> one segment.

The Logic behind the Correct section: it writes the current segmentation as a label map, asks the session's
worker (worker.shared_worker: `contrastseg serve --stdio`, shared with Segment, so a CT just segmented is
already open there; started on first use and restarted if it died) to re-segment one organ from the points,
and writes back only that organ's segment: every other segment keeps its voxels. Each change is recorded on the segmentation node
(`ContrastSeg.Edits`, a JSON list), which the training module's export stores as provenance.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import slicer

from contrastseg.errors import ContrastSegError
from contrastseg.organs import BY_ID, parse_organs

from . import nodes

EDITS_ATTRIBUTE = "ContrastSeg.Edits"
HINT_SEGMENT = "ContrastSeg hint"  # a rough stroke, painted with the Segment Editor; used and removed by refine


def markups_points_ras(markups_node) -> list[list[float]]:
    """The control points of a Markups node in world RAS millimetres (what the engine's points_ras are)."""
    if markups_node is None:
        return []
    points = []
    for i in range(markups_node.GetNumberOfControlPoints()):
        pos = [0.0, 0.0, 0.0]
        markups_node.GetNthControlPointPositionWorld(i, pos)
        points.append([float(v) for v in pos])
    return points


def roi_box_ras(roi_node) -> list[float] | None:
    """A Markups ROI as the engine's box_ras (x0, y0, z0, x1, y1, z1 in world RAS mm; a rotated ROI gives the
    box around it); None when there is no ROI or it has not been placed."""
    if roi_node is None or roi_node.GetNumberOfControlPoints() == 0:
        return None
    bounds = [0.0] * 6
    roi_node.GetRASBounds(bounds)
    return [bounds[0], bounds[2], bounds[4], bounds[1], bounds[3], bounds[5]]


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
    """The prompted edits recorded on a segmentation node, oldest first."""
    text = segmentation_node.GetAttribute(EDITS_ATTRIBUTE) if segmentation_node is not None else None
    try:
        return json.loads(text) if text else []
    except ValueError:
        return []


class CorrectionLogic:
    """Re-segments one organ of a Segmentation node from points, in the session's worker."""

    def __init__(self, python: str | None = None, device: str = "auto", threads: int = 0):
        """`device` and `threads` as the Segment settings give them, so both use the same worker."""
        from .segmentation import slicer_python

        self.python, self.device, self.threads = python or slicer_python(), device, threads
        self.work = Path(tempfile.mkdtemp(prefix="ContrastSegCorrect-"))

    def worker(self):
        from .segmentation import SegmentationLogic
        from .worker import shared_worker

        return shared_worker(self.python, dict(os.environ, **SegmentationLogic.engine_env()), self.device, self.threads)

    def refine(self, volume_node, segmentation_node, organ: str, positive=None, negative=None, box=None,
               model: str | None = None) -> dict:
        """Re-segment `organ` from its hints; returns the change. The hints: the points of the Markups nodes
        `positive` / `negative`, the Markups ROI `box`, and a stroke painted into the hint segment (which is
        removed once used, so the next correction starts clean)."""
        if volume_node is None or segmentation_node is None:
            raise ContrastSegError("choose the CT and its segmentation first")
        try:
            (organ_id,) = parse_organs(organ)
        except ValueError as err:
            raise ContrastSegError(str(err)) from None
        pos, neg, box_ras = markups_points_ras(positive), markups_points_ras(negative), roi_box_ras(box)
        hint = hint_segment(segmentation_node)
        stroke = slicer.util.arrayFromSegmentBinaryLabelmap(segmentation_node, hint, volume_node) if hint else None
        if stroke is not None and not stroke.any():
            stroke = None
        if not pos and not neg and not box_ras and stroke is None:
            raise ContrastSegError("place at least one point, a box or a stroke on the organ first")
        worker = self.worker()
        if worker.client is not None and worker.client.busy:
            raise ContrastSegError("the engine is still segmenting; wait for it to finish (or cancel it), then click again")
        try:
            ct = worker.open(volume_node, model)
            # uncompressed: these two files are written and read at every click (gzip of a 512x512 CT's labels
            # took about a second each way)
            current = self.work / "current.nii"
            before = nodes.labelmap_array(segmentation_node, volume_node)
            nodes.write_labels_like(before, volume_node, current)
            scribble = None
            if stroke is not None:
                scribble = nodes.write_labels_like(stroke > 0, volume_node, self.work / "stroke.nii")
            output = self.work / "refined.nii"
            answer = worker.client.request("refine", ct=ct, organ=BY_ID[organ_id].key, labels=str(current),
                                           output=str(output), points_ras=pos, neg_points_ras=neg, box_ras=box_ras,
                                           scribble=str(scribble) if scribble else None)
        except ContrastSegError as err:
            if worker.client is None or not worker.client.alive():
                raise ContrastSegError(worker.died(str(err))) from None
            raise
        if not answer["ok"]:
            raise ContrastSegError(answer["error"])
        change = dict(answer["change"], positive=len(pos), negative=len(neg), box=bool(box_ras),
                      stroke=int(stroke.sum()) if stroke is not None else 0, time=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
        if change["added"] or change["removed"]:  # a correction that changed nothing is not an edit
            after = _read_array(output)
            self._update_segment(segmentation_node, volume_node, organ_id, after == organ_id)
            segmentation_node.SetAttribute(EDITS_ATTRIBUTE, json.dumps(edits(segmentation_node) + [change]))
        if hint is not None:
            segmentation_node.GetSegmentation().RemoveSegment(hint)
        return change

    @staticmethod
    def _update_segment(segmentation_node, volume_node, organ_id: int, mask: np.ndarray) -> None:
        """Write one organ's mask into its segment (created if the user deleted it); other segments untouched."""
        organ = BY_ID[organ_id]
        segmentation = segmentation_node.GetSegmentation()
        if segmentation.GetSegment(organ.key) is None:
            segmentation.AddEmptySegment(organ.key, organ.name, [c / 255.0 for c in organ.color])
            segment = segmentation.GetSegment(organ.key)
            segment.SetTag(segment.GetTerminologyEntryTagName(), organ.terminology_entry())
            segment.SetTag(nodes.ORGAN_TAG, str(organ.id))
        slicer.util.updateSegmentBinaryLabelmapFromArray(mask.astype(np.uint8), segmentation_node, organ.key, volume_node)

    def cleanup(self) -> None:
        """Remove this Logic's files; the worker is the session's (worker.shutdown_shared_worker stops it)."""
        shutil.rmtree(self.work, ignore_errors=True)


def change_message(organ_name: str, change: dict) -> str:
    """The status line after a correction. It says why nothing changed, since that surprises: a positive point
    adds only the part of the organ that is new and connected to it, so one inside the segment adds nothing."""
    if not change["added"] and not change["removed"]:
        return (f"{organ_name}: nothing changed. Inside points well inside the organ's segment add nothing, and the "
                "organ never takes another organ's voxels: place Inside points where the organ is missing.")
    return f"{organ_name}: +{change['added']} / -{change['removed']} voxels in {change['seconds']:.1f} s."


def _read_array(path: Path) -> np.ndarray:
    import SimpleITK as sitk

    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))
