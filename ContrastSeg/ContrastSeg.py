"""ContrastSeg: segment the abdominal organs of a CT (coarse, then refined) and correct them in Slicer.

Module, Widget, Logic and Test as Slicer's scripted-module template has them; the work is in
ContrastSegLib (widget.Panel, segmentation.SegmentationLogic, install.InstallLogic). Without the Slicer
application (slicer-core in CI) this file still imports: the Logic and the sample-data description work,
the Qt-based classes are inert.
"""

from pathlib import Path

import slicer
from slicer import vtkMRMLScalarVolumeNode, vtkMRMLSegmentationNode

from ContrastSegLib import use_engine_home
from ContrastSegLib.parameter import SegmentSettings
from ContrastSegLib.segmentation import SegmentationLogic, slicer_python
from ContrastSegLib.worker import WorkerJob

from ContrastSegLib.slicer_base import (ScriptedLoadableModule, ScriptedLoadableModuleLogic, ScriptedLoadableModuleTest,
                                        ScriptedLoadableModuleWidget, parameterNodeWrapper)

SAMPLE_NAME = "ContrastSeg sample CT"
ICON = Path(__file__).parent / "Resources" / "Icons" / "ContrastSeg.png"


class ContrastSeg(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "ContrastSeg"
        self.parent.categories = ["Segmentation"]
        self.parent.dependencies = []
        self.parent.contributors = ["ContrastSeg developers"]
        self.parent.helpText = (
            "Segments the abdominal organs of a CT (13 BTCV organs) with a coarse 3D network, then an "
            "organ-attention refinement. Pick a CT (or load the sample CT), press Segment, correct the result "
            "in the Segment Editor below; the ContrastSegTraining module retrains on your corrections.")
        self.parent.acknowledgementText = "Default model trained on TotalSegmentator example data (Apache-2.0)."
        use_engine_home()
        slicer.app.connect("startupCompleted()", registerSampleData)


def sampleDataSource() -> dict:
    """The sample CT as SampleData.registerCustomSampleDataSource arguments: a local file, no download."""
    from contrastseg.paths import sample_ct

    path = sample_ct()
    return dict(category="ContrastSeg", sampleName=SAMPLE_NAME, uris=path.as_uri(), fileNames=path.name,
                nodeNames="ContrastSegSampleCT", thumbnailFileName=str(ICON), loadFileType="VolumeFile")


def uri_to_path(uri: str) -> Path:
    """A file:// URI back to a path, with percent-escapes (spaces) and Windows drive letters handled."""
    from urllib.parse import unquote, urlparse
    from urllib.request import url2pathname

    return Path(url2pathname(unquote(urlparse(uri).path)))


def registerSampleData():
    import SampleData

    source = sampleDataSource()
    if uri_to_path(source["uris"]).exists():
        SampleData.SampleDataLogic.registerCustomSampleDataSource(**source)


@parameterNodeWrapper
class ContrastSegParameterNode:
    """The module's state in the scene: input CT, settings, and the last result (for the training module)."""

    inputVolume: vtkMRMLScalarVolumeNode
    settings: SegmentSettings
    segmentation: vtkMRMLSegmentationNode


class ContrastSegWidget(ScriptedLoadableModuleWidget):
    def setup(self):
        ScriptedLoadableModuleWidget.setup(self)
        from ContrastSegLib.widget import Panel

        uiWidget = slicer.util.loadUI(self.resourcePath("UI/ContrastSeg.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = ContrastSegLogic()
        self.panel = Panel(self.ui, self.logic)  # connects the widgets once; parameter node bound below
        self.panel.setParameterNode(self.logic.getParameterNode())
        self._observers = [slicer.mrmlScene.AddObserver(slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose),
                           slicer.mrmlScene.AddObserver(slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)]

    def cleanup(self):
        for tag in getattr(self, "_observers", []):
            slicer.mrmlScene.RemoveObserver(tag)
        self.panel.cleanup()

    def enter(self):
        # a scene closed while another module was shown left the panel unbound (onSceneEndClose only rebinds
        # the module being shown): bind it again now
        if self.panel.params is None:
            self.panel.setParameterNode(self.logic.getParameterNode())
        self.panel.enter()

    def exit(self):
        self.panel.exit()

    def onSceneStartClose(self, caller, event):
        self.panel.onCancel()
        self.panel.hints.unbind()  # the hint nodes go with the scene
        self.panel.setParameterNode(None)
        self.panel.releaseEditor()

    def onSceneEndClose(self, caller, event):
        if self.parent.isEntered:
            self.panel.setParameterNode(self.logic.getParameterNode())
            self.panel.hints.setupPointWidgets()  # P / N / X place into the new scene's hint nodes at once


class ContrastSegLogic(ScriptedLoadableModuleLogic, SegmentationLogic):
    """SegmentationLogic with Slicer's module plumbing; the engine's worker runs under PythonSlicer."""

    def __init__(self, runner=None, python=None):
        ScriptedLoadableModuleLogic.__init__(self)
        SegmentationLogic.__init__(self, runner=runner or WorkerJob, python=python or slicer_python())

    def getParameterNode(self):
        return ContrastSegParameterNode(super().getParameterNode())


class ContrastSegTest(ScriptedLoadableModuleTest):
    """Self-test for a real Slicer: the same path as the CI tests, on the sample CT with the default model."""

    def setUp(self):
        from ContrastSegLib.install import self_test_ready

        self_test_ready(self)  # ctest runs test_ methods through unittest: the guard must be here, not in runTest
        slicer.mrmlScene.Clear()

    def runTest(self):
        """Slicer's "Reload and Test" button (the same tests, without a unittest runner)."""
        import unittest

        try:
            for test in (self.test_sample_ct, self.test_cancel):
                self.setUp()
                test()
        except unittest.SkipTest as why:
            self.delayDisplay(f"ContrastSeg self-test skipped: {why}")

    def loadSample(self):
        import SampleData

        registerSampleData()
        return SampleData.SampleDataLogic().downloadSample(SAMPLE_NAME)

    def test_sample_ct(self):
        from contrastseg.organs import BY_ID
        from ContrastSegLib import nodes

        volume = self.loadSample()
        logic = ContrastSegLogic()
        run = logic.wait(logic.start(volume, SegmentSettings(threads=2)), timeout=900)
        self.assertEqual(run.state, "done", run.error)
        self.assertIsNotNone(run.coarse_node)
        self.assertIs(run.result_node, run.coarse_node)  # refined replaced coarse in place
        segmentation = run.result_node.GetSegmentation()
        self.assertEqual(segmentation.GetNumberOfSegments(), len(run.organs))
        for organ_id in run.organs:
            organ, segment = BY_ID[organ_id], segmentation.GetSegment(BY_ID[organ_id].key)
            self.assertEqual(segment.GetName(), organ.name)
            self.assertEqual(segment.GetLabelValue(), organ.id)
            self.assertEqual(nodes.segment_tag(segment, "TerminologyEntry"), organ.terminology_entry())
        self.assertIs(run.result_node.GetNodeReference(vtkMRMLSegmentationNode.GetReferenceImageGeometryReferenceRole()), volume)
        self.assertTrue(segmentation.ContainsRepresentation("Closed surface"))
        labels = nodes.labelmap_array(run.result_node, volume)
        self.assertTrue((labels == 6).any(), "no liver found in the sample CT")
        self.delayDisplay(f"Sample CT segmented in {run.elapsed:.0f} s")

    def test_cancel(self):
        import time

        volume = self.loadSample()
        before = slicer.mrmlScene.GetNumberOfNodes()
        logic = ContrastSegLogic()
        run = logic.start(volume, SegmentSettings(threads=2))
        while logic.poll(run) and run.stage in ("", "read"):  # cancel as soon as the worker reports work
            time.sleep(0.05)
        logic.cancel(run)
        self.assertEqual(run.state, "cancelled")
        self.assertFalse(run.work_dir.exists())
        if run.coarse_node is None:  # the usual case; on a fast GPU the coarse map may already be in: complete
            self.assertEqual(slicer.mrmlScene.GetNumberOfNodes(), before)
        else:
            self.assertEqual(run.coarse_node.GetSegmentation().GetNumberOfSegments(), len(run.organs))
        self.delayDisplay("Cancel left no half-loaded node")
