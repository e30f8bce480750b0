"""The ContrastSegTraining module's Logic on real MRML (slicer-core) and real CT: export a corrected
Segmentation node and read it back; a real (tiny) training run launched detached through the same process
runner the module uses, followed, re-attached from a fresh Logic, cancelled, resumed, registered; the new
model used by the ContrastSeg Logic to segment and compared with the old one."""

from __future__ import annotations

import re
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest

slicer = pytest.importorskip("slicer", reason="slicer-core is not installed (pip install slicer-core)")

REPO = Path(__file__).resolve().parents[1]
for _sub in ("ContrastSegTraining", "ContrastSeg"):
    if str(REPO / _sub) not in sys.path:
        sys.path.insert(0, str(REPO / _sub))

import SimpleITK as sitk  # noqa: E402

from ContrastSegLib import nodes  # noqa: E402
from ContrastSegLib.parameter import SegmentSettings  # noqa: E402
from ContrastSeg import ContrastSegLogic  # noqa: E402
from ContrastSegTraining import ContrastSegTrainingLogic  # noqa: E402
from ContrastSegTrainingLib.parameter import TrainingSettings  # noqa: E402
from contrastseg import store  # noqa: E402
from contrastseg.dataset import entries  # noqa: E402
from contrastseg.errors import ContrastSegError  # noqa: E402
from contrastseg.io import read_image, read_labels, write_labels  # noqa: E402
from contrastseg.organs import TOTALSEGMENTATOR_TO_BTCV  # noqa: E402
from realdata import TS, needs_data  # noqa: E402
from slicer_app import slicer_app  # noqa: E402,F401
from tiny_model import build_tiny_model  # noqa: E402

pytestmark = needs_data
CASES = {"small": ("example_ct_sm.nii.gz", "example_seg.nii.gz"), "large": ("example_ct.nii.gz", "example_seg_fast_force_split.nii.gz")}


@pytest.fixture(autouse=True)
def home(tmp_path, monkeypatch):
    """A private store and runs folder; a run a failed test left running is stopped afterwards."""
    import os
    import signal

    from contrastseg.runs.plan import list_runs

    monkeypatch.setenv("CONTRASTSEG_HOME", str(tmp_path / "home"))
    yield tmp_path / "home"
    for run in list_runs():
        if run["status"] == "running" and run["pid"]:
            os.killpg(run["pid"], signal.SIGKILL)


def load_case(app, tmp_path, which="small"):
    """A CT volume node and its segmentation as the ContrastSeg module shows it (one segment per organ)."""
    ct, seg = (TS / f for f in CASES[which])
    volume = app.load_volume(ct, f"ct-{which}")
    labels = read_labels(seg, read_image(ct), TOTALSEGMENTATOR_TO_BTCV)
    present = sorted(int(v) for v in np.unique(sitk.GetArrayViewFromImage(labels)) if v)
    initial = tmp_path / f"initial-{which}.nii.gz"
    write_labels(labels, initial, present)
    segmentation = nodes.load_labels(initial, volume, present, name=f"ct-{which} segmentation")
    segmentation.SetAttribute("ContrastSeg.Model", "default")
    segmentation.SetAttribute("ContrastSeg.InitialLabels", str(initial))
    return volume, segmentation, initial


