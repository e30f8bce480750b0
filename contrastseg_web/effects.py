"""Mouse input in the slice views: ContrastSeg's click and box tools as a trame-slicer Segment Editor effect.

trame-slicer routes a view's mouse events to the active effect's pipeline (one per view). `PromptEffect` is an
effect like Paint: while it is active, a left click in a slice view becomes a click prompt at that world
position (Ctrl or Shift held: the opposite sign), and with the box tool a press-drag-release becomes the
rectangle's two corners. The effect only reports what happened (`on_click(ras, modifiers)`,
`on_box(ras_a, ras_b)`); the app decides what to do with it (edits.Corrector), so nothing here needs a
browser to be right except the event plumbing the browser tests exercise.

`fix_pipeline_views` mends trame-slicer 2.0.0's Paint and Erase: their pipelines are made when the effect's
parameter node enters the scene, which can be before the views exist, and then hold no view, so activating
Paint raised AttributeError ('NoneType' has no attribute 'paint_interaction_stopped'). The mend looks the
view up from the pipeline's view node when the effect becomes active (docs/SLICER-TESTING.md).
"""

from __future__ import annotations

from collections.abc import Callable

from slicer import vtkMRMLInteractionEventData, vtkMRMLSliceNode
from trame_slicer.segmentation import SegmentationEffect, SegmentationEffectPipeline
from vtk import vtkEvent
from vtkmodules.vtkCommonCore import vtkCommand

POINT, BOX = "point", "box"


class BoxOutline:
    """The rectangle being dragged, drawn in the view's display coordinates (feedback only)."""

    def __init__(self) -> None:
        from vtkmodules.vtkCommonCore import vtkPoints
        from vtkmodules.vtkCommonDataModel import vtkCellArray, vtkPolyData
        from vtkmodules.vtkRenderingCore import vtkActor2D, vtkPolyDataMapper2D

        self.points = vtkPoints()
        self.points.SetNumberOfPoints(5)
        lines = vtkCellArray()
        lines.InsertNextCell(5, [0, 1, 2, 3, 4])
        polydata = vtkPolyData()
        polydata.SetPoints(self.points)
        polydata.SetLines(lines)
        mapper = vtkPolyDataMapper2D()
        mapper.SetInputData(polydata)
        self.actor = vtkActor2D()
        self.actor.SetMapper(mapper)
        self.actor.GetProperty().SetColor(1.0, 0.85, 0.0)
        self.actor.GetProperty().SetLineWidth(2)
        self.actor.SetVisibility(False)
        self.start = (0.0, 0.0)

    def show(self, x: float, y: float, start: bool = False) -> None:
        if start:
            self.start = (x, y)
        x0, y0 = self.start
        for i, (px, py) in enumerate(((x0, y0), (x, y0), (x, y), (x0, y), (x0, y0))):
            self.points.SetPoint(i, px, py, 0.0)
        self.points.Modified()
        self.actor.SetVisibility(True)

    def hide(self) -> None:
        self.actor.SetVisibility(False)


class PromptPipeline(SegmentationEffectPipeline):
    """One slice view's share of the prompt effect: press, move, release; 3D views get none."""

    def __init__(self) -> None:
        super().__init__()
        self._press: tuple[list[float], int] | None = None
        self._events = {int(vtkCommand.LeftButtonPressEvent): self._pressed,
                        int(vtkCommand.LeftButtonReleaseEvent): self._released,
                        int(vtkCommand.MouseMoveEvent): self._moved}
        self.outline = BoxOutline()

    def OnRendererAdded(self, renderer) -> None:
        if renderer is not None:
            renderer.AddViewProp(self.outline.actor)

    def OnRendererRemoved(self, renderer) -> None:
        if renderer is not None:
            renderer.RemoveViewProp(self.outline.actor)

    def CanProcessInteractionEvent(self, event_data: vtkMRMLInteractionEventData) -> tuple[bool, float]:
        return bool(self.IsActive()) and event_data.GetType() in self._events, 0.0

    def ProcessInteractionEvent(self, event_data: vtkMRMLInteractionEventData) -> bool:
        handler = self._events.get(event_data.GetType())
        return handler(event_data) if handler is not None else False

    def _pressed(self, event_data) -> bool:
        self._press = (list(event_data.GetWorldPosition()), int(event_data.GetModifiers()))
        if self._effect is not None and self._effect.tool == BOX:
            self.outline.show(*event_data.GetDisplayPosition(), start=True)
            self.RequestRender()
        return True

    def _moved(self, event_data) -> bool:
        if self._press is None:
            return False
        if self._effect is not None and self._effect.tool == BOX:  # a drag in progress draws the box
            self.outline.show(*event_data.GetDisplayPosition())
            self.RequestRender()
        return True

    def _released(self, event_data) -> bool:
        if self._press is None:
            return False
        (start, modifiers), self._press = self._press, None
        end = list(event_data.GetWorldPosition())
        self.outline.hide()
        self.RequestRender()
        effect: PromptEffect = self._effect
        if effect is None:
            return True
        if effect.tool == BOX:
            effect.report_box(start, end)
        else:
            effect.report_click(start, modifiers)
        return True


class PromptEffect(SegmentationEffect):
    """The click/box tool; `on_click(ras, ctrl, shift)` and `on_box(a, b)` are set by the app."""

    def __init__(self) -> None:
        super().__init__()
        self.tool = POINT
        self.on_click: Callable[[list[float], bool, bool], None] | None = None
        self.on_box: Callable[[list[float], list[float]], None] | None = None

    def _create_pipeline(self, view_node, _parameter) -> SegmentationEffectPipeline | None:
        return PromptPipeline() if isinstance(view_node, vtkMRMLSliceNode) else None

    def report_click(self, ras: list[float], modifiers: int) -> None:
        if self.on_click is not None:
            self.on_click(ras, bool(modifiers & vtkEvent.ControlModifier), bool(modifiers & vtkEvent.ShiftModifier))

    def report_box(self, a: list[float], b: list[float]) -> None:
        if self.on_box is not None:
            self.on_box(a, b)


def fix_pipeline_views(editor, view_manager) -> None:
    """Give every effect pipeline that lacks its view the view of its view node, when it becomes active."""
    import trame_slicer.segmentation.segmentation_effect_pipeline as module

    base = module.SegmentationEffectPipeline
    if getattr(base, "_contrastseg_view_fix", False):
        return
    original = base.SetActive

    def set_active(self, is_active: bool):
        if is_active and self._view is None and self.GetViewNode() is not None:
            self._view = view_manager.get_view(self.GetViewNode())
        return original(self, is_active)

    base.SetActive = set_active  # the Paint and Erase pipelines call it first (super()), then make their widget
    base._contrastseg_view_fix = True
