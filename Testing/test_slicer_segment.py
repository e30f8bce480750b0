"""The ContrastSeg Slicer module without the Slicer application: its Logic against real MRML (slicer-core),
the Logic with scripted engine streams, and the panel's .ui against the code.
(The real engine through the worker: test_slicer_worker.py.)

MRML tests ask for the `slicer_app` fixture (Testing/slicer_app.py) and are skipped, with the reason, where
slicer-core is absent; the .ui, parameter and install checks need no Slicer at all.
"""

from __future__ import annotations

import os
import re
import sys
import tomllib
import typing
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from realdata import TS
from scripted_engine import REFINED_SCRIPT, label_files, progress, scripted_logic  # noqa: F401 - label_files: fixture
from slicer_app import slicer_app  # noqa: F401 - the fixture

REPO = Path(__file__).resolve().parents[1]
MODULE_DIR = REPO / "ContrastSeg"
sys.path.insert(0, str(MODULE_DIR))  # as Slicer does for a module folder: ContrastSeg.py and ContrastSegLib

from ContrastSegLib import install  # noqa: E402
from ContrastSegLib.parameter import COARSE_ONLY, SegmentSettings, segment_request  # noqa: E402


CT_SM = TS / "example_ct_sm.nii.gz"
THREADS = 2

# Every widget the module's Python code names through `self.ui`, with the class the code relies on.
UI_CLASSES = {
    "inputsCollapsibleButton": "ctkCollapsibleButton", "inputVolumeSelector": "qMRMLNodeComboBox",
    "loadSampleButton": "QPushButton", "modelComboBox": "QComboBox", "refreshModelsButton": "QPushButton",
    "organsComboBox": "ctkCheckableComboBox", "qualityComboBox": "QComboBox", "deviceComboBox": "QComboBox",
    "keepCoarseCheckBox": "QCheckBox", "show3DCheckBox": "QCheckBox", "applyButton": "QPushButton",
    "cancelButton": "QPushButton", "progressBar": "QProgressBar", "statusLabel": "QLabel", "errorLabel": "QLabel",
    "correctCollapsibleButton": "ctkCollapsibleButton", "openEditorButton": "QPushButton",
    "segmentEditorWidget": "qMRMLSegmentEditorWidget", "advancedCollapsibleButton": "ctkCollapsibleButton",
    "threadsSpinBox": "QSpinBox", "requirementsLabel": "QLabel", "installButton": "QPushButton",
    "clickOrganComboBox": "QComboBox", "positivePlaceWidget": "qSlicerMarkupsPlaceWidget",
    "negativePlaceWidget": "qSlicerMarkupsPlaceWidget", "clickApplyButton": "QPushButton",
    "boxPlaceWidget": "qSlicerMarkupsPlaceWidget", "paintHintButton": "QPushButton", "clickStatusLabel": "QLabel",
    "clickCancelButton": "QPushButton", "clickImmediateCheckBox": "QCheckBox",
}
# parameterNodeWrapper's connectors compare the widget type exactly (guiConnectors.py).
CONNECTOR_WIDGET = {bool: "QCheckBox", int: "QSpinBox", str: "QComboBox"}


def module_code() -> str:
    return "\n".join(p.read_text() for p in [MODULE_DIR / "ContrastSeg.py", *sorted((MODULE_DIR / "ContrastSegLib").glob("*.py"))])


def ui_widgets() -> dict[str, str]:
    tree = ET.parse(MODULE_DIR / "Resources" / "UI" / "ContrastSeg.ui")
    return {w.get("name"): w.get("class") for w in tree.iter("widget")}


# ---------------------------------------------------------------------------------------------- no Slicer needed
def test_every_widget_the_code_uses_is_in_the_ui_with_its_class():
    used = set(re.findall(r"\bui\.([A-Za-z_]\w*)", module_code()))
    assert used, "no self.ui.NAME found: the regex or the code changed"
    assert used <= set(UI_CLASSES), f"add these to UI_CLASSES with their class: {sorted(used - set(UI_CLASSES))}"
    widgets = ui_widgets()
    for name in sorted(used):
        assert name in widgets, f"self.ui.{name} is not in ContrastSeg.ui"
        assert widgets[name] == UI_CLASSES[name], f"{name} is a {widgets[name]} in the .ui, the code needs {UI_CLASSES[name]}"


