"""The ContrastSeg panel: binds the .ui widgets to the parameter node, runs the Logic from a timer, shows
progress, errors and results, and hands the result to the embedded Segment Editor.

Qt lives here and only here (the Logic runs without it). Widget names are those of
Resources/UI/ContrastSeg.ui; Testing/test_slicer_segment.py checks that every widget of `self.ui` used here
exists there with the expected class.
"""

from __future__ import annotations

import qt
import slicer

from contrastseg.organs import ORGANS
from contrastseg.store import list_models

from .install import InstallLogic
from .segmentation import SegmentationLogic, SegmentationRun

POLL_MS = 200  # how often the engine's progress lines are read; loading a result happens in the same tick


class Panel:
    """Everything behind the module panel; `ContrastSegWidget.setup()` creates one."""

    def __init__(self, ui, logic: SegmentationLogic, installLogic: InstallLogic | None = None):
        self.ui = ui
        self.logic = logic
        self.installLogic = installLogic or InstallLogic()
        self.params = None  # the typed parameter node (ContrastSegParameterNode), set by setParameterNode
        self._guiTag = None
        self.run: SegmentationRun | None = None
        self._shown = None  # the segmentation node the editor shows
        self._noOrgans = False
        self._organRows = list(ORGANS)  # the organs listed in the organs combo box, in its order
        self.timer = qt.QTimer()
        self.timer.setInterval(POLL_MS)
        self.timer.timeout.connect(self.onTimer)

        self.ui.modelComboBox.currentIndexChanged.connect(self.onModelChanged)
        self.ui.organsComboBox.checkedIndexesChanged.connect(self.onOrgansChanged)
        # the node comes with the signal: PythonQt calls handlers in connection order, so this one runs before the
        # parameter node's own and params.inputVolume would still be the previous volume
        self.ui.inputVolumeSelector.currentNodeChanged.connect(lambda node: self.updateButtons(volume=node))
        self.ui.applyButton.clicked.connect(self.onApply)
        self.ui.cancelButton.clicked.connect(self.onCancel)
        self.ui.loadSampleButton.clicked.connect(self.onLoadSample)
        self.ui.installButton.clicked.connect(self.onInstall)
        self.ui.refreshModelsButton.clicked.connect(self.fillModels)
        self.ui.openEditorButton.clicked.connect(self.onOpenSegmentEditor)
        self.ui.openEditorButton.setEnabled(False)
        self.correction = None  # CorrectionLogic, made at the first click correction
        self._shortcuts = []
        for organ in ORGANS:
            self.ui.clickOrganComboBox.addItem(organ.name, organ.key)
        self.ui.clickApplyButton.clicked.connect(self.onClickApply)
        self.ui.paintHintButton.clicked.connect(self.onPaintHint)
        self._editorNode = None
        self._effectFactory = None
        self.setupSegmentEditor()
        self.showError(None)
        self.ui.progressBar.setValue(0)
        self.ui.statusLabel.setText("Select a CT and press Segment.")
        self.updateRequirements()

    def setParameterNode(self, parameterNode) -> None:
        """Bind the widgets to a parameter node (again after a scene close); None unbinds them."""
        if self.params is not None and self._guiTag is not None:
            self.params.disconnectGui(self._guiTag)
        self.params, self._guiTag = parameterNode, None
        if parameterNode is None:
            return
        self._guiTag = parameterNode.connectParametersToGui({
            "inputVolume": self.ui.inputVolumeSelector,
            "settings.device": self.ui.deviceComboBox,
            "settings.quality": self.ui.qualityComboBox,
            "settings.keepCoarse": self.ui.keepCoarseCheckBox,
            "settings.show3D": self.ui.show3DCheckBox,
            "settings.threads": self.ui.threadsSpinBox,
        })
        self.fillModels()  # and the organs of the chosen model
        self.selectEditorNode()
        self.ui.segmentEditorWidget.updateWidgetFromMRML()
        self.updateButtons()

    def cleanup(self) -> None:
        self.onCancel()
        self.setParameterNode(None)
        if self._effectFactory is not None:
            self._effectFactory.disconnect("effectRegistered(QString)", self.onEffectRegistered)
        if self.correction is not None:
            self.correction.cleanup()
        from .worker import shutdown_shared_worker

        shutdown_shared_worker()  # the engine worker Segment and the click correction share

    # ------------------------------------------------------------------ inputs
    def fillModels(self) -> None:
        """The store's models (the bundled default and every trained one), the store's default first."""
        combo = self.ui.modelComboBox
        current = self.params.settings.model
        combo.blockSignals(True)
        combo.clear()
        combo.addItem("default model", "")
        for m in list_models():
            card = m["card"]
            label = m["name"] + (" (default)" if m.get("default") else "")
            combo.addItem(label, m["name"])
            combo.setItemData(combo.count - 1, f"{card.get('description', '')}\n{m['path']}".strip(), qt.Qt.ToolTipRole)
        index = max(0, combo.findData(current))
        combo.setCurrentIndex(index)
        combo.blockSignals(False)
        self.params.settings.model = combo.itemData(index) or ""
        self.fillOrgans()

    def onModelChanged(self, index: int) -> None:
        if self.params is not None:
            self.params.settings.model = self.ui.modelComboBox.itemData(index) or ""
            self.fillOrgans()

    def fillOrgans(self) -> None:
        """The organs the selected model covers (from its card), checked as the settings say (all if empty)."""
        from .parameter import SegmentSettings

        covered = set(self.logic.organs_for(SegmentSettings(model=self.params.settings.model)))
        self._organRows = [o for o in ORGANS if o.id in covered]
        chosen = {k for k in self.params.settings.organs.split(",") if k} & {o.key for o in self._organRows}
        combo = self.ui.organsComboBox
        combo.blockSignals(True)
        combo.clear()
        for organ in self._organRows:
            combo.addItem(organ.name)
        model = combo.checkableModel()
        for row, organ in enumerate(self._organRows):
            state = qt.Qt.Checked if not chosen or organ.key in chosen else qt.Qt.Unchecked
            combo.setCheckState(model.index(row, 0), state)
        combo.blockSignals(False)
        self.onOrgansChanged()

    def onOrgansChanged(self) -> None:
        if self.params is None:
            return
        combo = self.ui.organsComboBox
        model = combo.checkableModel()
        keys = [o.key for row, o in enumerate(self._organRows) if combo.checkState(model.index(row, 0)) == qt.Qt.Checked]
        self.params.settings.organs = "" if len(keys) == len(self._organRows) else ",".join(keys)
        self._noOrgans = not keys
        self.updateButtons()

    def onLoadSample(self) -> None:
        import SampleData

        with slicer.util.tryWithErrorDisplay("Could not load the ContrastSeg sample CT.", waitCursor=True):
            node = SampleData.SampleDataLogic().downloadSample("ContrastSeg sample CT")
            if node is not None:
                self.params.inputVolume = node
                slicer.util.setSliceViewerLayers(background=node, fit=True)

    # ------------------------------------------------------------------ requirements
    def updateRequirements(self) -> list[str]:
        missing = self.installLogic.missing()
        self.ui.requirementsLabel.setText(
            "All Python requirements are installed." if not missing
            else "Not installed yet (installed when you first press Segment): " + ", ".join(missing))
        return missing

    def onInstall(self) -> None:
        self.ensureRequirements()
        self.updateRequirements()

    def ensureRequirements(self) -> bool:
        """Install missing requirements after asking; False if declined or failed (the error is shown)."""
        if not self.installLogic.missing():
            return True
        dialog = None

        def step(i, n, text):
            nonlocal dialog
            if dialog is None:
                dialog = slicer.util.createProgressDialog(value=0, maximum=n, labelText=text,
                                                          windowTitle="ContrastSeg: installing Python requirements")
            dialog.setValue(i)
            dialog.setLabelText(text)
            self.ui.statusLabel.setText(text)
            slicer.app.processEvents()

        try:
            ok = self.installLogic.install(
                confirm=lambda text: slicer.util.confirmOkCancelDisplay(text, "ContrastSeg: install requirements"),
                on_step=step)
        except Exception as err:  # noqa: BLE001 - shown in the panel, with pip's details in the console
            self.showError(f"Installing the Python requirements failed: {err}")
            return False
        finally:
            if dialog is not None:
                dialog.close()
        if not ok:
            self.showError("ContrastSeg cannot segment without its Python requirements (installation declined).")
        return ok

    # ------------------------------------------------------------------ running
    def onApply(self) -> None:
        volume = self.params.inputVolume if self.params is not None else None
        if volume is None:
            self.showError("Select a CT volume first (or load the sample CT).")
            return
        self.showError(None)
        if not self.ensureRequirements():
            return
        try:
            self.run = self.logic.start(volume, self.params.settings, on_update=self.onUpdate)
        except Exception as err:  # noqa: BLE001 - e.g. a volume that cannot be written
            self.showError(str(err))
            return
        slicer.util.setSliceViewerLayers(background=volume)
        self.timer.start()
        self.updateButtons()

    def onTimer(self) -> None:
        if self.run is None or not self.logic.poll(self.run):
            self.timer.stop()
            self.onFinished()

    def onCancel(self) -> None:
        if self.run is not None and not self.run.finished:
            self.logic.cancel(self.run)
        self.timer.stop()
        self.updateButtons()

    def onUpdate(self, run: SegmentationRun) -> None:
        self.ui.progressBar.setValue(int(round(100 * (1.0 if run.state == "done" else run.fraction))))
        self.ui.statusLabel.setText(run.status_text())
        if run.coarse_node is not None and run.result_node is None and self._shown is not run.coarse_node:
            self.showResult(run.coarse_node, run.volume_node)  # the coarse map shows while refinement runs

    def onFinished(self) -> None:
        run = self.run
        if run is None:
            return
        if run.state == "done":
            self.showResult(run.result_node, run.volume_node)
            if self.params is not None:
                self.params.segmentation = run.result_node
            self.ui.correctCollapsibleButton.collapsed = False
            threeD = slicer.app.layoutManager().threeDWidget(0) if slicer.app.layoutManager() else None
            if threeD is not None and run.settings.show3D:
                threeD.threeDView().resetFocalPoint()  # centre the 3D view on the organs
        elif run.state == "failed":
            self.showError(run.error or "The segmentation failed.")
        self.updateButtons()

    def showError(self, message: str | None) -> None:
        self.ui.errorLabel.setText(message or "")
        self.ui.errorLabel.setVisible(bool(message))

    def updateButtons(self, volume=False) -> None:
        """`volume`: the CT just chosen (from the selector's signal); False: read it from the parameter node."""
        running = self.run is not None and not self.run.finished
        if volume is False:
            volume = self.params.inputVolume if self.params is not None else None
        self.ui.applyButton.setEnabled(not running and volume is not None
                                       and not self._noOrgans)
        self.ui.cancelButton.setEnabled(running)
        self.ui.inputsCollapsibleButton.setEnabled(not running)

    # ------------------------------------------------------------------ correcting
    def setupSegmentEditor(self) -> None:
        """Once, in the order of Slicer's SegmentEditor.py: the editor node before the scene (the selections
        the editor makes when it gets the scene are then kept in its node), and a hook that adds effects
        registered later (an extension loaded after this module) to the effect list."""
        editor = self.ui.segmentEditorWidget
        editor.setMaximumNumberOfUndoStates(10)
        self.selectEditorNode()
        editor.setMRMLScene(slicer.mrmlScene)
        self._effectFactory = slicer.qSlicerSegmentEditorEffectFactory.instance()
        self._effectFactory.connect("effectRegistered(QString)", self.onEffectRegistered)

    def onEffectRegistered(self, _name=None) -> None:
        self.ui.segmentEditorWidget.updateEffectList()

    def selectEditorNode(self) -> None:
        """The module's own Segment Editor node (a singleton; made again after a scene close)."""
        node = slicer.mrmlScene.GetSingletonNode("ContrastSeg", "vtkMRMLSegmentEditorNode")
        if node is None:
            node = slicer.mrmlScene.CreateNodeByClass("vtkMRMLSegmentEditorNode")
            node.UnRegister(None)
            node.SetSingletonTag("ContrastSeg")
            node = slicer.mrmlScene.AddNode(node)
        if self._editorNode is not node:
            self._editorNode = node
            self.ui.segmentEditorWidget.setMRMLSegmentEditorNode(node)

    def releaseEditor(self) -> None:
        """Before a scene closes: the editor lets go of the segmentation and of the views."""
        self._editorNode = None
        self._shown = None
        self.ui.segmentEditorWidget.setSegmentationNode(None)
        self.ui.segmentEditorWidget.removeViewObservations()

    def showResult(self, segmentation, volume) -> None:
        if segmentation is None:
            return
        self._shown = segmentation
        editor = self.ui.segmentEditorWidget
        editor.setSegmentationNode(segmentation)
        setSource = getattr(editor, "setSourceVolumeNode", None) or editor.setMasterVolumeNode  # Slicer < 5.2
        setSource(volume)
        self.ui.openEditorButton.setEnabled(True)

    def onOpenSegmentEditor(self) -> None:
        """The same segmentation and CT in Slicer's Segment Editor module, for a bigger panel."""
        segmentation = self.ui.segmentEditorWidget.segmentationNode()
        volume = self.ui.segmentEditorWidget.sourceVolumeNode() if hasattr(self.ui.segmentEditorWidget, "sourceVolumeNode") \
            else self.ui.segmentEditorWidget.masterVolumeNode()
        self.ui.segmentEditorWidget.setActiveEffect(None)
        slicer.util.selectModule("SegmentEditor")
        editor = slicer.modules.segmenteditor.widgetRepresentation().self().editor
        editor.setSegmentationNode(segmentation)
        setSource = getattr(editor, "setSourceVolumeNode", None) or editor.setMasterVolumeNode
        setSource(volume)

    # ------------------------------------------------------------------ correcting with clicks
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
        from .correct import hint_segment

        segmentation = self.ui.segmentEditorWidget.segmentationNode()
        if segmentation is None:
            self.ui.clickStatusLabel.setText("Segment the CT first: the stroke corrects its segmentation.")
            return
        self.ui.segmentEditorWidget.setCurrentSegmentID(hint_segment(segmentation, create=True))
        self.ui.segmentEditorWidget.setActiveEffectByName("Paint")

    def enter(self) -> None:
        """Keyboard shortcuts while the module is shown: the Segment Editor's own (effects by number, Space,
        Ctrl+Z, ...) and P / N / B to place inside points, outside points or the box."""
        self.ui.segmentEditorWidget.installKeyboardShortcuts()
        self.setupPointWidgets()
        window = slicer.util.mainWindow()
        for key, widget in (("p", self.ui.positivePlaceWidget), ("n", self.ui.negativePlaceWidget), ("b", self.ui.boxPlaceWidget)):
            shortcut = qt.QShortcut(qt.QKeySequence(key), window)
            shortcut.connect("activated()", lambda w=widget: w.setPlaceModeEnabled(True))
            self._shortcuts.append(shortcut)

    def onClickApply(self) -> None:
        from .correct import CorrectionLogic
        from .parameter import engine_device

        volume = self.params.inputVolume if self.params is not None else None
        segmentation = self.ui.segmentEditorWidget.segmentationNode()
        positive, negative = self.ui.positivePlaceWidget.currentNode(), self.ui.negativePlaceWidget.currentNode()
        box = self.ui.boxPlaceWidget.currentNode()
        if volume is None or segmentation is None:
            self.ui.clickStatusLabel.setText("Segment the CT first: the hints correct its segmentation.")
            return
        if self.correction is None:
            self.correction = CorrectionLogic(python=self.logic.python)
        settings = self.params.settings  # the worker Segment used: the CT it segmented is still open there
        self.correction.device, self.correction.threads = engine_device(settings), int(settings.threads or 0)
        self.ui.segmentEditorWidget.saveStateForUndo()  # Undo in the Segment Editor takes the change back
        organ = self.ui.clickOrganComboBox.currentData
        with slicer.util.tryWithErrorDisplay("Could not update the organ.", waitCursor=True):
            change = self.correction.refine(volume, segmentation, organ, positive, negative, box,
                                            model=self.params.settings.model or None)
            self.ui.clickStatusLabel.setText(f"{self.ui.clickOrganComboBox.currentText}: +{change['added']} / "
                                             f"-{change['removed']} voxels in {change['seconds']:.1f} s.")
            for node in (positive, negative, box):  # the hints are used: the next correction starts clean
                if node is not None:
                    node.RemoveAllControlPoints()

    def exit(self) -> None:
        for shortcut in self._shortcuts:
            shortcut.disconnect("activated()")
            shortcut.setParent(None)
        self._shortcuts = []
        self.ui.segmentEditorWidget.setActiveEffect(None)
        self.ui.segmentEditorWidget.uninstallKeyboardShortcuts()
        self.ui.segmentEditorWidget.removeViewObservations()
