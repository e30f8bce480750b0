"""Correcting one organ from the page: a click, a box, clearing it; every change undoable with paint and erase.

The refinement is the Slicer module's own (`ContrastSegLib.correct.CorrectionLogic`: the session's warm worker,
the same prompt rules, only the chosen organ's segment rewritten, the edit recorded on the node for the
dataset's provenance). This module only turns what happened in a slice view (a world position, a modifier key,
two corners of a drag) into the Markups nodes that Logic reads, and wraps each change in a command on
trame-slicer's undo stack, the one its Paint and Erase effects push to, so Undo and Redo walk through clicks
and brush strokes in the order they were made.
"""

from __future__ import annotations

from undo_stack import UndoCommand

from contrastseg.errors import ContrastSegError

from .surfaces import CORRECTION, Surfaces


def box_from_drag(a, b) -> list[float]:
    """The box (x0, y0, z0, x1, y1, z1, RAS mm) for a rectangle dragged on a slice from corner `a` to `b`.

    A drag draws a flat rectangle; the organ it frames also extends above and below that slice. The axis on
    which the corners agree is the slice's normal; the box gets half the rectangle's shorter side on either
    side of the slice along it, i.e. the organ is taken to be about as deep as it is wide (kidney, spleen)."""
    lo = [min(float(x), float(y)) for x, y in zip(a, b)]
    hi = [max(float(x), float(y)) for x, y in zip(a, b)]
    sides = [h - l for l, h in zip(lo, hi)]
    normal = min(range(3), key=lambda k: sides[k])
    in_plane = sorted(s for k, s in enumerate(sides) if k != normal)
    if in_plane[0] < 2.0:
        raise ContrastSegError("drag a box around the organ (the one drawn is thinner than 2 mm)")
    half = in_plane[0] / 2
    lo[normal] -= half
    hi[normal] += half
    return lo + hi


def is_negative(mode_negative: bool, ctrl: bool = False, shift: bool = False) -> bool:
    """A click removes (negative) in the 'Remove' mode, or with Ctrl or Shift held in the 'Add' mode (and the
    modifier turns a 'Remove' click into an adding one): one hand on the mouse does both."""
    return bool(mode_negative) != bool(ctrl or shift)


class PromptedEditCommand(UndoCommand):
    """A refinement (or a cleared organ) on the undo stack: the organs in the box it changed, before and after
    (BTCV ids, box-sized), and the clicked organ's record of prompted edits, which must shrink again on undo
    (it becomes the entry's provenance). A copy of the whole segmentation per step (trame-slicer's state stack)
    cost 0.02 s to make and 0.16 s to free for a 512x512 CT, twice per click."""

    TEXT = CORRECTION

    def __init__(self, corrector, node, key: str, written: tuple, edits: tuple):
        super().__init__()
        self._corrector, self._node, self._key = corrector, node, key
        self._box, self._before, self._after = written
        self._edits = edits  # the organ's edits tag before and after

    def text(self) -> str:
        return self.TEXT

    def _put(self, labels, edits) -> None:
        from ContrastSegLib.correct import EDITS_TAG
        from ContrastSegLib.layers import write_box

        surfaces = self._corrector.surfaces
        surfaces.during_edit()
        write_box(self._node, self._corrector.session.volume, self._box, labels)
        surfaces.changed(self._node, self._before, self._after, self._key)
        segment = self._node.GetSegmentation().GetSegment(self._key)
        if segment is not None:
            if edits is None:
                segment.RemoveTag(EDITS_TAG)
            else:
                segment.SetTag(EDITS_TAG, edits)
        surfaces.edited()

    def undo(self) -> None:
        self._put(self._before, self._edits[0])

    def redo(self) -> None:
        self._put(self._after, self._edits[1])


