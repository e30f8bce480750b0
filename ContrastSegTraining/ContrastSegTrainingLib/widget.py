"""The ContrastSegTraining panel: export, dataset table, training request, runs (progress, log, loss chart),
compare. Qt lives here and only here; all work is done by the Logic (ContrastSegTraining.py), so what the
tests check is what the buttons do. Widget names are those of Resources/UI/ContrastSegTraining.ui
(Testing/test_slicer_training.py checks that each `self.ui.NAME` used here exists there).
"""

from __future__ import annotations

from pathlib import Path

import qt
import slicer

from contrastseg.errors import ContrastSegError

from .parameter import PRETRAIN_FINETUNE
from .runs import RunMonitor, validation_text

POLL_MS = 500
SETTINGS_KEY = "ContrastSegTraining/DatasetFolder"
COLUMNS = ("entry", "labels", "organs", "phase", "date", "edited", "validation")
RESULT_COLUMNS = ("case", "organ", "before", "after", "what")


class Panel:
    def __init__(self, ui, logic):
        self.ui, self.logic = ui, logic
        self.params, self._guiTag = None, None
        self.monitor: RunMonitor | None = None
        self.comparison = None
        self._chart = None
        self._ticks = 0
        self.timer = qt.QTimer()
        self.timer.setInterval(POLL_MS)
        self.timer.timeout.connect(self.onTimer)
        # the dataset folder is applied when typing pauses, not at every keystroke (each one re-reads the table)
        self.folderTimer = qt.QTimer()
        self.folderTimer.setSingleShot(True)
        self.folderTimer.setInterval(600)
        self.folderTimer.timeout.connect(self.applyDatasetFolder)
        # the stages and device lists are filled by the parameter node (their Choice annotations)
        folder = qt.QSettings().value(SETTINGS_KEY) or str(logic.datasetFolder())
        ui.datasetPathLineEdit.currentPath = folder
        logic.dataset = Path(folder)
        ui.datasetPathLineEdit.currentPathChanged.connect(self.onDatasetFolderChanged)
        ui.exportButton.clicked.connect(lambda: self.onExport(labelled=True))
        ui.exportUnlabelledButton.clicked.connect(lambda: self.onExport(labelled=False))
        ui.refreshDatasetButton.clicked.connect(self.fillDataset)
        ui.removeEntryButton.clicked.connect(self.onRemoveEntry)
        ui.checkDatasetButton.clicked.connect(self.onCheckDataset)
        ui.startButton.clicked.connect(self.onStart)
        ui.refreshRunsButton.clicked.connect(self.fillRuns)
        ui.runsComboBox.currentIndexChanged.connect(self.onRunSelected)
        ui.resumeButton.clicked.connect(self.onResume)
        ui.cancelButton.clicked.connect(self.onCancel)
        ui.showChartButton.clicked.connect(self.showChart)
        ui.compareButton.clicked.connect(self.onCompare)
        ui.compareCancelButton.clicked.connect(self.cancelComparison)
        self.pendingCheck = None  # the checks before a run starts, while the GPU check runs
        ui.stagesComboBox.currentIndexChanged.connect(lambda *_: self.updateButtons())
        ui.datasetTable.setColumnCount(len(COLUMNS))
        ui.datasetTable.setHorizontalHeaderLabels(list(COLUMNS))
        ui.resultsTable.setColumnCount(len(RESULT_COLUMNS))
        ui.resultsTable.setHorizontalHeaderLabels(list(RESULT_COLUMNS))
        self.fillModels()
        self.fillStrategies()
        self.fillDataset()
        self.fillRuns(attach=True)

    # ------------------------------------------------------------------ parameter node
    def setParameterNode(self, parameterNode) -> None:
        if self.params is not None and self._guiTag is not None:
            self.params.disconnectGui(self._guiTag)
        self.params, self._guiTag = parameterNode, None
        if parameterNode is None:
            return
        self._guiTag = parameterNode.connectParametersToGui({
            "volume": self.ui.exportVolumeSelector, "segmentation": self.ui.exportSegmentationSelector,
            "compareVolume": self.ui.compareVolumeSelector, "training.stages": self.ui.stagesComboBox,
            "training.steps": self.ui.stepsSpinBox, "training.batch": self.ui.batchSpinBox,
            "training.pretrainSteps": self.ui.pretrainStepsSpinBox, "training.pretrainBatch": self.ui.pretrainBatchSpinBox,
            "training.coarseSteps": self.ui.coarseStepsSpinBox, "training.device": self.ui.deviceComboBox,
            "training.threads": self.ui.threadsSpinBox, "training.name": self.ui.runNameLineEdit,
        })
        self.updateButtons()

    def settings(self):
        """The panel's training settings, with the two lists filled at run time (strategy, base model)."""
        s = self.params.training
        s.strategy = self.ui.strategyComboBox.currentText
        s.baseModel = self.ui.baseModelComboBox.currentData or ""
        return s

    # ------------------------------------------------------------------ lists
    def fillModels(self) -> None:
        models = self.logic.models()
        for combo, with_default in ((self.ui.baseModelComboBox, True), (self.ui.compareOldComboBox, False),
                                    (self.ui.compareNewComboBox, False)):
            combo.clear()
            for m in models:
                combo.addItem(f"{m['name']}{' (default)' if m['default'] else ''}", m["name"])
        if self.ui.compareNewComboBox.count > 1:
            self.ui.compareNewComboBox.setCurrentIndex(self.ui.compareNewComboBox.count - 1)

    def fillStrategies(self) -> None:
        self.ui.strategyComboBox.clear()
        self.ui.strategyComboBox.addItems(self.logic.strategies() or [])

    def fillDataset(self) -> None:
        table = self.ui.datasetTable
        try:
            rows = self.logic.datasetRows()
        except ContrastSegError as err:
            rows = []
            self.ui.datasetStatusLabel.setText(str(err))
        table.setRowCount(len(rows))
        for r, row in enumerate(rows):
            values = (row["id"], "yes" if row["labelled"] else "no", ", ".join(row["organs"]) or "-", row["phase"],
                      row["created"], ", ".join(row["edited"]), "held out" if row["validation"] else "")
            for c, value in enumerate(values):
                table.setItem(r, c, qt.QTableWidgetItem(str(value)))
        table.resizeColumnsToContents()
        labelled = sum(1 for r in rows if r["labelled"])
        self.ui.datasetStatusLabel.setText(f"{len(rows)} entries, {labelled} labelled, in {self.logic.datasetFolder()}")

    def fillRuns(self, attach: bool = False) -> None:
        """List the runs; a running one is followed at once (re-attach after Slicer restarts)."""
        runs = self.logic.findRuns()
        combo = self.ui.runsComboBox
        combo.blockSignals(True)
        combo.clear()
        for r in runs:
            combo.addItem(f"{r['name']} ({r['status']})", r["path"])
        combo.blockSignals(False)
        running = [r for r in runs if r["status"] == "running"]
        if attach and running:
            combo.setCurrentIndex([r["path"] for r in runs].index(running[0]["path"]))
        self.onRunSelected()

    # ------------------------------------------------------------------ actions
    def onDatasetFolderChanged(self, path) -> None:
        self.folderTimer.start()  # restarted by every keystroke

    def applyDatasetFolder(self) -> None:
        path = self.ui.datasetPathLineEdit.currentPath
        refused = self.logic.useDatasetFolder(path)
        if refused:
            self.ui.datasetStatusLabel.setText(refused)
            return
        qt.QSettings().setValue(SETTINGS_KEY, str(self.logic.datasetFolder()))
        self.fillDataset()

    def onExport(self, labelled: bool) -> None:
        segmentation = self.params.segmentation if labelled else None
        try:
            with slicer.util.tryWithErrorDisplay("Export failed.", waitCursor=True):
                result = self.logic.exportCase(self.params.volume, segmentation, self.ui.phaseComboBox.currentText,
                                               self.ui.noteLineEdit.text,
                                               labelled and self.ui.validationCheckBox.checked)
                self.ui.exportStatusLabel.setText(result.message())
        finally:
            self.fillDataset()

    def onRemoveEntry(self) -> None:
        row = self.ui.datasetTable.currentRow()
        if row < 0:
            return
        entry = self.ui.datasetTable.item(row, 0).text()
        if slicer.util.confirmYesNoDisplay(f"Move entry {entry} to the dataset's trash folder?"):
            with slicer.util.tryWithErrorDisplay("Remove failed."):
                self.logic.removeEntry(entry)
            self.fillDataset()

    def onCheckDataset(self) -> None:
        with slicer.util.tryWithErrorDisplay("Check failed.", waitCursor=True):
            problems, warnings = self.logic.checkDataset()
            text = "\n".join([f"Problem: {p}" for p in problems] + [f"Warning: {w}" for w in warnings]) or "Dataset OK."
            self.ui.datasetStatusLabel.setText(text)

    def onStart(self) -> None:
        """Check, then launch. The GPU check runs in an engine process (seconds to minutes): the timer polls it
        under a busy cursor and `afterCheck` launches, so Slicer never waits on it."""
        if self.pendingCheck is not None:
            return
        settings = self.settings()
        with slicer.util.tryWithErrorDisplay("Could not check the run.", waitCursor=True):
            self.pendingCheck = (self.logic.startCheck(settings), settings)
            if self.pendingCheck[0].process is not None:
                qt.QApplication.setOverrideCursor(qt.Qt.BusyCursor)
                self.ui.guardLabel.setText("Checking the GPU's memory for this run...")
            self.onTimer()
            self.timer.start()

    def afterCheck(self) -> None:
        """The checks are in: refuse with their reasons, or ask about a smaller batch, then launch."""
        pending, settings = self.pendingCheck
        self.pendingCheck = None
        if pending.process is not None:
            qt.QApplication.restoreOverrideCursor()
        check = self.logic.checkResult(pending)
        if check.errors:
            self.ui.guardLabel.setText("Cannot start: " + " ".join(check.errors))
            return
        if check.suggested_batch and slicer.util.confirmYesNoDisplay(
                f"{' '.join(check.warnings)}.\n\nUse batch {check.suggested_batch}?"):
            settings.batch = check.suggested_batch
            self.params.training.batch = check.suggested_batch  # shown in the panel too
        self.ui.guardLabel.setText(" ".join(check.warnings))
        with slicer.util.tryWithErrorDisplay("Could not start the run.", waitCursor=True):
            self.follow(self.logic.launch(settings))
            self.fillRuns()

    def onRunSelected(self, *_args) -> None:
        path = self.ui.runsComboBox.currentData
        if not path or (self.monitor is not None and str(self.monitor.run_dir) == path):
            self.updateButtons()
            return
        self.follow(self.logic.attach(Path(path)))

    def onResume(self) -> None:
        if self.monitor is None:
            return
        with slicer.util.tryWithErrorDisplay("Could not resume the run."):
            self.follow(self.logic.resume(self.monitor.run_dir))

    def onCancel(self) -> None:
        """Cancel the training run only (the comparison has its own Cancel); returns at once."""
        if self.monitor is not None and self.monitor.process is not None:
            self.logic.cancel(self.monitor, wait=False)
            self.timer.start()  # its polls send SIGKILL if the run has not stopped after the grace period
        self.onTimer()

    def follow(self, monitor: RunMonitor) -> None:
        self.monitor, self._chart = monitor, None
        self.ui.logTextEdit.setPlainText(monitor.log_text())
        self.fillResults()
        self.onTimer()
        self.timer.start()

    def fillResults(self) -> None:
        """Before/after Dice per organ of the followed run (empty until its validate step has run)."""
        rows = self.logic.resultRows(self.monitor.run_dir) if self.monitor is not None else []
        table = self.ui.resultsTable
        table.setRowCount(len(rows))
        fmt = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731
        for r, row in enumerate(rows):
            for c, value in enumerate((row["case"], row["organ"], fmt(row["before"]), fmt(row["after"]), row["kind"])):
                table.setItem(r, c, qt.QTableWidgetItem(value))
        table.resizeColumnsToContents()

    def showChart(self) -> None:
        if self.monitor is not None and self.monitor.losses:
            self._chart = self.logic.updateChart(self.monitor)
            slicer.modules.plots.logic().ShowChartInLayout(self._chart)

    def onCompare(self) -> None:
        old, new = self.ui.compareOldComboBox.currentData, self.ui.compareNewComboBox.currentData
        problem = self.logic.compareProblem(self.params.compareVolume, old, new)
        if problem:
            self.ui.compareStatusLabel.setText(problem)
            return
        with slicer.util.tryWithErrorDisplay("Compare failed."):
            self.comparison = self.logic.compare(self.params.compareVolume, old, new)
            self.ui.compareStatusLabel.setText(f"Segmenting with {old}, then {new}...")
            self.timer.start()

    # ------------------------------------------------------------------ timer
    def onTimer(self) -> None:
        busy = False
        if self.pendingCheck is not None:
            if self.logic.checkRunning(self.pendingCheck[0]):
                busy = True
            else:
                self.afterCheck()
        if self.monitor is not None:
            was_running = self.monitor.process is not None
            busy |= self.monitor.poll()
            self.ui.progressBar.setValue(int(100 * self.monitor.fraction))
            self.ui.runStatusLabel.setText(self.monitor.status_text())
            self._ticks += 1
            if self._ticks % 4 == 0 or not busy:
                self.ui.logTextEdit.setPlainText(self.monitor.log_text())
            if self.monitor.losses and (self._chart is not None or busy):
                self._chart = self.logic.updateChart(self.monitor)
            if was_running and not busy:
                self.fillRuns()
                self.fillModels()
                self.fillResults()
                if self.monitor.status == "done":
                    slicer.util.infoDisplay(f"Training finished: model '{self.monitor.model}' is in the model store.\n"
                                            f"{validation_text(self.monitor.validation)}")
        if self.comparison is not None:
            if self.logic.pollComparison(self.comparison):
                busy = True
            else:
                self.ui.compareStatusLabel.setText(self.logic.comparisonText(self.comparison))
                self.comparison = None
        if not busy:
            self.timer.stop()
        self.updateButtons()

    def updateButtons(self) -> None:
        running = self.monitor is not None and self.monitor.process is not None
        resumable = self.monitor is not None and self.monitor.process is None and self.monitor.status in (
            "interrupted", "cancelled", "failed")
        self.ui.cancelButton.setEnabled(running)
        self.ui.compareCancelButton.setEnabled(self.comparison is not None)
        self.ui.startButton.setEnabled(self.pendingCheck is None)
        self.ui.resumeButton.setEnabled(resumable)
        self.ui.showChartButton.setEnabled(self.monitor is not None and bool(self.monitor.losses))
        pretrain = self.ui.stagesComboBox.currentText == PRETRAIN_FINETUNE
        for w in (self.ui.strategyComboBox, self.ui.pretrainStepsSpinBox, self.ui.pretrainBatchSpinBox):
            w.setEnabled(pretrain)

    def cancelComparison(self) -> None:
        """Stop the comparison (its Cancel button; and before the scene closes or the panel goes: it segments
        into the scene); a training run goes on."""
        if self.comparison is not None:
            self.logic.cancelComparison(self.comparison)
            self.comparison = None
            self.ui.compareStatusLabel.setText("Comparison cancelled.")
        self.updateButtons()

    def cleanup(self) -> None:
        """Leaving Slicer does not stop a run: it keeps training and is re-attached next time."""
        self.timer.stop()
        self.folderTimer.stop()
        self.cancelComparison()
        self.setParameterNode(None)
