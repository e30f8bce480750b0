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
    """A refinement (or a cleared organ) on the undo stack: the segmentation's state before and after it, and
    the node's record of prompted edits, which must shrink again on undo (it becomes the entry's provenance)."""

    def __init__(self, stack, segmentation, node, edits_before: str | None, edits_after: str | None):
        super().__init__()
        self._stack, self._segmentation, self._node = stack, segmentation, node
        self._edits = (edits_before, edits_after)

    def _set_edits(self, value: str | None) -> None:
        from ContrastSegLib.correct import EDITS_ATTRIBUTE

        if value is None:
            self._node.RemoveAttribute(EDITS_ATTRIBUTE)
        else:
            self._node.SetAttribute(EDITS_ATTRIBUTE, value)

    def undo(self) -> None:
        self._stack.restore_previous()
        self._set_edits(self._edits[0])
        self._segmentation.trigger_modified()

    def redo(self) -> None:
        self._stack.restore_next()
        self._set_edits(self._edits[1])
        self._segmentation.trigger_modified()


class Corrector:
    """Clicks, boxes and clears on the session's current segmentation."""

    def __init__(self, session):
        from ContrastSegLib.correct import CorrectionLogic
        from ContrastSegLib.parameter import engine_device

        self.session = session
        self.unsettled = None  # the segmentation an edit changed, until `settle` tells trame-slicer
        self.logic = CorrectionLogic(python=session.python, device=engine_device(session.settings()),
                                     threads=session.threads)

    def click(self, key: str, ras, negative: bool = False, model: str = "") -> dict:
        """Re-segment organ `key` from one point (RAS mm): positive adds the missed part connected to it,
        negative removes the part it lands in."""
        import slicer

        points = slicer.vtkMRMLMarkupsFiducialNode()
        points.AddControlPoint(*[float(v) for v in ras[:3]])
        return self._refine(key, negative=points, model=model) if negative else self._refine(key, positive=points, model=model)

    def box(self, key: str, ras_a, ras_b, model: str = "") -> dict:
        """Re-segment organ `key` inside a box dragged on a slice (see `box_from_drag`)."""
        import slicer

        x0, y0, z0, x1, y1, z1 = box_from_drag(ras_a, ras_b)
        roi = slicer.vtkMRMLMarkupsROINode()
        roi.SetCenter((x0 + x1) / 2, (y0 + y1) / 2, (z0 + z1) / 2)
        roi.SetSize(x1 - x0, y1 - y0, z1 - z0)
        return self._refine(key, box=roi, model=model)

    def clear(self, key: str) -> int:
        """Empty organ `key` (the model put it in the wrong place: clear it, then click where it is). Undoable."""
        import numpy as np
        import slicer

        from ContrastSegLib.layers import share

        node = self._segmentation_node(key)
        mask = slicer.util.arrayFromSegmentBinaryLabelmap(node, key, self.session.volume)
        removed = int((mask > 0).sum()) if mask is not None else 0
        if removed:
            with self._undoable(node):
                slicer.util.updateSegmentBinaryLabelmapFromArray(np.zeros_like(mask, dtype=np.uint8), node, key,
                                                                 self.session.volume)
                share(node)  # the emptied organ back in the others' layer: the next click writes there directly
        return removed

    def settle(self) -> None:
        """Tell trame-slicer the last edit changed the segmentation; with 3D on it rebuilds every organ's surface
        then (IRCAD's six organs: 1.8 s). Called once the page shows the edit in the slice views, so a click's
        result is not held back by its surfaces."""
        segmentation, self.unsettled = self.unsettled, None
        if segmentation is not None:
            segmentation.trigger_modified()

    # ----------------------------------------------------------------------------------------------- helpers
    def _segmentation_node(self, key: str):
        node = self.session.segmentation
        if node is None:
            raise ContrastSegError("segment the CT first")
        if not key or node.GetSegmentation().GetSegment(key) is None:
            raise ContrastSegError("select the organ to correct in the list first")
        return node

    def _refine(self, key: str, positive=None, negative=None, box=None, model: str = "") -> dict:
        node = self._segmentation_node(key)
        run = self.session.run
        if run is not None and not run.finished:
            raise ContrastSegError("a segmentation is running; wait for it (or cancel it), then click again")
        model = model or node.GetAttribute("ContrastSeg.Model") or ""
        with self._undoable(node) as record:
            change = self.logic.refine(self.session.volume, node, key, positive=positive, negative=negative, box=box,
                                       model=None if model in ("", "default") else model)
            record["changed"] = bool(change["added"] or change["removed"])
        return change

    def _undoable(self, node):
        return _Undoable(self, node)


class _Undoable:
    """Context: save the segmentation's state, let the body change it, push one command if it changed."""

    def __init__(self, corrector, node):
        from trame_slicer.segmentation.segmentation_state_stack import SegmentationStateStack

        from ContrastSegLib.correct import EDITS_ATTRIBUTE

        self.corrector, self.editor, self.node, self.attribute = corrector, corrector.session.editor, node, EDITS_ATTRIBUTE
        self.stack = SegmentationStateStack(node.GetSegmentation(), max_size=2)
        self.record = {"changed": True}

    def __enter__(self) -> dict:
        self.before = self.node.GetAttribute(self.attribute)
        self.stack.save_state()
        return self.record

    def __exit__(self, kind, value, tb) -> None:
        if kind is not None or not self.record["changed"]:
            return
        self.stack.save_state()
        segmentation = self.editor.active_segmentation
        command = PromptedEditCommand(self.stack, segmentation, self.node, self.before, self.node.GetAttribute(self.attribute))
        if self.editor.undo_stack is not None:
            self.editor.undo_stack.push(command)
        self.corrector.unsettled = segmentation  # the page settles it once the slices show the edit
