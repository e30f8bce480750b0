"""The Correct section of the ContrastSeg panel: every hint updates the organ at once (issue 23).

Qt only: the place widgets, the keys, the timer that drives interaction.InteractionLogic, the busy cursor, the
status line and Cancel. Every decision (which organ, when an update runs, what undo takes back) is in
InteractionLogic and correct.CorrectionLogic, tested on real MRML.

Keys while the module is shown (none of them is a slice view's or the Segment Editor's: those use b, f, g, r, s,
t, v, the digits, q, w, z, y, Space and Escape): P places points, N flips the points between inside and
outside (and places), X draws a box (the box placed before is cleared first).
"""

from __future__ import annotations

import qt
import slicer

from contrastseg.organs import BY_KEY

from .interaction import KEYS

POLL_MS = 100


class HintsSection:
    """Owned by widget.Panel (`panel`: its parameter node and Logic); `ui` is the module's widget variables."""

    def __init__(self, ui, panel):
        self.ui, self.panel = ui, panel
        self.session = None  # InteractionLogic, made on first use
        self._overwriteMode = None  # the Segment Editor's overwrite mode while a stroke is painted
        self._shortcuts = []
        self._busyCursor = False
        self.timer = qt.QTimer()
        self.timer.setInterval(POLL_MS)
        self.timer.timeout.connect(self.onTick)
        self.ui.clickApplyButton.clicked.connect(self.onClickApply)
        self.ui.clickCancelButton.clicked.connect(self.onCancel)
        self.ui.paintHintButton.clicked.connect(self.onPaintHint)
        self.ui.clickImmediateCheckBox.toggled.connect(self.onImmediateToggled)
        self.ui.clickOrganComboBox.currentIndexChanged.connect(self.onOrganChosen)
        self.ui.segmentEditorWidget.connect("currentSegmentIDChanged(QString)", self.onSegmentSelected)
        self.ui.segmentEditorWidget.connect("segmentationNodeChanged(vtkMRMLSegmentationNode*)", self.onSegmentationChanged)
        self.ui.clickCancelButton.setVisible(False)

    # ------------------------------------------------------------------ the Logic
    def logic(self):
        if self.session is None:
            from .correct import CorrectionLogic
            from .interaction import InteractionLogic

            correction = CorrectionLogic(python=self.panel.logic.python,
                                         save_undo=lambda: self.ui.segmentEditorWidget.saveStateForUndo())
            self.session = InteractionLogic(correction, on_pending=self.onPending)
            self.session.immediate = self.ui.clickImmediateCheckBox.checked
        settings = self.panel.params.settings if self.panel.params is not None else None
        if settings is not None:  # the worker Segment used: the CT it segmented is still open there
            from .parameter import engine_device

            self.session.correction.device = engine_device(settings)
            self.session.correction.threads = int(settings.threads or 0)
        return self.session

    def hintNode(self, name: str, color, kind: str = "vtkMRMLMarkupsFiducialNode"):
        """The Markups node for inside points, outside points or the box (one of each in the scene)."""
        node = slicer.mrmlScene.GetFirstNodeByName(name)
        if node is None:
            node = slicer.mrmlScene.AddNewNodeByClass(kind, name)
            node.CreateDefaultDisplayNodes()
            node.GetDisplayNode().SetSelectedColor(*color)
        return node

    def setupPointWidgets(self) -> None:
        """Bind the place widgets to this scene's hint nodes (again after a scene close) and watch them."""
        for widget, name, color in ((self.ui.positivePlaceWidget, "ContrastSeg inside points", (0.1, 0.8, 0.1)),
                                    (self.ui.negativePlaceWidget, "ContrastSeg outside points", (0.9, 0.1, 0.1))):
            widget.setMRMLScene(slicer.mrmlScene)
            widget.setCurrentNode(self.hintNode(name, color))
            widget.placeMultipleMarkups = slicer.qSlicerMarkupsPlaceWidget.ForcePlaceMultipleMarkups
        self.ui.boxPlaceWidget.setMRMLScene(slicer.mrmlScene)
        self.ui.boxPlaceWidget.setCurrentNode(self.hintNode("ContrastSeg box", (0.9, 0.7, 0.1), "vtkMRMLMarkupsROINode"))
        self.bindSession()

    def bindSession(self) -> None:
        segmentation = self.ui.segmentEditorWidget.segmentationNode()
        self.logic().bind(segmentation, self.ui.positivePlaceWidget.currentNode(),
                          self.ui.negativePlaceWidget.currentNode(), self.ui.boxPlaceWidget.currentNode())
        self.fillOrgans(segmentation)

    def unbind(self) -> None:
        """Before a scene closes: stop, and let go of the nodes."""
        self.onCancel()
        if self.session is not None:
            self.session.unbind()
        for widget in (self.ui.positivePlaceWidget, self.ui.negativePlaceWidget, self.ui.boxPlaceWidget):
            widget.setPlaceModeEnabled(False)
            widget.setCurrentNode(None)

    # ------------------------------------------------------------------ the organ
    def fillOrgans(self, segmentation) -> None:
        """The organ list holds the segmentation's model's organs, preselected from the editor's segment."""
        from .interaction import model_organs

        combo = self.ui.clickOrganComboBox
        combo.blockSignals(True)
        combo.clear()
        for key in model_organs(segmentation):
            combo.addItem(BY_KEY[key].name, key)
        combo.blockSignals(False)
        self.onSegmentSelected(self.ui.segmentEditorWidget.currentSegmentID())

    def onSegmentationChanged(self, _node=None) -> None:
        if self.session is not None and slicer.mrmlScene is not None:
            self.bindSession()

    def onSegmentSelected(self, segment_id) -> None:
        from .interaction import organ_of_segment

        organ = organ_of_segment(self.ui.segmentEditorWidget.segmentationNode(), segment_id)
        index = self.ui.clickOrganComboBox.findData(organ) if organ else -1
        if index >= 0:
            self.ui.clickOrganComboBox.setCurrentIndex(index)
        self.onOrganChosen()

    def onOrganChosen(self, _index=None) -> None:
        if self.session is not None and self.logic().set_organ(self.ui.clickOrganComboBox.currentData):
            self.ui.clickStatusLabel.setText("")

    def onImmediateToggled(self, checked: bool) -> None:
        self.logic().immediate = bool(checked)
        self.ui.clickApplyButton.setVisible(not checked)

    # ------------------------------------------------------------------ running
    def onPending(self) -> None:
        """A hint waits: the timer takes it (never inside the MRML event that announced it)."""
        if not self.timer.isActive():
            self.timer.start()

    def onClickApply(self) -> None:
        """Batch mode's Update: one interaction with every hint placed so far."""
        self.logic().apply_now()
        self.onTick()
        self.timer.start()

    def onTick(self) -> None:
        session = self.logic()
        busy = session.tick()
        self.ui.segmentEditorWidget.setReadOnly(busy)  # edits made meanwhile would be lost with the update
        if busy and not self._busyCursor:
            qt.QApplication.setOverrideCursor(qt.Qt.BusyCursor)
        elif not busy and self._busyCursor:
            qt.QApplication.restoreOverrideCursor()
        self._busyCursor = busy
        self.ui.clickCancelButton.setVisible(busy)
        self.ui.clickStatusLabel.setText(session.status_text())
        if not busy:
            self.timer.stop()
            self.restoreOverwriteMode()

    def onCancel(self) -> None:
        if self.session is not None and self.session.job is not None:
            self.session.cancel()
        self.onTick() if self.session is not None else None

    # ------------------------------------------------------------------ hints
    def onPaintHint(self) -> None:
        """Select the hint segment (made if needed) in the editor below with Paint on: the user strokes the
        organ; the stroke is applied when the editor's segment changes back or Update is pressed."""
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

    def placePoints(self) -> None:
        self.ui.positivePlaceWidget.setPlaceModeEnabled(True)

    def flipPoints(self) -> None:
        """Inside points become outside points and back, for what is placed next."""
        inside = self.ui.positivePlaceWidget.placeModeEnabled
        self.ui.positivePlaceWidget.setPlaceModeEnabled(not inside)
        self.ui.negativePlaceWidget.setPlaceModeEnabled(inside)

    def placeBox(self) -> None:
        self.logic().clear_box()  # a placed box is cleared first: a second ROI node would be ignored
        self.ui.boxPlaceWidget.setPlaceModeEnabled(True)

    def enter(self) -> None:
        """P / N / X while the module is shown."""
        self.setupPointWidgets()
        window = slicer.util.mainWindow()
        for action, handler in (("point", self.placePoints), ("flip", self.flipPoints), ("box", self.placeBox)):
            shortcut = qt.QShortcut(qt.QKeySequence(KEYS[action]), window)
            shortcut.connect("activated()", handler)
            self._shortcuts.append(shortcut)

    def exit(self) -> None:
        """Leaving the module: no place mode stays on (clicks elsewhere would add hints), no keys stay bound."""
        self.restoreOverwriteMode()
        for widget in (self.ui.positivePlaceWidget, self.ui.negativePlaceWidget, self.ui.boxPlaceWidget):
            widget.setPlaceModeEnabled(False)
        for shortcut in self._shortcuts:
            shortcut.disconnect("activated()")
            shortcut.setParent(None)
        self._shortcuts = []

    def cleanup(self) -> None:
        self.timer.stop()
        if self.session is not None:
            self.session.cancel()
            self.session.unbind()
            self.session.correction.cleanup()
