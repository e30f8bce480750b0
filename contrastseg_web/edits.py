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

SURFACE = "Closed surface"  # Slicer's name for the 3D representation


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


def _build_surface(segmentation, segment_id: str) -> None:
    """One segment's 3D surface, built in a copy of that segment alone and given to it (Slicer's own conversion
    builds every segment that lacks one at once)."""
    import slicer

    alone = slicer.vtkSegmentation()
    alone.SetSourceRepresentationName(segmentation.GetSourceRepresentationName())
    alone.CopyConversionParameters(segmentation)
    alone.CopySegmentFromSegmentation(segmentation, segment_id, False)
    alone.CreateRepresentation(SURFACE)
    segmentation.GetSegment(segment_id).AddRepresentation(SURFACE, alone.GetSegment(segment_id).GetRepresentation(SURFACE))


class PromptedEditCommand(UndoCommand):
    """A refinement (or a cleared organ) on the undo stack: the organs in the box it changed, before and after
    (BTCV ids, box-sized), and the clicked organ's record of prompted edits, which must shrink again on undo
    (it becomes the entry's provenance). A copy of the whole segmentation per step (trame-slicer's state stack)
    cost 0.02 s to make and 0.16 s to free for a 512x512 CT, twice per click."""

    TEXT = "ContrastSeg correction"

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

        self._corrector.surfaces_during_edit()
        write_box(self._node, self._corrector.session.volume, self._box, labels)
        self._corrector.changed(self._node, self._before, self._after, self._key)
        segment = self._node.GetSegmentation().GetSegment(self._key)
        if segment is not None:
            if edits is None:
                segment.RemoveTag(EDITS_TAG)
            else:
                segment.SetTag(EDITS_TAG, edits)
        self._corrector.edited()

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
        self.unsettled = None  # the segmentation an edit changed, until `settle` tells trame-slicer
        self.surfaces_off = False  # 3D surfaces turned off for an edit, until `settle` builds them again
        self.kept = None  # meanwhile, the surfaces of the organs no edit changed: {segment id: vtkPolyData}
        self.stale = set()  # segment ids whose surfaces an edit changed on the side, kept until `refreshing`
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
        self.surfaces_during_edit()
        write_box(node, self.session.volume, box, after)
        self._push(node, key, (box, before, after), (edits, edits))
        return int((before == organ).sum())

    def settle(self, show_3d: bool = True) -> None:
        """`settling` to its end (a brush tool about to start, tests)."""
        for _ in self.settling(show_3d):
            pass

    def settling(self, show_3d: bool = True):
        """Build the 3D surfaces edits turned off, one organ per step (a generator: the page yields to a
        waiting click between organs and stops when another edit comes), or tell trame-slicer the segmentation
        changed. Called once the page shows the edit in the slice views, so a click's result is not held back
        by its surfaces; `show_3d` is the page's 3D switch now. The organs no edit changed get their own
        surfaces back; the others are built each in a copy of its segment alone (IRCAD: a kidney 0.2 s, the
        liver 0.7 s; all six at once took 1.6 s, in which a click could not start)."""
        segmentation, self.unsettled = self.unsettled, None
        if not self.surfaces_off:
            if segmentation is not None:
                segmentation.trigger_modified()
            return
        node = self.session.segmentation
        if not show_3d or node is None:
            self.surfaces_off, self.kept = False, None
            return
        live = node.GetSegmentation()
        was = node.StartModify()  # the views update once for all the surfaces put back, not once per organ
        try:
            for segment_id, surface in (self.kept or {}).items():
                segment = live.GetSegment(segment_id)
                if segment is not None and segment.GetRepresentation(SURFACE) is None:
                    segment.AddRepresentation(SURFACE, surface)
        finally:
            node.EndModify(was)
        missing = [live.GetNthSegmentID(i) for i in range(live.GetNumberOfSegments())
                   if live.GetNthSegment(i).GetRepresentation(SURFACE) is None]
        for segment_id in missing:
            yield segment_id
            if node is not self.session.segmentation or live.GetSegment(segment_id) is None:
                return  # another segmentation now, or the segment went: the next edit settles again
            _build_surface(live, segment_id)
        self.surfaces_off, self.kept = False, None
        self.session.show_3d(True)  # every segment has its surface: nothing is built here

    def refreshing(self):
        """Build anew, one organ per step, the surfaces of the organs edits changed only on the side (what a
        click took from them): kept as they were so that the next click does not wait for them (IRCAD's liver
        0.7 s for 13 000 of its 2.8 million voxels). The page runs this once edits have paused for STALE_S."""
        node = self.session.segmentation
        while self.stale and not self.surfaces_off and node is self.session.segmentation and node is not None:
            segment_id = self.stale.pop()
            yield segment_id
            if node.GetSegmentation().GetSegment(segment_id) is not None:
                _build_surface(node.GetSegmentation(), segment_id)

    def surfaces_during_edit(self) -> None:
        """Surfaces off before an edit: however the organs are written, Slicer drops every organ's surface and
        trame-slicer rebuilt them all at once, inside the click (IRCAD: 1.4 s). The surfaces there are kept for
        `settling`, which puts back those of the organs no edit changed."""
        node = self.session.segmentation
        if node is None or not (self.surfaces_off or self.session.editor.is_3d_shown()):
            return
        segmentation = node.GetSegmentation()
        self.kept = self.kept or {}
        for i in range(segmentation.GetNumberOfSegments()):
            surface = segmentation.GetNthSegment(i).GetRepresentation(SURFACE)
            if surface is not None:
                self.kept[segmentation.GetNthSegmentID(i)] = surface
        if self.surfaces_off:
            node.RemoveClosedSurfaceRepresentation()  # those a settle interrupted had put back
        else:
            self.session.show_3d(False)
            self.surfaces_off = True

    def changed(self, node, before, after, key: str) -> None:
        """An edit of organ `key` wrote `after` where `before` was (BTCV ids in its box): its surface is built
        again at `settling`; the other organs whose voxels differ (those it took voxels from) keep theirs until
        `refreshing`."""
        import numpy as np

        from ContrastSegLib.nodes import organ_id

        if self.kept is None:
            return
        differ = before != after
        organs = (set(np.unique(before[differ]).tolist()) | set(np.unique(after[differ]).tolist())) - {0}
        segmentation = node.GetSegmentation()
        for i in range(segmentation.GetNumberOfSegments()):
            segment_id = segmentation.GetNthSegmentID(i)
            if segment_id == key:
                self.kept.pop(segment_id, None)
                self.stale.discard(segment_id)
            elif organ_id(segmentation.GetNthSegment(i)) in organs and segment_id in self.kept:
                self.stale.add(segment_id)

    def forget_surfaces(self) -> None:
        """A change not of this Corrector's (a brush stroke, its undo): every surface is built again."""
        self.kept = None
        self.stale = set()

    def reset(self) -> None:
        """A new Segment: the segmentation the edits changed is being replaced, and Segment builds the new one's
        surfaces itself; nothing is left to settle."""
        self.unsettled, self.kept, self.surfaces_off, self.stale = None, None, False, set()

    def edited(self) -> None:
        """An edit changed the active segmentation: `settle` tells trame-slicer (or builds the surfaces)."""
        self.unsettled = self.session.editor.active_segmentation

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
        self.surfaces_during_edit()
        edits = self._edits_tag(node, key)
        try:
            job = self.logic.wait(self.logic.start(node, key, positive, negative, box, volume_node=self.session.volume))
            if job.state != "done":
                raise ContrastSegError(job.error or "the update was cancelled")
        except Exception:
            if self.surfaces_off:  # nothing changed: the surfaces back at once
                self.surfaces_off = False
                self.session.show_3d(True)
            raise
        if job.written is not None:
            self._push(node, key, job.written, (edits, self._edits_tag(node, key)))
        return job.change

    def _push(self, node, key: str, written: tuple, edits: tuple) -> None:
        """Put a done edit on trame-slicer's undo stack (the one Paint and Erase use), without running it again."""
        self.changed(node, written[1], written[2], key)
        stack = self.session.editor.undo_stack
        if stack is not None:
            command = PromptedEditCommand(self, node, key, written, edits)
            stack.push(command)
        self.edited()

    @staticmethod
    def _edits_tag(node, key: str) -> str | None:
        from ContrastSegLib.correct import EDITS_TAG
        from ContrastSegLib.nodes import segment_tag

        segment = node.GetSegmentation().GetSegment(key)
        return segment_tag(segment, EDITS_TAG) if segment is not None else None
