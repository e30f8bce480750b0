"""The live loss chart: one MRML table and plot series per training stage, in one plot chart.

Plain MRML nodes (vtkMRMLTableNode, vtkMRMLPlotSeriesNode, vtkMRMLPlotChartNode), so the curve is drawn by
Slicer's Plots module in any plot view, is saved with the scene, and is testable under slicer-core. The
nodes of a run are found again by an attribute, so re-attaching to a run reuses its chart.
"""

from __future__ import annotations

import vtk

import slicer

RUN_ATTRIBUTE = "ContrastSegTraining.Run"
COLORS = {"pretrain": (0.85, 0.37, 0.01), "coarse": (0.17, 0.63, 0.17), "refined": (0.12, 0.47, 0.71),
          "finetune": (0.12, 0.47, 0.71)}


def _find(scene, class_name: str, run: str, stage: str | None = None):
    for i in range(scene.GetNumberOfNodesByClass(class_name)):
        node = scene.GetNthNodeByClass(i, class_name)
        if node.GetAttribute(RUN_ATTRIBUTE) == run and node.GetAttribute("ContrastSegTraining.Stage") == stage:
            return node
    return None


def _add(scene, class_name: str, name: str, run: str, stage: str | None = None):
    node = scene.AddNewNodeByClass(class_name, name)
    node.SetAttribute(RUN_ATTRIBUTE, run)
    if stage is not None:
        node.SetAttribute("ContrastSegTraining.Stage", stage)
    return node


def _fill(table_node, points: list[tuple[int, float]]) -> None:
    table = table_node.GetTable()
    if table.GetNumberOfColumns() < 2:
        for name in ("step", "loss"):
            column = vtk.vtkDoubleArray()
            column.SetName(name)
            table.AddColumn(column)
    steps, losses = table.GetColumnByName("step"), table.GetColumnByName("loss")
    steps.SetNumberOfTuples(len(points))
    losses.SetNumberOfTuples(len(points))
    for i, (step, loss) in enumerate(points):
        steps.SetValue(i, float(step))
        losses.SetValue(i, float(loss))
    steps.Modified()
    losses.Modified()
    table.Modified()
    table_node.Modified()


def loss_chart(run: str, losses: dict[str, list[tuple[int, float]]], scene=None):
    """Create or update the chart of `run`'s training losses (one series per stage); returns the chart node."""
    scene = scene or slicer.mrmlScene
    chart = _find(scene, "vtkMRMLPlotChartNode", run) or _add(scene, "vtkMRMLPlotChartNode", f"{run} loss", run)
    chart.SetTitle(f"Training loss: {run}")
    chart.SetXAxisTitle("step")
    chart.SetYAxisTitle("loss")
    for stage, points in losses.items():
        table = _find(scene, "vtkMRMLTableNode", run, stage) or _add(scene, "vtkMRMLTableNode", f"{run} {stage} loss", run, stage)
        _fill(table, points)
        series = _find(scene, "vtkMRMLPlotSeriesNode", run, stage)
        if series is None:
            series = _add(scene, "vtkMRMLPlotSeriesNode", f"{stage} loss", run, stage)
            series.SetAndObserveTableNodeID(table.GetID())
            series.SetXColumnName("step")
            series.SetYColumnName("loss")
            series.SetPlotType(slicer.vtkMRMLPlotSeriesNode.PlotTypeScatter)
            series.SetMarkerStyle(slicer.vtkMRMLPlotSeriesNode.MarkerStyleNone)
            series.SetColor(*COLORS.get(stage.split()[0], (0.3, 0.3, 0.3)))
            chart.AddAndObservePlotSeriesNodeID(series.GetID())
    return chart