def test_ui_file_declares_its_custom_widgets_and_connections():
    tree = ET.parse(MODULE_DIR / "Resources" / "UI" / "ContrastSeg.ui")
    declared = {c.findtext("class") for c in tree.iter("customwidget")}
    used = {c for c in ui_widgets().values() if not c.startswith("Q")}
    assert used <= declared, f"custom widgets without a <customwidget> entry: {used - declared}"
    names = set(ui_widgets())
    for conn in tree.iter("connection"):
        assert conn.findtext("sender") in names and conn.findtext("receiver") in names
    assert tree.getroot().find("widget").get("class") == "qMRMLWidget"  # so mrmlSceneChanged reaches the selectors


def test_segment_editor_is_set_up_as_slicers_segmenteditor_module_does():
    """SegmentEditor.py's order: the editor node before the scene (so the .ui must not pass the scene on
    to the editor), a hook for effects registered later, the editor's shortcuts while the module is shown,
    and the editor let go of its segmentation and views when the scene closes."""
    tree = ET.parse(MODULE_DIR / "Resources" / "UI" / "ContrastSeg.ui")
    assert not [c for c in tree.iter("connection") if c.findtext("receiver") == "segmentEditorWidget"]
    code = (MODULE_DIR / "ContrastSegLib" / "widget.py").read_text()
    setup = code[code.index("def setupSegmentEditor"):code.index("def onEffectRegistered")]
    assert setup.index("self.selectEditorNode()") < setup.index("editor.setMRMLScene(slicer.mrmlScene)")
    assert '"effectRegistered(QString)", self.onEffectRegistered' in setup and "updateEffectList()" in code
    enter, leave = (code[code.index(f"    def {m}(self)"):][:1200] for m in ("enter", "exit"))
    assert "installKeyboardShortcuts()" in enter and "uninstallKeyboardShortcuts()" in leave
    module = (MODULE_DIR / "ContrastSeg.py").read_text()
    closing = module[module.index("def onSceneStartClose"):module.index("def onSceneEndClose")]
    assert "releaseEditor()" in closing and "removeViewObservations()" in code[code.index("def releaseEditor"):]


def test_module_self_tests_guard_themselves_where_ctest_runs_them(tmp_path, monkeypatch):
    """ctest runs each test_ method through unittest (never runTest): setUp skips without the requirements
    and fails, naming the folder, when the default model is not where the engine looks (a bare build tree)."""
    import unittest

    pytest.importorskip("slicer", reason="slicer-core is not installed (pip install slicer-core)")
    from ContrastSeg import ContrastSegTest
    from ContrastSegLib.install import InstallLogic, self_test_ready

    names = unittest.TestLoader().getTestCaseNames(ContrastSegTest)
    assert set(names) == {"test_sample_ct", "test_cancel"}
    fresh_slicer = InstallLogic(version_of=lambda name: None)  # nothing installed yet
    case = ContrastSegTest("test_sample_ct")
    with pytest.raises(unittest.SkipTest, match="install the Python requirements"):
        self_test_ready(case, fresh_slicer)
    monkeypatch.setenv("CONTRASTSEG_RESOURCES", str(tmp_path))  # a build tree without the model
    result = unittest.TestResult()
    case.run(result)
    assert len(result.failures) == 1 and "the default model is not where the engine looks" in result.failures[0][1]
    monkeypatch.delenv("CONTRASTSEG_RESOURCES")
    self_test_ready(case)  # this checkout: requirements installed, model found


def test_parameter_bindings_fit_parameterNodeWrapper_connectors():
    """Each settings field bound in widget.py goes to the widget type its connector accepts."""
    code = (MODULE_DIR / "ContrastSegLib" / "widget.py").read_text()
    bindings = dict(re.findall(r'"settings\.(\w+)": self\.ui\.(\w+)', code))
    assert bindings, "no settings bindings found in widget.py"
    hints = typing.get_type_hints(SegmentSettings, include_extras=True)
    widgets = ui_widgets()
    for field, widget in bindings.items():
        base = typing.get_origin(hints[field]) and typing.get_args(hints[field])[0] or hints[field]
        assert widgets[widget] == CONNECTOR_WIDGET[base], f"settings.{field} ({base.__name__}) bound to a {widgets[widget]}"
        if base is str:  # a combo box needs the Choice annotation, and the default must be one of the choices
            choices = [a for a in typing.get_args(hints[field])[1:] if hasattr(a, "choices")]
            assert choices and getattr(SegmentSettings(), field) in choices[0].choices
    assert re.search(r'"inputVolume": self\.ui\.inputVolumeSelector', code)
    assert widgets["inputVolumeSelector"] == "qMRMLNodeComboBox"


