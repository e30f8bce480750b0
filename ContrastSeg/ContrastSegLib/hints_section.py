"""The Correct section of the ContrastSeg panel: an organ re-segmented from points, a box and a rough stroke.

Qt only (place widgets, buttons, shortcuts); the decisions are in correct.CorrectionLogic, tested on real MRML.
"""

from __future__ import annotations

import qt
import slicer

from contrastseg.organs import ORGANS


class HintsSection:
    """Owned by widget.Panel (`panel`: its parameter node and Logic); `ui` is the module's widget variables."""

    def __init__(self, ui, panel):
        self.ui, self.panel = ui, panel
        self.correction = None  # CorrectionLogic, made at the first correction
        self._overwriteMode = None  # the Segment Editor's overwrite mode while a stroke is painted
        self._shortcuts = []
        for organ in ORGANS:
            self.ui.clickOrganComboBox.addItem(organ.name, organ.key)
        self.ui.clickApplyButton.clicked.connect(self.onClickApply)
        self.ui.paintHintButton.clicked.connect(self.onPaintHint)

    def hintNode(self, name: str, color, kind: str = "vtkMRMLMarkupsFiducialNode"):
        """The Markups node for positive points, negative points or the box (one of each in the scene)."""
        node = slicer.mrmlScene.GetFirstNodeByName(name)
        if node is None:
            node = slicer.mrmlScene.AddNewNodeByClass(kind, name)
            node.CreateDefaultDisplayNodes()
            node.GetDisplayNode().SetSelectedColor(*color)
        return node

    def setupPointWidgets(self) -> None:
        for widget, name, color in ((self.ui.positivePlaceWidget, "ContrastSeg inside points", (0.1, 0.8, 0.1)),
                                    (self.ui.negativePlaceWidget, "ContrastSeg outside points", (0.9, 0.1, 0.1))):
            widget.setMRMLScene(slicer.mrmlScene)
            widget.setCurrentNode(self.hintNode(name, color))
            widget.placeMultipleMarkups = slicer.qSlicerMarkupsPlaceWidget.ForcePlaceMultipleMarkups
        self.ui.boxPlaceWidget.setMRMLScene(slicer.mrmlScene)
        self.ui.boxPlaceWidget.setCurrentNode(self.hintNode("ContrastSeg box", (0.9, 0.7, 0.1), "vtkMRMLMarkupsROINode"))

    def onPaintHint(self) -> None:
        """Select the hint segment (made if needed) in the editor below with Paint on: the user strokes the organ."""
        from .correct import hint_segment, paint_hint_mode

        segmentation = self.ui.segmentEditorWidget.segmentationNode()
        if segmentation is None:
            self.ui.clickStatusLabel.setText("Segment the CT first: the stroke corrects its segmentation.")
            return
        if self._overwriteMode is None:  # the organs under the stroke keep their voxels
            self._overwriteMode = paint_hint_mode(self.ui.segmentEditorWidget.mrmlSegmentEditorNode())
        self.ui.segmentEditorWidget.setCurrentSegmentID(hint_segment(segmentation, create=True))
        self.ui.segmentEditorWidget.setActiveEffectByName("Paint")

    def restoreOverwriteMode(self) -> None:
        editor = self.ui.segmentEditorWidget.mrmlSegmentEditorNode()
        if self._overwriteMode is not None and editor is not None:
            editor.SetOverwriteMode(self._overwriteMode)
        self._overwriteMode = None

    def enter(self) -> None:
        """P / N / B place inside points, outside points or the box while the module is shown."""
        self.setupPointWidgets()
        window = slicer.util.mainWindow()
        for key, widget in (("p", self.ui.positivePlaceWidget), ("n", self.ui.negativePlaceWidget), ("b", self.ui.boxPlaceWidget)):
            shortcut = qt.QShortcut(qt.QKeySequence(key), window)
            shortcut.connect("activated()", lambda w=widget: w.setPlaceModeEnabled(True))
            self._shortcuts.append(shortcut)

    def exit(self) -> None:
        self.restoreOverwriteMode()
        for shortcut in self._shortcuts:
            shortcut.disconnect("activated()")
            shortcut.setParent(None)
        self._shortcuts = []

    def cleanup(self) -> None:
        if self.correction is not None:
            self.correction.cleanup()

    def onClickApply(self) -> None:
        from .correct import CorrectionLogic, change_message
        from .parameter import engine_device

        volume = self.panel.params.inputVolume if self.panel.params is not None else None
        segmentation = self.ui.segmentEditorWidget.segmentationNode()
        positive, negative = self.ui.positivePlaceWidget.currentNode(), self.ui.negativePlaceWidget.currentNode()
        box = self.ui.boxPlaceWidget.currentNode()
        if volume is None or segmentation is None:
            self.ui.clickStatusLabel.setText("Segment the CT first: the hints correct its segmentation.")
            return
        if self.correction is None:
            self.correction = CorrectionLogic(python=self.panel.logic.python)
        settings = self.panel.params.settings  # the worker Segment used: the CT it segmented is still open there
        self.correction.device, self.correction.threads = engine_device(settings), int(settings.threads or 0)
        self.ui.segmentEditorWidget.saveStateForUndo()  # Undo in the Segment Editor takes the change back
        organ = self.ui.clickOrganComboBox.currentData
        with slicer.util.tryWithErrorDisplay("Could not update the organ.", waitCursor=True):
            change = self.correction.refine(volume, segmentation, organ, positive, negative, box,
                                            model=settings.model or None)
            self.ui.clickStatusLabel.setText(change_message(self.ui.clickOrganComboBox.currentText, change))
            self.restoreOverwriteMode()
            for node in (positive, negative, box):  # the hints are used: the next correction starts clean
                if node is not None:
                    node.RemoveAllControlPoints()
