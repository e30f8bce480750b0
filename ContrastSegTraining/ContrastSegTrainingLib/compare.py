"""Compare: one CT segmented with two models (e.g. before and after a training run), shown together.

Both segmentations go through the ContrastSeg module's own SegmentationLogic (the same engine worker as
Segment), one after the other so they do not fight over the CPU. The old model's result is drawn as
outlines and the new one filled, so both read on the same slices; `agreement()` gives per-organ Dice
between them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ContrastSegLib.parameter import SegmentSettings
from ContrastSegLib.segmentation import SegmentationLogic


@dataclass
class Comparison:
    volume_node: Any
    models: tuple[str, str]
    device: str = "auto"
    threads: int = 0
    runs: list = field(default_factory=list)
    error: str | None = None

    def settings(self, model: str) -> SegmentSettings:
        return SegmentSettings(model=model, device=self.device, threads=self.threads, show3D=False)

    @property
    def nodes(self) -> list:
        return [r.result_node for r in self.runs if r.result_node is not None]

    @property
    def finished(self) -> bool:
        return self.error is not None or (len(self.runs) == 2 and all(r.finished for r in self.runs))


class CompareLogic:
    def __init__(self, segmentation_logic: SegmentationLogic | None = None):
        self.logic = segmentation_logic or SegmentationLogic()

    def start(self, volume_node, old_model: str, new_model: str, device: str = "auto", threads: int = 0) -> Comparison:
        comparison = Comparison(volume_node, (old_model, new_model), device, threads)
        comparison.runs.append(self.logic.start(volume_node, comparison.settings(old_model)))
        return comparison

    def poll(self, comparison: Comparison) -> bool:
        """Advance: the second segmentation starts when the first ends; True while work remains."""
        if comparison.finished:
            return False
        run = comparison.runs[-1]
        if self.logic.poll(run):
            return True
        if run.state != "done":
            comparison.error = f"segmenting with '{comparison.models[len(comparison.runs) - 1]}' failed: {run.error}"
            return False
        model = comparison.models[len(comparison.runs) - 1]
        run.result_node.SetName(f"{comparison.volume_node.GetName()} - {model}")
        if len(comparison.runs) == 1:
            _outline(run.result_node)
            comparison.runs.append(self.logic.start(comparison.volume_node, comparison.settings(comparison.models[1])))
            return True
        return False

    def wait(self, comparison: Comparison, timeout: float | None = None, interval: float = 0.2) -> Comparison:
        import time

        end = None if timeout is None else time.monotonic() + timeout
        while self.poll(comparison):
            if end is not None and time.monotonic() > end:
                for run in comparison.runs:
                    self.logic.cancel(run)
                comparison.error = f"cancelled after {timeout:.0f} s"
                break
            time.sleep(interval)
        return comparison


def _outline(segmentation_node) -> None:
    display = segmentation_node.GetDisplayNode()
    if display is not None:
        display.SetOpacity2DFill(0.0)
        display.SetOpacity2DOutline(1.0)


def agreement(comparison: Comparison) -> dict[str, float]:
    """Per-organ Dice between the two models' results (organ key -> Dice), where either found the organ."""
    import numpy as np

    from ContrastSegLib.nodes import labelmap_array
    from contrastseg.organs import BY_ID

    if len(comparison.nodes) != 2:
        return {}
    a, b = (labelmap_array(n, comparison.volume_node) for n in comparison.nodes)
    out = {}
    for oid in sorted((set(np.unique(a).tolist()) | set(np.unique(b).tolist())) - {0}):
        x, y = a == oid, b == oid
        out[BY_ID[oid].key] = round(2 * float((x & y).sum()) / float(x.sum() + y.sum()), 4)
    return out