def test_export_corrected_segmentation_reads_back_identical(slicer_app, tmp_path):  # noqa: F811
    volume, segmentation, initial = load_case(slicer_app, tmp_path)
    liver = slicer.util.arrayFromSegmentBinaryLabelmap(segmentation, "liver", volume)
    erased = int(liver[12:16].sum())
    liver[12:16] = 0  # the user's correction
    slicer.util.updateSegmentBinaryLabelmapFromArray(liver, segmentation, "liver", volume)
    tumor = segmentation.GetSegmentation().AddEmptySegment("tumor", "tumor")
    mask = np.zeros_like(liver)
    mask[14, 40:50, 40:50] = 1
    slicer.util.updateSegmentBinaryLabelmapFromArray(mask, segmentation, tumor, volume)
    expected = nodes.labelmap_array(segmentation, volume)

    logic = ContrastSegTrainingLogic(dataset=tmp_path / "ds")
    result = logic.exportCase(volume, segmentation, "portal", "first correction")
    assert result.left_out == ["tumor"] and "Left out" in result.message()
    (entry,) = entries(tmp_path / "ds")
    image = read_image(entry.image)
    stored = sitk.GetArrayFromImage(read_labels(entry.labels, image))
    assert np.array_equal(stored, expected)  # identical voxels and organ ids
    assert np.array_equal(sitk.GetArrayFromImage(image), slicer.util.arrayFromVolume(volume).astype(np.float32))
    original = read_image(TS / CASES["small"][0])
    for get in ("GetSize", "GetSpacing", "GetOrigin", "GetDirection"):
        assert np.allclose(getattr(image, get)(), getattr(original, get)(), atol=1e-4), get
    assert result.organs == result.record["organs"] == sorted(int(v) for v in np.unique(expected) if v)
    prov = result.record["provenance"]
    assert prov["edited"] == {"liver": {"id": 6, "added": 0, "removed": erased}} and prov["changed_voxels"] == erased
    assert prov["model"] == "default" and prov["volume_name"] == "ct-small" and prov["left_out"] == ["tumor"]
    assert result.record["phase"] == "portal" and prov["note"] == "first correction"
    # the initial segmentation is kept with the entry, and how much the user fixed is its Dice per organ
    kept = sitk.GetArrayFromImage(read_labels(tmp_path / "ds" / result.record["initial"], image))
    assert np.array_equal(kept, sitk.GetArrayFromImage(read_labels(initial, image)))
    assert 0.5 < prov["initial_dice"]["liver"] < 1.0 and prov["initial_dice"]["spleen"] == 1.0

    again = logic.exportCase(volume, segmentation)  # the same case again: a new version, the first untouched
    assert again.record["id"] == "ct-small-v2" and again.record["labels"] != result.record["labels"]
    logic.exportCase(volume, None)  # the CT alone, for pretraining
    held = logic.exportCase(volume, segmentation, validation=True)  # the Validation checkbox
    assert held.record["validation"] is True
    rows = logic.datasetRows()
    assert [(r["id"], r["labelled"]) for r in rows] == [("ct-small-v1", True), ("ct-small-v2", True), ("ct-small-v3", False),
                                                        ("ct-small-v4", True)]
    assert [r["validation"] for r in rows] == [False, False, False, True]
    assert rows[0]["edited"] == ["liver"] and "liver" in rows[0]["organs"]
    assert logic.checkDataset() == ([], [])
    logic.removeEntry("ct-small-v1")
    assert (tmp_path / "ds" / "trash" / "ct-small-v1").is_dir() and len(logic.datasetRows()) == 3
    assert (tmp_path / "ds" / "trash" / "ct-small-v1" / Path(result.record["initial"]).name).exists()

    only_tumor = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode", "not organs")
    only_tumor.GetSegmentation().AddEmptySegment("tumor", "tumor")
    with pytest.raises(ContrastSegError, match="no segment"):
        logic.exportCase(volume, only_tumor)
    segmentation.GetSegmentation().AddEmptySegment("liver 2", "Liver")
    with pytest.raises(ContrastSegError, match="both the liver"):
        logic.exportCase(volume, segmentation)


