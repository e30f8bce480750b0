"""Retrain and compare from the page, with the training module's Logic (ContrastSegTrainingLib).

A run is planned with the engine's guard rails and started detached (`RunLogic`, as the Slicer panel does), on
the local dataset the page adds cases to, with the panel's defaults; its progress and loss curve are read from
its stream. The page draws the curve itself (`loss_polylines`: SVG points, no plotting library in the page).
Compare segments the current CT with two models in the session's worker (`CompareLogic`) and reports the
per-organ agreement.
"""

from __future__ import annotations

from contrastseg.errors import ContrastSegError


def models() -> list[dict]:
    """The model store's models (name, default or not), for the model list and the compare choices."""
    from contrastseg.store import default_name, list_models

    default = default_name()
    return [{"name": m["name"], "default": m["name"] == default} for m in list_models()]


def loss_polylines(losses: dict[str, list[tuple[int, float]]], width: int = 300, height: int = 120) -> list[dict]:
    """Each stage's loss curve as SVG polyline points in a `width` x `height` box (y up = lower loss), all stages
    on one scale, so the page shows the curve with plain SVG."""
    points = [(s, v) for curve in losses.values() for s, v in curve]
    if not points:
        return []
    s0, s1 = min(p[0] for p in points), max(p[0] for p in points)
    v0, v1 = min(p[1] for p in points), max(p[1] for p in points)
    sx = (width - 4) / max(1, s1 - s0)
    sy = (height - 4) / (v1 - v0) if v1 > v0 else 0.0
    colors = {"coarse": "#2ca02c", "refined": "#1f77b4", "pretrain": "#d95f02", "finetune": "#1f77b4"}
    out = []
    for stage, curve in losses.items():
        text = " ".join(f"{2 + (s - s0) * sx:.1f},{height - 2 - (v - v0) * sy:.1f}" for s, v in curve)
        out.append({"stage": stage, "points": text, "color": colors.get(stage.split()[0], "#888888"),
                    "last": round(curve[-1][1], 4) if curve else None})
    return out


class Training:
    """The page's Retrain and Compare sections: one run and one comparison followed at a time."""

    def __init__(self, session):
        from ContrastSegLib.segmentation import SegmentationLogic
        from ContrastSegTrainingLib.compare import CompareLogic
        from ContrastSegTrainingLib.runs import RunLogic

        self.session = session
        self.runs = RunLogic(python=session.python)
        self.compare_logic = CompareLogic(SegmentationLogic(python=session.python))
        self.monitor = None
        self.comparison = None

    def request(self, steps: int | None = None, coarse_steps: int | None = None):
        """The training panel's defaults (fine-tune coarse and refined from the default model) on the local
        dataset; `steps` only for tests and demonstrations that cannot wait for the default run."""
        from contrastseg.dataset_edit import default_dataset
        from ContrastSegTrainingLib.parameter import TrainingSettings, run_request

        device = {"cpu": "CPU", "cuda": "GPU"}.get(self.session.device, "auto")  # the panel's labels
        settings = TrainingSettings(device=device, threads=self.session.threads)
        if steps:
            settings.steps = int(steps)
        if coarse_steps:
            settings.coarseSteps = int(coarse_steps)
        return run_request(settings, default_dataset())

    def start(self, steps: int | None = None, coarse_steps: int | None = None) -> str:
        if self.monitor is not None and not self.monitor.finished:
            raise ContrastSegError("a training run is already going; wait for it or cancel it")
        request = self.request(steps, coarse_steps)
        check = self.runs.check(request)
        if check.errors:
            raise ContrastSegError("cannot start training: " + " ".join(check.errors))
        self.monitor = self.runs.launch(request)
        return f"Training run {self.monitor.name} started. " + " ".join(check.warnings)

    def poll(self) -> bool:
        return self.monitor.poll() if self.monitor is not None else False

    def cancel(self) -> None:
        if self.monitor is not None and self.monitor.process is not None:
            self.runs.cancel(self.monitor)

    def status(self) -> dict:
        m = self.monitor
        if m is None:
            return {"text": "", "fraction": 0.0, "running": False, "curves": []}
        return {"text": m.status_text(), "fraction": float(m.fraction), "running": not m.finished,
                "curves": loss_polylines(m.losses), "model": m.model}

    # ------------------------------------------------------------------------------------------- compare
    def start_compare(self, old: str, new: str) -> str:
        session = self.session
        if session.volume is None:
            raise ContrastSegError("load the CT to compare the models on first")
        if not old or not new or old == new:
            raise ContrastSegError("choose two different models to compare (train one first if there is only one)")
        if session.run is not None and not session.run.finished:
            raise ContrastSegError("a segmentation is running; wait for it first")
        self.close_compare()
        self.comparison = self.compare_logic.start(session.volume, old, new, session.device, session.threads)
        return f"Segmenting with {old}, then {new}..."

    def poll_compare(self) -> bool:
        return self.compare_logic.poll(self.comparison) if self.comparison is not None else False

    def compare_result(self) -> dict:
        """Agreement per organ (Dice between the two models' results) once both have run."""
        from ContrastSegTrainingLib.compare import agreement

        c = self.comparison
        if c is None:
            return {"text": "", "rows": []}
        if c.error:
            return {"text": f"Compare failed: {c.error}", "rows": []}
        if not c.finished:
            return {"text": f"Segmenting with {c.models[len(c.runs) - 1]}...", "rows": []}
        dice = agreement(c)
        rows = [{"organ": k, "dice": v} for k, v in dice.items()]
        mean = sum(dice.values()) / len(dice) if dice else 0.0
        return {"text": f"{c.models[0]} (outlines) against {c.models[1]} (filled): mean agreement {mean:.2f}.",
                "rows": rows}

    def close_compare(self) -> None:
        """Remove the comparison's segmentations from the scene (the edited one stays)."""
        c, self.comparison = self.comparison, None
        if c is None:
            return
        for run in c.runs:
            self.compare_logic.logic.cancel(run)
        for node in c.nodes:
            if node is not self.session.segmentation:
                self.session.nodes.remove_node(node)


def loss_svg(curves: list[dict], width: int = 300, height: int = 120) -> str:
    """The loss curves (from `loss_polylines`) as one inline SVG, with each stage's last loss as its legend."""
    if not curves:
        return ""
    lines = "".join(f'<polyline fill="none" stroke="{c["color"]}" stroke-width="1.5" points="{c["points"]}"/>'
                    for c in curves)
    legend = "".join(f'<text x="6" y="{14 + 13 * i}" fill="{c["color"]}" font-size="11">{c["stage"]}: {c["last"]}</text>'
                     for i, c in enumerate(curves))
    return (f'<svg id="loss-svg" width="{width}" height="{height}" style="background:#222;border:1px solid #444">'
            f"{lines}{legend}</svg>")