def test_segment_request():
    out, coarse = Path("/w/seg.nii.gz"), Path("/w/coarse.nii.gz")
    assert segment_request(SegmentSettings(), out, coarse) == {"output": str(out), "coarse_output": str(coarse),
                                                               "coarse_only": False}
    request = segment_request(SegmentSettings(model="mine", device="GPU", quality=COARSE_ONLY, organs="liver, spleen",
                                              threads=2), out, coarse)
    assert request == {"output": str(out), "coarse_only": True, "organs": ["liver", "spleen"]}


def test_the_job_carries_model_device_and_threads_to_the_worker(slicer_app, label_files):  # noqa: F811
    volume = slicer_app.load_volume(CT_SM, "ct")
    logic = scripted_logic(REFINED_SCRIPT, label_files)
    run = logic.start(volume, SegmentSettings(model="mine", device="GPU", threads=3))
    job = run.process.job
    assert (job.model, job.device, job.threads, job.volume_node) == ("mine", "cuda", 3, volume)
    assert job.env["PYTHONPATH"].split(os.pathsep)[0] == str(REPO / "ContrastSeg")
    logic.cancel(run)
    run = logic.start(volume, SegmentSettings())
    assert (run.process.job.model, run.process.job.device, run.process.job.threads) == (None, "auto", 0)
    logic.cancel(run)


def test_install_requirements_follow_pyproject():
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    assert sorted(d.replace(" ", "") for d in deps) == sorted([install.TORCH, *install.REQUIREMENTS])


def test_install_plan_never_touches_what_slicer_ships():
    slicer_like = {"numpy": "1.26.4", "SimpleITK": "2.4.0", "torch": None, "monai": None, "scipy": "1.13.0",
                   "scikit-image": "0.20.0", "safetensors": "0.4.5", "matplotlib": None}
    missing = install.missing_requirements(slicer_like.get)
    assert missing == ["torch>=2.2", "monai>=1.3", "scikit-image>=0.21", "matplotlib>=3.7"]
    assert install.shipped_problems(missing) == []
    commands = install.pip_commands(missing, "/tmp/c.txt")
    assert [c[0] for c in commands] == ["monai>=1.3", "scikit-image>=0.21", "matplotlib>=3.7"]  # torch: PyTorchUtils
    assert all(c[1:] == ["--constraint", "/tmp/c.txt"] for c in commands)
    pins = install.constraints({**slicer_like, "torch": "2.4.1+cu121"}.get)
    assert pins == ["numpy==1.26.4", "SimpleITK==2.4.0", "torch==2.4.1+cu121"]
    assert "PyTorch extension" in install.consent_text(missing) and "monai>=1.3" in install.consent_text(missing)
    old = install.missing_requirements({**slicer_like, "numpy": "1.21.0"}.get)
    assert install.shipped_problems(old) == ["numpy>=1.24"]
    assert install.missing_requirements(lambda name: "99.0") == []


def test_install_refuses_to_replace_shipped_packages_and_asks_first():
    asked = []
    logic = install.InstallLogic({"numpy": "1.0"}.get)
    with pytest.raises(RuntimeError, match="must not be replaced"):
        logic.install(confirm=lambda text: asked.append(text) or True)
    assert not asked
    declined = install.InstallLogic({"numpy": "2.0", "SimpleITK": "2.5"}.get)
    assert declined.install(confirm=lambda text: asked.append(text) or False) is False and asked


# ---------------------------------------------------------------------------------------------- MRML, scripted engine

def names(app, cls="vtkMRMLSegmentationNode"):
    return sorted(n.GetName() for n in app.nodes(cls))


