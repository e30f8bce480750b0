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


class PromptPipeline(SegmentationEffectPipeline):
    """One slice view's share of the prompt effect: press, move, release; 3D views get none."""

    def __init__(self) -> None:
        super().__init__()
        self._press: tuple[list[float], int] | None = None
        self._events = {int(vtkCommand.LeftButtonPressEvent): self._pressed,
                        int(vtkCommand.LeftButtonReleaseEvent): self._released,
                        int(vtkCommand.MouseMoveEvent): self._moved}

    def CanProcessInteractionEvent(self, event_data: vtkMRMLInteractionEventData) -> tuple[bool, float]:
        return bool(self.IsActive()) and event_data.GetType() in self._events, 0.0

    def ProcessInteractionEvent(self, event_data: vtkMRMLInteractionEventData) -> bool:
        handler = self._events.get(event_data.GetType())
        return handler(event_data) if handler is not None else False

    def _pressed(self, event_data) -> bool:
        self._press = (list(event_data.GetWorldPosition()), int(event_data.GetModifiers()))
        return True

    def _moved(self, _event_data) -> bool:
        return self._press is not None  # a drag in progress belongs to the box, not to panning

    def _released(self, event_data) -> bool:
        if self._press is None:
            return False
        (start, modifiers), self._press = self._press, None
        end = list(event_data.GetWorldPosition())
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
