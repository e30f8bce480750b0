"""The ContrastSeg module's SegmentationLogic on real MRML (slicer-core) with the real engine: the session's
warm worker segments a real CT into named organ segments on the CT's grid, a cancel leaves no half-loaded node
and keeps the worker, a dead worker fails the run with why and is restarted, an engine error reaches the panel."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from realdata import TS, needs_data, needs_default_model
from slicer_app import slicer_app  # noqa: F401 - the fixture

REPO = Path(__file__).resolve().parents[1]
MODULE_DIR = REPO / "ContrastSeg"
if str(MODULE_DIR) not in sys.path:
    sys.path.insert(0, str(MODULE_DIR))

from ContrastSegLib.parameter import COARSE_ONLY, SegmentSettings  # noqa: E402
from contrastseg.organs import ORGANS  # noqa: E402

CT_SM = TS / "example_ct_sm.nii.gz"
THREADS = 2


@pytest.fixture
def engine_home(tmp_path, monkeypatch):
    """An empty model store, so 'the default model' is the bundled one whatever ~/.contrastseg holds."""
    monkeypatch.setenv("CONTRASTSEG_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def ras_to_lps_geometry(volume):
    """The volume node's IJK-to-RAS matrix as ITK's (origin, direction x spacing) in LPS."""
    import vtk

    m = vtk.vtkMatrix4x4()
    volume.GetIJKToRASMatrix(m)
    ras = np.array([[m.GetElement(r, c) for c in range(4)] for r in range(4)])
    lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ ras
    return lps[:3, 3], lps[:3, :3]


def itk_geometry(image):
    direction = np.array(image.GetDirection()).reshape(3, 3)
    return np.array(image.GetOrigin()), direction * np.array(image.GetSpacing())[None, :]


@needs_data
@needs_default_model()
def test_real_engine_through_the_worker_gives_named_organs_on_the_ct(slicer_app, engine_home, tmp_path):
    from ContrastSegLib import nodes
    from ContrastSegLib.segmentation import SegmentationLogic

    volume = slicer_app.load_volume(CT_SM, "example_ct_sm")
    seen = []
    logic = SegmentationLogic()  # the module's runner: the shared worker, `python -m contrastseg.cli serve` here
    start = time.monotonic()
    run = logic.start(volume, SegmentSettings(device="CPU", threads=THREADS), work_dir=tmp_path / "run",
                      on_update=lambda r: seen.append((r.stage, r.fraction, r.eta, r.coarse_node is not None, r.result_node is not None)))
    logic.wait(run, timeout=900, interval=0.05)
    wall = time.monotonic() - start
    assert run.state == "done", run.error
    print(f"\nreal segmentation of {CT_SM.name} through the worker: {wall:.1f} s wall; engine timings {run.timings}")

    # progress: stages in order, fractions never going back, an ETA, and the coarse map in the scene first
    stages = [s[0] for s in seen if s[0]]
    assert stages.index("coarse") < stages.index("refine") < stages.index("write")
    fractions = [s[1] for s in seen]
    assert fractions == sorted(fractions) and any(s[2] is not None for s in seen)
    assert any(s[3] and not s[4] for s in seen), "the coarse result never showed before the refined one"
    assert run.result_node is run.coarse_node  # refined replaced coarse in place (default)
    assert run.result_node.GetAttribute("ContrastSeg.Stage") == "refined"

    # one segment per organ of the model, named, coloured, with SNOMED CT terminology and the BTCV label value
    node = run.result_node
    segmentation = node.GetSegmentation()
    assert node.GetNodeReference(node.GetReferenceImageGeometryReferenceRole()) is volume
    from contrastseg.paths import default_model

    covered = json.loads((default_model() / "card.json").read_text())["organs"]
    model_organs = [o for o in ORGANS if o.id in covered]
    assert run.organs == sorted(covered)
    assert list(segmentation.GetSegmentIDs()) == [o.key for o in model_organs]
    for organ in model_organs:
        segment = segmentation.GetSegment(organ.key)
        assert segment.GetName() == organ.name
        assert np.allclose(segment.GetColor(), np.array(organ.color) / 255)
        assert segment.GetLabelValue() == organ.id
        assert nodes.segment_tag(segment, "TerminologyEntry") == organ.terminology_entry()
        assert nodes.organ_id(segment) == organ.id
    assert segmentation.ContainsRepresentation("Closed surface")  # shown in 3D

    # geometry: the engine's NIfTI is on the CT grid, the CT node's IJK-to-RAS is that grid in RAS, and the
    # segmentation exported on the CT node equals the engine's output voxel for voxel
    engine = sitk.ReadImage(str(run.output_path))
    origin, axes = ras_to_lps_geometry(volume)
    e_origin, e_axes = itk_geometry(engine)
    assert np.allclose(origin, e_origin, atol=1e-3) and np.allclose(axes, e_axes, atol=1e-5)
    expected = sitk.GetArrayFromImage(engine)
    labels = nodes.labelmap_array(node, volume)
    assert labels.shape == expected.shape and np.array_equal(labels, expected)
    assert set(np.unique(expected)) - {0}, "the default model found no organ in the CT"
    table = json.loads(run.output_path.with_name("segmentation.json").read_text())
    assert {e["id"]: e["name"] for e in table["labels"]} == {o.id: o.name for o in model_organs}


@needs_data
@needs_default_model()
def test_real_cancel_mid_run_stops_the_request_and_leaves_no_half_loaded_node(slicer_app, engine_home):
    from ContrastSegLib.segmentation import SegmentationLogic

    volume = slicer_app.load_volume(CT_SM, "example_ct_sm")
    before = [n.GetID() for n in slicer_app.nodes()]
    logic = SegmentationLogic()
    run = logic.start(volume, SegmentSettings(device="CPU", threads=THREADS))
    deadline = time.monotonic() + 120
    while logic.poll(run) and run.stage in ("", "read") and time.monotonic() < deadline:
        time.sleep(0.02)  # cancel as soon as the worker reports work, before the coarse map exists
    assert run.stage not in ("", "read"), f"the worker never reported progress: {run.error}"
    logic.cancel(run)
    assert run.state == "cancelled" and run.coarse_node is None and run.result_node is None
    assert [n.GetID() for n in slicer_app.nodes()] == before
    assert not run.work_dir.exists()
    # the worker goes on serving, with the CT still open: the next run neither restarts it nor opens the CT again
    time.sleep(1.0)  # what the worker still sent for the cancelled request is dropped, and no file appears
    assert not run.work_dir.exists()
    again = logic.wait(logic.start(volume, SegmentSettings(device="CPU", threads=THREADS, quality=COARSE_ONLY)), timeout=300)
    assert again.state == "done", again.error
    assert again.process.pid == run.process.pid and again.process.open_id is None
    assert {e.data.get("stage") for e in again.process.events if e.event == "progress"} >= {"preprocess", "coarse"}


@needs_data
@needs_default_model()
def test_a_worker_that_dies_fails_the_run_with_why_and_the_next_run_restarts_it(slicer_app, engine_home):
    import signal

    from ContrastSegLib.segmentation import SegmentationLogic

    volume = slicer_app.load_volume(CT_SM, "example_ct_sm")
    logic = SegmentationLogic()
    run = logic.start(volume, SegmentSettings(device="CPU", threads=THREADS))
    deadline = time.monotonic() + 120
    while logic.poll(run) and run.stage in ("", "read") and time.monotonic() < deadline:
        time.sleep(0.02)
    os.kill(run.process.pid, signal.SIGKILL)  # a crash in torch
    logic.wait(run, timeout=60)
    assert run.state == "failed" and run.result_node is None
    assert "worker stopped" in run.error and "exit code -9" in run.error and "starts again" in run.error, run.error
    again = logic.wait(logic.start(volume, SegmentSettings(device="CPU", threads=THREADS, quality=COARSE_ONLY)), timeout=300)
    assert again.state == "done", again.error
    assert again.process.pid != run.process.pid and again.result_node is not None


@needs_data
@needs_default_model()
def test_real_engine_error_reaches_the_panel_as_its_sentence(slicer_app, engine_home, tmp_path):
    from ContrastSegLib.segmentation import SegmentationLogic

    ct = sitk.ReadImage(str(CT_SM))
    scaled = sitk.Cast(sitk.RescaleIntensity(ct, 0.0, 1.0), sitk.sitkFloat32)  # not Hounsfield units
    sitk.WriteImage(scaled, str(tmp_path / "scaled.nii.gz"))
    volume = slicer_app.load_volume(tmp_path / "scaled.nii.gz", "scaled")
    before = len(slicer_app.nodes())
    logic = SegmentationLogic()
    run = logic.wait(logic.start(volume, SegmentSettings(device="CPU", threads=THREADS)), timeout=300)
    assert run.state == "failed" and run.process.returncode == 2
    assert "does not look like CT" in run.error and "Traceback" not in run.error
    assert len(slicer_app.nodes()) == before