def test_training_run_attach_cancel_resume_register_segment_compare(slicer_app, tmp_path):  # noqa: F811
    tiny = build_tiny_model(tmp_path / "tiny")
    store.register(tiny, "tiny-base")
    logic = ContrastSegTrainingLogic(dataset=tmp_path / "ds")
    volumes = {}
    for which in CASES:
        volumes[which], segmentation, _ = load_case(slicer_app, tmp_path, which)
        logic.exportCase(volumes[which], segmentation, validation=which == "large")  # the large CT: before/after only
    settings = TrainingSettings(steps=120, coarseSteps=3, batch=2, threads=1, device="CPU", baseModel="tiny-base",
                                name="slicer-run")
    assert logic.check(settings).errors == []
    nothing = ContrastSegTrainingLogic(dataset=tmp_path / "empty")
    nothing.exportCase(volumes["small"], None)  # a CT without labels: nothing to train on
    assert "needs at least 1 labelled case" in " ".join(nothing.check(TrainingSettings(baseModel="tiny-base")).errors)

    def step(m):
        return max((s for s, _ in m.losses.get("refined", [])), default=0)

    first = logic.launch(settings)
    run_dir = first.run_dir
    first.wait(timeout=300, until=lambda m: step(m) >= 10)
    assert first.status == "running" and first.stage == "refined" and 0 < first.fraction < 1
    assert first.eta is not None and "Fine-tuning the refined network" in first.status_text()
    assert first.losses.get("coarse"), "the coarse network trains first"

    later = ContrastSegTrainingLogic(dataset=tmp_path / "ds")  # Slicer restarted: find the run and re-attach
    (found,) = later.findRuns()
    assert found["status"] == "running" and found["path"] == str(run_dir)
    attached = later.attach(run_dir)
    assert attached.process is not None and step(attached) >= 10  # the curve so far comes from the stream file
    attached.wait(timeout=300, until=lambda m: step(m) >= 55)
    assert step(attached) < 120, "the run finished before it could be cancelled; make it longer"
    later.cancel(attached)
    first.wait(timeout=30)
    assert first.status in ("cancelled", "interrupted") and attached.status in ("cancelled", "interrupted")
    assert later.findRuns()[0]["resumable"]
    assert (run_dir / "steps" / "refined" / "checkpoint.json").read_text().count('"step": 50')

    resumed = later.resume(run_dir)
    resumed.wait(timeout=600)
    assert resumed.status == "done", resumed.error
    assert "resume at step 50" in (run_dir / "steps" / "refined" / "log.txt").read_text()
    curve = resumed.losses["refined"]
    assert [s for s, _ in curve] == sorted({s for s, _ in curve}) and curve[-1][0] == 120
    assert resumed.model == "slicer-run" and "Done" in resumed.status_text() and "held-out" in resumed.status_text()
    assert "resume" in resumed.log_text()
    chart = later.updateChart(resumed)
    table = slicer.mrmlScene.GetFirstNodeByName("slicer-run refined loss")
    assert chart.GetNumberOfPlotSeriesNodes() == 2 and table.GetTable().GetNumberOfRows() == len(curve)
    card = store.show("slicer-run")["card"]
    assert card["validation"]["model"]["mean_dice"] is not None and card["base_model"]["name"] == "tiny-base"
    assert card["validation"]["entries"] == ["ct-large-v1"]  # the marked case, not the correction
    rows = later.resultRows(run_dir)  # the panel's before/after table
    kinds = {r["kind"].split(" (")[0] for r in rows}
    assert kinds == {"held out", "trained on"} and all(r["after"] is not None for r in rows)
    trained = [r for r in rows if r["case"] == "ct-small-v1"]
    assert trained and all(r["before"] == 1.0 for r in trained)  # its export was not edited: initial == correction
    assert "slicer-run" in [m["name"] for m in store.list_models()]

    seg_logic = ContrastSegLogic(python=sys.executable)  # the ContrastSeg module's Logic, with the new model
    run = seg_logic.wait(seg_logic.start(volumes["small"], SegmentSettings(model="slicer-run", threads=1, show3D=False)), timeout=300)
    assert run.state == "done", run.error
    assert run.result_node.GetAttribute("ContrastSeg.Model") == "slicer-run"
    assert run.result_node.GetSegmentation().GetNumberOfSegments() == 13

    comparison = later.compare(volumes["small"], "tiny-base", "slicer-run", device="cpu", threads=1)
    later._compareLogic().wait(comparison, timeout=300)
    assert comparison.error is None and len(comparison.nodes) == 2
    assert comparison.nodes[0].GetDisplayNode().GetOpacity2DFill() == 0.0  # old model as outlines
    assert "tiny-base (outlines) and slicer-run (filled)" in later.comparisonText(comparison)


def test_loss_chart_is_reused_and_follows_a_resume(slicer_app):  # noqa: F811
    from ContrastSegTrainingLib.plots import loss_chart

    chart = loss_chart("r", {"finetune": [(1, 0.9), (2, 0.8)]})
    again = loss_chart("r", {"finetune": [(1, 0.9), (2, 0.8), (3, 0.7)], "pretrain": [(1, 3.0)]})
    assert again is chart and chart.GetNumberOfPlotSeriesNodes() == 2
    assert slicer.mrmlScene.GetFirstNodeByName("r finetune loss").GetTable().GetNumberOfRows() == 3


def test_every_widget_the_panel_uses_is_in_the_ui_file():
    ui = ET.parse(REPO / "ContrastSegTraining" / "Resources" / "UI" / "ContrastSegTraining.ui")
    names = {w.get("name") for w in ui.iter("widget")}
    code = (REPO / "ContrastSegTraining" / "ContrastSegTrainingLib" / "widget.py").read_text()
    used = {n for n in re.findall(r"\bui\.(\w+)", code) if not n.isupper()}  # not the docstring's NAME
    assert used and used <= names, sorted(used - names)
    cmake = (REPO / "ContrastSegTraining" / "CMakeLists.txt").read_text()
    assert "Resources/UI/${MODULE_NAME}.ui" in cmake and "${MODULE_NAME}Lib/*.py" in cmake