def test_coarse_shows_first_then_refined_replaces_it_in_place(slicer_app, label_files):
    from ContrastSegLib import nodes

    volume = slicer_app.load_volume(CT_SM, "ct")
    seen = []
    logic = scripted_logic(REFINED_SCRIPT, label_files)
    run = logic.start(volume, SegmentSettings(organs="liver,spleen,pancreas", show3D=False),
                      on_update=lambda r: seen.append((r.stage, r.coarse_node is not None, r.result_node is not None)))
    logic.wait(run, interval=0)
    assert run.state == "done" and run.error is None
    assert ("coarse", True, False) in seen  # the coarse result was in the scene before the refined one
    assert run.result_node is run.coarse_node and names(slicer_app) == ["ct segmentation"]
    assert run.result_node.GetAttribute("ContrastSeg.Stage") == "refined"
    assert [s for s in run.result_node.GetSegmentation().GetSegmentIDs()] == ["spleen", "liver", "pancreas"]
    refined = sitk.GetArrayFromImage(sitk.ReadImage(str(label_files["refined"])))
    assert np.array_equal(nodes.labelmap_array(run.result_node, volume), refined)
    assert not run.work_dir.exists()


def test_keep_coarse_puts_refined_beside_it(slicer_app, label_files):
    from ContrastSegLib import nodes

    volume = slicer_app.load_volume(CT_SM, "ct")
    logic = scripted_logic(REFINED_SCRIPT, label_files)
    run = logic.wait(logic.start(volume, SegmentSettings(keepCoarse=True, show3D=True)), interval=0)
    assert run.state == "done" and run.result_node is not run.coarse_node
    assert run.result_node.GetSegmentation().ContainsRepresentation("Closed surface")  # the final one in 3D
    assert not run.coarse_node.GetSegmentation().ContainsRepresentation("Closed surface")  # not worth seconds
    assert names(slicer_app) == ["ct segmentation", "ct segmentation (coarse)"]
    coarse = sitk.GetArrayFromImage(sitk.ReadImage(str(label_files["coarse"])))
    assert np.array_equal(nodes.labelmap_array(run.coarse_node, volume), coarse)
    assert run.coarse_node.GetAttribute("ContrastSeg.Stage") == "coarse"


def test_cancel_after_the_coarse_map_keeps_it_complete_and_nothing_else(slicer_app, label_files):
    volume = slicer_app.load_volume(CT_SM, "ct")
    before = len(slicer_app.nodes())
    logic = scripted_logic(REFINED_SCRIPT, label_files)
    run = logic.start(volume, SegmentSettings(show3D=False))
    while logic.poll(run) and run.coarse_node is None:
        pass
    logic.cancel(run)
    assert run.state == "cancelled" and run.result_node is None and not run.work_dir.exists()
    assert run.coarse_node.GetSegmentation().GetNumberOfSegments() == len(run.organs) > 0
    assert len(slicer_app.nodes()) == before + 2  # the coarse segmentation and its display node


def test_unreadable_result_fails_readably_and_leaves_no_node(slicer_app, label_files, tmp_path):
    volume = slicer_app.load_volume(CT_SM, "ct")
    before = len(slicer_app.nodes())
    broken = tmp_path / "broken.nii.gz"
    broken.write_bytes(b"not an image")
    logic = scripted_logic(REFINED_SCRIPT, {"coarse": broken, "refined": broken})
    run = logic.wait(logic.start(volume, SegmentSettings(show3D=False)), interval=0)
    assert run.state == "failed" and run.error.startswith("could not load the result")
    assert len(slicer_app.nodes()) == before and names(slicer_app) == []


def test_engine_error_event_becomes_the_panel_message(slicer_app, label_files):
    volume = slicer_app.load_volume(CT_SM, "ct")
    script = [progress("read", 0.0), {"event": "error", "message": "model 'x' does not cover organ ids [5]"}]
    logic = scripted_logic(script, label_files, returncode=2)
    run = logic.wait(logic.start(volume, SegmentSettings()), interval=0)
    assert run.state == "failed" and run.error == "model 'x' does not cover organ ids [5]"
    assert run.status_text() == "Failed."


def test_sample_data_source_points_at_the_sample_ct(slicer_app):
    import ContrastSeg

    source = ContrastSeg.sampleDataSource()
    assert source["sampleName"] == "ContrastSeg sample CT" and source["uris"].startswith("file://")
    path = ContrastSeg.uri_to_path(source["uris"])
    assert path.exists() and path.name == source["fileNames"] == "contrastseg-sample-ct.nii.gz"
    spaced = Path("/tmp/a folder with spaces/ct.nii.gz")
    assert ContrastSeg.uri_to_path(spaced.as_uri()) == spaced  # a path with spaces survives the round trip
    assert Path(source["thumbnailFileName"]).exists()


# ---------------------------------------------------------------------------------------------- MRML, real engine
