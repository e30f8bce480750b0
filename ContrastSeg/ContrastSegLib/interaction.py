"""Every hint applies at once (issue 23), as in nnInteractive: placing a point, finishing a box or painting a
stroke updates the organ of the segment selected in the Segment Editor. The decisions, without Qt.

`InteractionLogic` watches the hint Markups nodes and the segmentation (VTK observers, which work under
slicer-core too), and turns each finished hint into one interaction: a `CorrectionLogic` job with every hint
of the organ so far. The panel only runs `tick()` from a timer while `busy`, shows `status_text()`, and sets
the editor read-only meanwhile. One interaction runs at a time; hints placed while one runs are taken by the
next (so a burst of clicks costs one more update, not one each).

Undo is the Segment Editor's own (Ctrl+Z): the correction saves the editor's undo state right before it
changes the segments, and the record of each interaction lives in a segment tag, which the editor's undo
restores with the voxels. When an undo takes an interaction's record away, `reconcile` removes the hint
points that interaction placed, so the next update does not bring it back.
"""

from __future__ import annotations

import time
from typing import Callable

import slicer

from contrastseg.errors import ContrastSegError
from contrastseg.organs import BY_ID, ORGANS

from . import nodes
from .correct import HINT_SEGMENT, MODEL_ATTRIBUTE, CorrectionLogic, change_message, edits

SHOW_STATUS_AFTER = 1.0  # seconds before a running update says so in the status line
# The Correct section's keys: P places points, N flips inside/outside, X draws a box. None is a slice view's
# (b, f, g, r, s, t, v: b is the previous slice, which the box had) or the Segment Editor's (digits, q, w, z, y).
KEYS = {"point": "p", "flip": "n", "box": "x"}
POLARITY = {"positive": "negative", "negative": "positive"}


def model_organs(segmentation_node) -> list[str]:
    """The keys of the organs the segmentation's model covers (its card, as JSON: no torch in Slicer), in the
    organ table's order; every organ when the model is unknown."""
    from .parameter import SegmentSettings
    from .segmentation import SegmentationLogic

    model = (segmentation_node.GetAttribute(MODEL_ATTRIBUTE) or "") if segmentation_node is not None else ""
    covered = set(SegmentationLogic.organs_for(SegmentSettings(model="" if model == "default" else model)))
    return [o.key for o in ORGANS if o.id in covered]


def organ_of_segment(segmentation_node, segment_id: str | None) -> str | None:
    """The organ key of a segment (its tag, terminology or name), or None for the hint segment and others."""
    if segmentation_node is None or not segment_id:
        return None
    segment = segmentation_node.GetSegmentation().GetSegment(segment_id)
    if segment is None or segment.GetName() == HINT_SEGMENT:
        return None
    found = nodes.organ_id(segment)
    return BY_ID[found].key if found is not None else None