def test_parameter_bindings_fit_parameterNodeWrapper_connectors():
    """Each field bound in widget.py goes to a widget its parameterNodeWrapper connector accepts."""
    import typing

    code = (REPO / "ContrastSegTraining" / "ContrastSegTrainingLib" / "widget.py").read_text()
    widgets = {w.get("name"): w.get("class") for w in
               ET.parse(REPO / "ContrastSegTraining" / "Resources" / "UI" / "ContrastSegTraining.ui").iter("widget")}
    bindings = dict(re.findall(r'"training\.(\w+)": self\.ui\.(\w+)', code))
    assert len(bindings) >= 8
    hints = typing.get_type_hints(TrainingSettings, include_extras=True)
    for field, widget in bindings.items():
        base = typing.get_args(hints[field])[0] if typing.get_origin(hints[field]) else hints[field]
        cls = widgets[widget]
        if base is int:
            assert cls == "QSpinBox", (field, cls)
        elif cls == "QComboBox":  # a combo box needs the Choice annotation, with the default among the choices
            choices = [a for a in typing.get_args(hints[field])[1:] if hasattr(a, "choices")]
            assert choices and getattr(TrainingSettings(), field) in choices[0].choices, field
        else:
            assert (base, cls) == (str, "QLineEdit"), (field, cls)
    for node_field in ("volume", "segmentation", "compareVolume"):
        widget = re.search(rf'"{node_field}": self\.ui\.(\w+)', code).group(1)
        assert widgets[widget] == "qMRMLNodeComboBox"


def test_planning_and_launching_from_the_panel_keeps_torch_out_of_slicers_process(tmp_path, home):
    """The panel's check and Start run in Slicer's GUI process: no torch there (its import takes seconds and
    CUDA's start more); the GPU memory check runs in the engine process the run starts."""
    import json
    import subprocess

    store.register(build_tiny_model(tmp_path / "tiny"), "tiny-base")
    ds = tmp_path / "ds"
    subprocess.run([sys.executable, "-m", "contrastseg.cli", "dataset", "add", str(TS / CASES["small"][0]),
                    str(TS / CASES["small"][1]), "--id-map", "totalsegmentator", "--dataset", str(ds)], check=True,
                   capture_output=True)
    script = f"""
import json, sys
sys.path[:0] = {[str(REPO / 'ContrastSegTraining'), str(REPO / 'ContrastSeg')]!r}
from ContrastSegTrainingLib.runs import RunLogic
from contrastseg.runs.plan import RunRequest
logic = RunLogic(python=sys.executable)
req = RunRequest(dataset={str(ds)!r}, base="tiny-base", device="auto", steps=2, coarse_steps=1, batch=2, threads=1,
                 name="no-torch-here")
errors = logic.check(req).errors
on_gpu = logic.check(RunRequest(dataset={str(ds)!r}, base="tiny-base", device="cuda")).errors
monitor = logic.launch(req).wait(timeout=300)
print(json.dumps({{"errors": errors, "on_gpu": on_gpu, "status": monitor.status, "error": monitor.error,
                  "torch": "torch" in sys.modules}}))
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=400)
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["errors"] == [] and result["status"] == "done", result
    assert result["torch"] is False, "planning or launching a run imported torch into Slicer's process"
    if not torch_has_cuda():  # the GPU check still happens, in an engine process (`contrastseg run gpu-check`)
        assert any("no CUDA GPU is available" in e for e in result["on_gpu"]), result["on_gpu"]


def torch_has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def test_panel_decisions_live_in_the_logic(tmp_path, slicer_app):  # noqa: F811
    """The dataset folder field and Compare ask the Logic: an empty path keeps the current folder (it would
    be Slicer's working directory), and Compare without a CT or with an empty model list says what is missing."""
    logic = ContrastSegTrainingLogic(dataset=tmp_path / "ds")
    refused = logic.useDatasetFolder("   ")
    assert refused and str(tmp_path / "ds") in refused and logic.datasetFolder() == tmp_path / "ds"
    assert logic.useDatasetFolder(str(tmp_path / "other")) is None and logic.datasetFolder() == tmp_path / "other"
    volume, _, _ = load_case(slicer_app, tmp_path)
    assert "two models" in logic.compareProblem(volume, "", "default")
    assert "two models" in logic.compareProblem(None, "default", "default")
    assert logic.compareProblem(volume, "default", "mine") is None