class Corrector:
    """Clicks, boxes and clears on the session's current segmentation."""

    def __init__(self, session):
        from ContrastSegLib.correct import CorrectionLogic
        from ContrastSegLib.parameter import engine_device

        self.session = session
        self.surfaces = Surfaces(session)  # the 3D surfaces around each edit
        self.logic = CorrectionLogic(python=session.python, device=engine_device(session.settings()),
                                     threads=session.threads)

    def click(self, key: str, ras, negative: bool = False) -> dict:
        """Re-segment organ `key` from one point (RAS mm): positive adds the missed part connected to it,
        negative removes the part it lands in."""
        import slicer

        points = slicer.vtkMRMLMarkupsFiducialNode()
        points.AddControlPoint(*[float(v) for v in ras[:3]])
        return self._refine(key, negative=points) if negative else self._refine(key, positive=points)

    def box(self, key: str, ras_a, ras_b) -> dict:
        """Re-segment organ `key` inside a box dragged on a slice (see `box_from_drag`)."""
        import slicer

        x0, y0, z0, x1, y1, z1 = box_from_drag(ras_a, ras_b)
        roi = slicer.vtkMRMLMarkupsROINode()
        roi.SetCenter((x0 + x1) / 2, (y0 + y1) / 2, (z0 + z1) / 2)
        roi.SetSize(x1 - x0, y1 - y0, z1 - z0)
        return self._refine(key, box=roi)

    def clear(self, key: str) -> int:
        """Empty organ `key` (the model put it in the wrong place: clear it, then click where it is). Undoable."""
        import numpy as np

        from ContrastSegLib import nodes
        from ContrastSegLib.layers import box_labels, write_box
        from contrastseg.clicks import bounding_box

        node = self._segmentation_node(key)
        organ = nodes.organ_id(node.GetSegmentation().GetSegment(key))
        labels = nodes.labelmap_array(node, self.session.volume)
        box = bounding_box(labels == organ) if organ is not None else None
        if box is None:
            return 0
        before = box_labels(node, self.session.volume, box)
        after = np.where(before == organ, 0, before).astype(np.uint8)
        edits = self._edits_tag(node, key)
        self.surfaces.during_edit()
        write_box(node, self.session.volume, box, after, before=before)
        self._push(node, key, (box, before, after), (edits, edits))
        return int((before == organ).sum())

    # ----------------------------------------------------------------------------------------------- helpers
    def _segmentation_node(self, key: str):
        node = self.session.segmentation
        if node is None:
            raise ContrastSegError("segment the CT first")
        if not key or node.GetSegmentation().GetSegment(key) is None:
            raise ContrastSegError("select the organ to correct in the list first")
        return node

    def _refine(self, key: str, positive=None, negative=None, box=None) -> dict:
        """One refinement with the segmentation's own CT and model (recorded by Segment), pushed on the undo stack."""
        node = self._segmentation_node(key)
        run = self.session.run
        if run is not None and not run.finished:
            raise ContrastSegError("a segmentation is running; wait for it (or cancel it), then click again")
        self.surfaces.during_edit()
        edits = self._edits_tag(node, key)
        try:
            job = self.logic.wait(self.logic.start(node, key, positive, negative, box, volume_node=self.session.volume))
            if job.state != "done":
                raise ContrastSegError(job.error or "the update was cancelled")
        except Exception:
            self.surfaces.abandon()  # nothing changed: the surfaces back at once
            raise
        if job.written is not None:
            self._push(node, key, job.written, (edits, self._edits_tag(node, key)))
        return job.change

    def _push(self, node, key: str, written: tuple, edits: tuple) -> None:
        """Put a done edit on trame-slicer's undo stack (the one Paint and Erase use), without running it again."""
        self.surfaces.changed(node, written[1], written[2], key)
        stack = self.session.editor.undo_stack
        if stack is not None:
            command = PromptedEditCommand(self, node, key, written, edits)
            stack.push(command)
        self.surfaces.edited()

    @staticmethod
    def _edits_tag(node, key: str) -> str | None:
        from ContrastSegLib.correct import EDITS_TAG
        from ContrastSegLib.nodes import segment_tag

        segment = node.GetSegmentation().GetSegment(key)
        return segment_tag(segment, EDITS_TAG) if segment is not None else None