class InteractionLogic:
    """The hints of one organ of one segmentation, applied one interaction at a time."""

    def __init__(self, correction: CorrectionLogic, on_pending: Callable[[], None] | None = None):
        """`on_pending` is called when a hint waits to be applied (the panel starts its timer)."""
        self.correction, self.on_pending = correction, on_pending
        self.immediate = True  # False: batch mode, hints wait for `apply_now`
        self.organ: str | None = None
        self.segmentation = self.positive = self.negative = self.box = None
        self.job = None
        self.pending = False
        self.message = ""
        self.applied: list[tuple[str, list]] = []  # (record id, [(markups node, control point ID)]) per interaction
        self._placed: list = []  # hint points placed since the last interaction started
        self._observed: list[tuple] = []
        self._applying = False
        self._stroke_seen = None  # the hint segment's labelmap modification time last taken as a stroke

    # ------------------------------------------------------------------ binding
    def bind(self, segmentation_node, positive, negative, box) -> None:
        """Watch these hint nodes and this segmentation (None unbinds, e.g. before a scene closes)."""
        self.unbind()
        self.segmentation, self.positive, self.negative, self.box = segmentation_node, positive, negative, box
        from slicer import vtkMRMLMarkupsNode as M

        for node in (positive, negative):
            if node is not None:
                self._observe(node, M.PointPositionDefinedEvent, lambda caller, _e: self.on_point(caller))
        if box is not None:
            for event in (M.PointPositionDefinedEvent, M.PointEndInteractionEvent):
                self._observe(box, event, lambda caller, _e: self.on_box())
        if segmentation_node is not None:
            segmentation = segmentation_node.GetSegmentation()
            self._observe(segmentation, slicer.vtkSegmentation.SegmentModified, lambda _c, _e: self.on_segments())
            self._observe(segmentation, slicer.vtkSegmentation.SegmentRemoved, lambda _c, _e: self.reconcile())

    def _observe(self, obj, event, callback) -> None:
        self._observed.append((obj, obj.AddObserver(event, callback)))

    def unbind(self) -> None:
        for obj, tag in self._observed:
            obj.RemoveObserver(tag)
        self._observed = []
        self.segmentation = self.positive = self.negative = self.box = None
        self.applied, self._placed = [], []

    def set_organ(self, organ: str | None) -> bool:
        """The organ the hints are for; another organ starts with no hints (the old ones were for the old
        organ). Returns whether it changed."""
        if organ == self.organ:
            return False
        self.organ = organ
        self.clear_hints()
        return True

    def clear_hints(self) -> None:
        for node in (self.positive, self.negative, self.box):
            if node is not None:
                node.RemoveAllControlPoints()
        self.applied, self._placed, self.pending = [], [], False

    # ------------------------------------------------------------------ hints arrive
    def on_point(self, node) -> None:
        """A point was placed (its position defined): remember it, and update at once unless in batch mode."""
        index = node.GetNumberOfControlPoints() - 1
        if index >= 0:
            self._placed.append((node, node.GetNthControlPointID(index)))
        self._hint()

    def on_box(self) -> None:
        from .correct import roi_box_ras

        if roi_box_ras(self.box) is not None:  # finished: both corners placed (or a handle let go)
            self._hint()

    def on_segments(self) -> None:
        """A segment changed: a stroke painted into the hint segment is a hint (the Paint effect writes it
        when the stroke ends); an undo may have taken an interaction's record away."""
        if self._applying or self.segmentation is None:
            return
        self.reconcile()
        from .correct import hint_segment

        hint = hint_segment(self.segmentation)
        segment = self.segmentation.GetSegmentation().GetSegment(hint) if hint else None
        stamp = _labelmap_mtime(segment)
        if stamp is not None and stamp != self._stroke_seen:
            self._stroke_seen = stamp
            self._hint()

    def clear_box(self) -> None:
        """Before a new box is drawn: the placed one goes (the place widget would start a second ROI node,
        which no update reads)."""
        if self.box is not None:
            self.box.RemoveAllControlPoints()

    def _hint(self) -> None:
        self.pending = True
        if self.on_pending is not None:
            self.on_pending()

    # ------------------------------------------------------------------ running
    @property
    def busy(self) -> bool:
        return self.job is not None or (self.pending and self.immediate)

    def tick(self) -> bool:
        """Poll the running interaction (applying its result), then start the next if hints wait; True while
        there is more to do."""
        if self.job is not None:
            self._applying = True
            try:
                running = self.correction.poll(self.job)
            finally:
                self._applying = False
            if running:
                return True
            self._finished(self.job)
            self.job = None
        if self.pending and self.immediate:
            self.apply_now()
        return self.job is not None

    def apply_now(self) -> None:
        """Start one interaction with every hint of the organ so far (batch mode's Update button, or the next
        pending hint); a sentence in `message` if it cannot start."""
        self.pending = False
        if self.job is not None:
            self.pending = True  # taken by the next interaction
            return
        if not self.organ:
            self.message = "Select the organ's segment in the editor below (or choose the organ) first."
            return
        try:
            self.job = self.correction.start(self.segmentation, self.organ, self.positive, self.negative, self.box)
        except ContrastSegError as err:
            self.message = str(err)
            return
        self.job.placed, self._placed = self._placed, []
        self.message = ""

    def cancel(self) -> None:
        """Stop the running interaction (nothing of it is applied) and forget the hints waiting."""
        if self.job is not None:
            self.correction.cancel(self.job)
            self._remove_points(self.job.placed)  # the hints of a cancelled update go with it
            self.job = None
            self.message = "Update cancelled."
        self.pending = False

    def _finished(self, job) -> None:
        name = BY_ID[job.organ_id].name
        if job.state == "done":
            self.message = change_message(name[:1].upper() + name[1:], job.change)
            if job.change["added"] or job.change["removed"]:
                self.applied.append((job.id, job.placed))
        elif job.state == "failed":
            self.message = f"Could not update the {name}: {job.error}"

    def status_text(self) -> str:
        """The status line: after SHOW_STATUS_AFTER seconds of a running update, that it runs and for how long."""
        if self.job is not None:
            elapsed = time.monotonic() - self.job.started
            if elapsed >= SHOW_STATUS_AFTER:
                return f"Updating the {BY_ID[self.job.organ_id].name}... {elapsed:.0f} s (Cancel stops it)"
            return ""
        return self.message

    # ------------------------------------------------------------------ undo
    def reconcile(self) -> None:
        """After an undo: the interactions whose record is gone take their hint points with them."""
        if self.segmentation is None or not self.applied:
            return
        present = {e.get("id") for e in edits(self.segmentation)}
        while self.applied and self.applied[-1][0] not in present:
            _, placed = self.applied.pop()
            self._remove_points(placed)

    @staticmethod
    def _remove_points(placed) -> None:
        for node, point_id in placed:
            index = node.GetNthControlPointIndexByID(point_id)
            if index >= 0:
                node.RemoveNthControlPoint(index)



def _labelmap_mtime(segment):
    """The modification time of a segment's binary labelmap (None without one, or when it is empty)."""
    if segment is None:
        return None
    from slicer import vtkSegmentationConverter

    labelmap = segment.GetRepresentation(vtkSegmentationConverter.GetBinaryLabelmapRepresentationName())
    if labelmap is None or labelmap.IsEmpty():
        return None
    return labelmap.GetMTime()
