"""ContrastSegTraining: from corrected labels to a better model, locally.

Export the corrected segmentation into a local dataset, train (optionally pretrain, then fine-tune) in a
background process that outlives Slicer, watch progress, log and loss curve, and get a registered model
with before/after numbers that the ContrastSeg module can use. Module, Widget, Logic and Test as Slicer's
scripted-module template has them; the work is in ContrastSegTrainingLib. Without the Slicer application
(slicer-core in CI) this file still imports and the Logic works; the Qt-based classes are inert.
"""

from pathlib import Path
from typing import Optional

import slicer
from slicer import vtkMRMLScalarVolumeNode, vtkMRMLSegmentationNode

from ContrastSegLib import use_engine_home
from ContrastSegLib.process import EngineProcess
from ContrastSegLib.segmentation import slicer_python
from ContrastSegTrainingLib.parameter import TrainingSettings, run_request

from ContrastSegLib.slicer_base import (ScriptedLoadableModule, ScriptedLoadableModuleLogic, ScriptedLoadableModuleTest,
                                        ScriptedLoadableModuleWidget, parameterNodeWrapper)


class ContrastSegTraining(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "ContrastSeg Training"
        self.parent.categories = ["Segmentation"]
        self.parent.dependencies = ["ContrastSeg"]
        self.parent.contributors = ["ContrastSeg developers"]
        self.parent.helpText = (
            "Export corrected organ segmentations into a local dataset, then pretrain and/or fine-tune a model on "
            "it in the background (it keeps running if Slicer is closed, and is found again when Slicer reopens). "
            "The new model is registered in the model store with before/after Dice and can be chosen in ContrastSeg.")
        self.parent.acknowledgementText = "Everything runs locally; no data leaves the computer."
        use_engine_home()


@parameterNodeWrapper
class ContrastSegTrainingParameterNode:
    """The module's state in the scene: what to export, the training request, what to compare."""

    volume: vtkMRMLScalarVolumeNode
    segmentation: vtkMRMLSegmentationNode
    training: TrainingSettings
    compareVolume: vtkMRMLScalarVolumeNode


class ContrastSegTrainingWidget(ScriptedLoadableModuleWidget):
    def setup(self):
        ScriptedLoadableModuleWidget.setup(self)
        from ContrastSegTrainingLib.widget import Panel

        uiWidget = slicer.util.loadUI(self.resourcePath("UI/ContrastSegTraining.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = ContrastSegTrainingLogic()
        self.panel = Panel(self.ui, self.logic)
        self.panel.setParameterNode(self.logic.getParameterNode())
        self._observers = [slicer.mrmlScene.AddObserver(slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose),
                           slicer.mrmlScene.AddObserver(slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)]

    def cleanup(self):
        for tag in getattr(self, "_observers", []):
            slicer.mrmlScene.RemoveObserver(tag)
        self.panel.cleanup()

    def enter(self):
        if self.panel.params is None:  # a scene closed while another module was shown
            self.panel.setParameterNode(self.logic.getParameterNode())
        self.panel.fillModels()
        self.panel.fillDataset()

    def onSceneStartClose(self, caller, event):
        self.panel.cancelComparison()
        self.panel.setParameterNode(None)

    def onSceneEndClose(self, caller, event):
        if self.parent.isEntered:
            self.panel.setParameterNode(self.logic.getParameterNode())


class ContrastSegTrainingLogic(ScriptedLoadableModuleLogic):
    """Export, dataset, runs, chart and compare, without Qt (the widget and the tests call the same methods)."""

    def __init__(self, runner=None, python=None, dataset: Optional[Path] = None):
        from ContrastSegTrainingLib.runs import RunLogic

        ScriptedLoadableModuleLogic.__init__(self)
        self.python = python or slicer_python()
        self.runLogic = RunLogic(runner or EngineProcess, self.python)
        self.dataset = Path(dataset) if dataset else None

    def getParameterNode(self):
        return ContrastSegTrainingParameterNode(super().getParameterNode())

    # -------------------------------------------------------------- dataset
    def datasetFolder(self) -> Path:
        from contrastseg.dataset_edit import default_dataset

        return self.dataset or default_dataset()

    def useDatasetFolder(self, path: str) -> Optional[str]:
        """Use the dataset at `path` from now on; None, or why not (an empty path would be Slicer's working
        directory, so the current folder stays)."""
        path = (path or "").strip()
        if not path:
            return f"Choose a dataset folder (still using {self.datasetFolder()})."
        self.dataset = Path(path)
        return None

    def exportCase(self, volume, segmentation, phase: str = "", note: str = "", validation: bool = False):
        from ContrastSegTrainingLib.export import export_case

        return export_case(volume, segmentation, self.datasetFolder(), phase.strip() or None, note.strip() or None,
                           validation=bool(validation))

    @staticmethod
    def resultRows(run_dir: Path) -> list[dict]:
        """The run's before/after table (one row per case and organ), from its validation.json; [] before."""
        from ContrastSegTrainingLib.runs import result_rows

        return result_rows(Path(run_dir))

    def datasetRows(self) -> list[dict]:
        from ContrastSegTrainingLib.export import dataset_rows

        return dataset_rows(self.datasetFolder())

    def removeEntry(self, entry_id: str) -> dict:
        from contrastseg.dataset_edit import remove_entry

        return remove_entry(self.datasetFolder(), entry_id)

    def checkDataset(self):
        from contrastseg.dataset_edit import check

        return check(self.datasetFolder())

    # -------------------------------------------------------------- models
    @staticmethod
    def models() -> list[dict]:
        from contrastseg.store import list_models

        return list_models()

    @staticmethod
    def strategies() -> list[str]:
        from contrastseg.runs.plan import pretrain_strategies

        return pretrain_strategies() or []

    # -------------------------------------------------------------- runs
    def request(self, settings: TrainingSettings, extra_finetune_args=None):
        return run_request(settings, self.datasetFolder(), extra_finetune_args)

    def check(self, settings: TrainingSettings):
        return self.runLogic.check(self.request(settings))

    def startCheck(self, settings: TrainingSettings):
        """The checks before a run, the GPU's in a background engine process (poll with checkRunning)."""
        return self.runLogic.start_check(self.request(settings))

    def checkRunning(self, pending) -> bool:
        return self.runLogic.check_running(pending)

    def checkResult(self, pending):
        return self.runLogic.check_result(pending)

    def launch(self, settings: TrainingSettings, run_dir: Optional[Path] = None, extra_finetune_args=None):
        return self.runLogic.launch(self.request(settings, extra_finetune_args), run_dir)

    def findRuns(self) -> list[dict]:
        return self.runLogic.runs()

    def attach(self, run_dir: Path):
        return self.runLogic.attach(run_dir)

    def resume(self, run_dir: Path):
        return self.runLogic.resume(run_dir)

    def cancel(self, monitor, wait: bool = True) -> None:
        self.runLogic.cancel(monitor, wait=wait)

    @staticmethod
    def updateChart(monitor):
        from ContrastSegTrainingLib.plots import loss_chart

        return loss_chart(monitor.name, monitor.losses)

    # -------------------------------------------------------------- compare
    def _compareLogic(self):
        from ContrastSegLib.segmentation import SegmentationLogic
        from ContrastSegTrainingLib.compare import CompareLogic

        if getattr(self, "_compare", None) is None:
            self._compare = CompareLogic(SegmentationLogic(python=self.python))  # in the engine worker, like Segment
        return self._compare

    @staticmethod
    def compareProblem(volume, old_model: Optional[str], new_model: Optional[str]) -> Optional[str]:
        """Why Compare cannot start with these choices (empty model lists before any training), or None."""
        if not old_model or not new_model or volume is None:
            return "Choose a CT and two models to compare (train one first if the lists are empty)."
        return None

    def compare(self, volume, old_model: str, new_model: str, device: str = "auto", threads: int = 0):
        if volume is None:
            raise ValueError("select the CT to segment with both models")
        return self._compareLogic().start(volume, old_model, new_model, device, threads)

    def pollComparison(self, comparison) -> bool:
        return self._compareLogic().poll(comparison)

    def cancelComparison(self, comparison) -> None:
        for run in comparison.runs:
            self._compareLogic().logic.cancel(run)
        comparison.error = comparison.error or "cancelled"

    @staticmethod
    def comparisonText(comparison) -> str:
        from ContrastSegTrainingLib.compare import agreement

        if comparison.error:
            return f"Compare failed: {comparison.error}"
        dice = agreement(comparison)
        mean = sum(dice.values()) / len(dice) if dice else None
        old, new = comparison.models
        return (f"{old} (outlines) and {new} (filled) are shown. Agreement (Dice) per organ: "
                + ", ".join(f"{k} {v:.2f}" for k, v in dice.items()) + (f"; mean {mean:.2f}." if mean is not None else "."))


class ContrastSegTrainingTest(ScriptedLoadableModuleTest):
    """Self-test for a real Slicer: export the sample CT's segmentation, fine-tune a few steps, use the model."""

    def setUp(self):
        from ContrastSegLib.install import self_test_ready

        self_test_ready(self)  # ctest runs test_ methods through unittest: the guard must be here, not in runTest
        slicer.mrmlScene.Clear()

    def runTest(self):
        """Slicer's "Reload and Test" button (the same test, without a unittest runner)."""
        import unittest

        try:
            self.setUp()
            self.test_export_train_use()
        except unittest.SkipTest as why:
            self.delayDisplay(f"ContrastSegTraining self-test skipped: {why}")

    def test_export_train_use(self):
        import os
        import tempfile

        import SampleData

        from ContrastSeg import SAMPLE_NAME, ContrastSegLogic, registerSampleData
        from ContrastSegLib.parameter import SegmentSettings
        from contrastseg.store import list_models

        old_home = os.environ.get("CONTRASTSEG_HOME")
        home = Path(tempfile.mkdtemp(prefix="ContrastSegTrainingTest-"))
        os.environ["CONTRASTSEG_HOME"] = str(home)  # the user's dataset and store stay untouched
        try:
            registerSampleData()
            volume = SampleData.SampleDataLogic().downloadSample(SAMPLE_NAME)
            seg = ContrastSegLogic()
            run = seg.wait(seg.start(volume, SegmentSettings(threads=2, show3D=False)), timeout=900)
            self.assertEqual(run.state, "done", run.error)
            logic = ContrastSegTrainingLogic(dataset=home / "dataset")
            result = logic.exportCase(volume, run.result_node, "portal", "self-test")
            self.assertIn(6, result.organs)
            self.assertEqual([r["id"] for r in logic.datasetRows()], [result.record["id"]])
            settings = TrainingSettings(steps=4, coarseSteps=4, batch=2, threads=2, name="selftest")
            monitor = logic.launch(settings)
            monitor.wait(timeout=1800)
            self.assertEqual(monitor.status, "done", monitor.error)
            self.assertIn("selftest", [m["name"] for m in list_models()])
            self.assertTrue(monitor.losses.get("coarse") and monitor.losses.get("refined"))
            chart = logic.updateChart(monitor)
            self.assertEqual(chart.GetNumberOfPlotSeriesNodes(), 2)
            run2 = seg.wait(seg.start(volume, SegmentSettings(model="selftest", threads=2, show3D=False)), timeout=900)
            self.assertEqual(run2.state, "done", run2.error)
            self.delayDisplay("Exported, trained and segmented with the new model")
        finally:
            if old_home is None:
                os.environ.pop("CONTRASTSEG_HOME", None)
            else:
                os.environ["CONTRASTSEG_HOME"] = old_home
