"""The 3D surfaces around an edit in the page: off while it is written, back after it, one organ at a time.

Why: however a click's change is written, Slicer drops every organ's surface, and trame-slicer rebuilt all of
them inside the click (IRCAD's six: 1.4 s), while the next click waited on the same event loop (the server's
VTK calls hold Python's lock, so no thread helps). So the surfaces are taken off before an edit and kept;
SETTLE_S after the last edit the organs it did not change get their own surfaces back in one modification of
the node, the edited organ's is built alone, and a click that comes meanwhile goes first; the organs a click
only took voxels from keep their old surfaces until the edits pause for STALE_S (the liver: 0.7 s for 13 000 of
its 2.8 million voxels). `Surfaces.follow` is the schedule, the rest the MRML work, tested without a browser.
"""

from __future__ import annotations

import asyncio

SURFACE = "Closed surface"  # Slicer's name for the 3D representation
CORRECTION = "ContrastSeg correction"  # the undo stack's text of a correction (edits.PromptedEditCommand)
# the slice views render and send their images (throttled, on the event loop) before the edited organ's 3D
# surface is built; with 0.05 s, three of five clicks showed only after the surfaces
SETTLE_S = 0.5
# the surfaces of the organs a click took voxels from are built anew only after the edits have paused this long;
# meanwhile they keep their old surfaces, off by the few voxels taken
STALE_S = 5.0


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



class Surfaces:
    """The session's segmentation's 3D surfaces through edits (clicks, boxes, clears, their undo and redo)."""

    def __init__(self, session):
        self.session = session
        self.unsettled = None  # the segmentation an edit changed, until `settle` tells trame-slicer
        self.off = False  # 3D surfaces turned off for an edit, until `settling` builds them again
        self.kept = None  # meanwhile, the surfaces of the organs no edit changed: {segment id: vtkPolyData}
        self.stale = set()  # segment ids whose surfaces an edit changed on the side, kept until `refreshing`
        self.edits = 0  # every edit counts itself as it starts (`begin`): a schedule stops when another comes

    def begin(self) -> None:
        """An edit starts (or a Segment): a `follow` still waiting or building gives way."""
        self.edits += 1

    async def follow(self, show_3d) -> None:
        """After an edit: `settling` SETTLE_S after it, then `refreshing` STALE_S later, yielding to the event loop
        between organs and stopping as soon as another edit begins. `show_3d()`: the page's 3D switch now."""
        mine = self.edits
        await asyncio.sleep(SETTLE_S)
        if mine != self.edits:
            return
        for _ in self.settling(show_3d=bool(show_3d())):
            await asyncio.sleep(0)  # a click that came meanwhile goes first
            if mine != self.edits:
                return
        await asyncio.sleep(STALE_S)
        for _ in self.refreshing():
            await asyncio.sleep(0)
            if mine != self.edits:
                return

    def before_undo(self, redo: bool = False) -> None:
        """An undo or redo of a step that is not a correction (a brush stroke): what it changes is not known here,
        so every surface is built anew."""
        stack = self.session.editor.undo_stack
        text = (stack.redo_text() if redo else stack.undo_text()) if stack is not None else ""
        if text != CORRECTION:
            self.forget()

    def abandon(self) -> None:
        """An edit that failed changed nothing: the surfaces back at once."""
        if self.off:
            self.off = False
            self.session.show_3d(True)

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
        if not self.off:
            if segmentation is not None:
                segmentation.trigger_modified()
            return
        node = self.session.segmentation
        if not show_3d or node is None:
            self.off, self.kept = False, None
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
        self.off, self.kept = False, None
        self.session.show_3d(True)  # every segment has its surface: nothing is built here

    def refreshing(self):
        """Build anew, one organ per step, the surfaces of the organs edits changed only on the side (what a
        click took from them): kept as they were so that the next click does not wait for them (IRCAD's liver
        0.7 s for 13 000 of its 2.8 million voxels). The page runs this once edits have paused for STALE_S."""
        node = self.session.segmentation
        while self.stale and not self.off and node is self.session.segmentation and node is not None:
            segment_id = self.stale.pop()
            yield segment_id
            if node.GetSegmentation().GetSegment(segment_id) is not None:
                _build_surface(node.GetSegmentation(), segment_id)

    def during_edit(self) -> None:
        """Surfaces off before an edit: however the organs are written, Slicer drops every organ's surface and
        trame-slicer rebuilt them all at once, inside the click (IRCAD: 1.4 s). The surfaces there are kept for
        `settling`, which puts back those of the organs no edit changed."""
        node = self.session.segmentation
        if node is None or not (self.off or self.session.editor.is_3d_shown()):
            return
        segmentation = node.GetSegmentation()
        self.kept = self.kept or {}
        for i in range(segmentation.GetNumberOfSegments()):
            surface = segmentation.GetNthSegment(i).GetRepresentation(SURFACE)
            if surface is not None:
                self.kept[segmentation.GetNthSegmentID(i)] = surface
        if self.off:
            node.RemoveClosedSurfaceRepresentation()  # those a settle interrupted had put back
        else:
            self.session.show_3d(False)
            self.off = True

    def changed(self, node, before, after, key: str) -> None:
        """An edit of organ `key` wrote `after` where `before` was (BTCV ids in its box): its surface is built
        again at `settling`; the other organs whose voxels differ (those it took voxels from) keep theirs until
        `refreshing`."""
        from ContrastSegLib.layers import lost_and_gained
        from ContrastSegLib.nodes import organ_id

        if self.kept is None:
            return
        organs = set().union(*lost_and_gained(before, after))
        segmentation = node.GetSegmentation()
        for i in range(segmentation.GetNumberOfSegments()):
            segment_id = segmentation.GetNthSegmentID(i)
            if segment_id == key:
                self.kept.pop(segment_id, None)
                self.stale.discard(segment_id)
            elif organ_id(segmentation.GetNthSegment(i)) in organs and segment_id in self.kept:
                self.stale.add(segment_id)

    def forget(self) -> None:
        """A change that is no correction (a brush stroke, its undo): every surface is built anew."""
        self.kept = None
        self.stale = set()

    def reset(self) -> None:
        """A new Segment: the segmentation the edits changed is being replaced, and Segment builds the new one's
        surfaces itself; nothing is left to settle."""
        self.unsettled, self.kept, self.off, self.stale = None, None, False, set()

    def edited(self) -> None:
        """An edit changed the active segmentation: `settle` tells trame-slicer (or builds the surfaces)."""
        self.unsettled = self.session.editor.active_segmentation
