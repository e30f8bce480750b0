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

from .hints_section import HintsSection
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
        self.hints = HintsSection(self.ui, self)  # the Correct section's points, box and stroke
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
        if parameterNode.inputVolume is None:  # the only CT in the scene is the one to segment
            from .segmentation import only_volume

            parameterNode.inputVolume = only_volume(slicer.mrmlScene)
        self.fillModels()  # and the organs of the chosen model
        self.selectEditorNode()
        self.ui.segmentEditorWidget.updateWidgetFromMRML()
        self.updateButtons()

    def cleanup(self) -> None:
        self.onCancel()
        self.setParameterNode(None)
        if self._effectFactory is not None:
            self._effectFactory.disconnect("effectRegistered(QString)", self.onEffectRegistered)
        self.hints.cleanup()
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
            """Show the step; False once the dialog's Cancel was pressed (the install stops there)."""
            nonlocal dialog
            if dialog is None:
                dialog = slicer.util.createProgressDialog(value=0, maximum=n, labelText=text,
                                                          windowTitle="ContrastSeg: installing Python requirements")
            dialog.setValue(i)
            dialog.setLabelText(text)
            self.ui.statusLabel.setText(text)
            slicer.app.processEvents()
            return not dialog.wasCanceled

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
            self.showError("ContrastSeg cannot segment without its Python requirements (installation declined or "
                           "cancelled; press Install requirements to go on).")
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
        """`volume`: the CT just chosen (from the selector's signal); False: read it from the parameter node.
        A disabled Segment button says why in its tooltip."""
        from .segmentation import segment_blocked

        running = self.run is not None and not self.run.finished
        if volume is False:
            volume = self.params.inputVolume if self.params is not None else None
        why = segment_blocked(volume, self._noOrgans, running)
        self.ui.applyButton.setEnabled(why is None)
        self.ui.applyButton.setToolTip(why or "Segment the CT: the coarse map first, then the refined one.")
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

    def enter(self) -> None:
        """Keyboard shortcuts while the module is shown: the Segment Editor's own (effects by number, Space,
        Ctrl+Z, ...) and the Correct section's P / N / B."""
        self.ui.segmentEditorWidget.installKeyboardShortcuts()
        self.hints.enter()

    def exit(self) -> None:
        self.hints.exit()
        self.ui.segmentEditorWidget.setActiveEffect(None)
        self.ui.segmentEditorWidget.uninstallKeyboardShortcuts()
        self.ui.segmentEditorWidget.removeViewObservations()
