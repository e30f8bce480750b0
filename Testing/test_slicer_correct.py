"""Prompted correction in Slicer on real MRML (slicer-core) and real CT: points of a Markups node, through the
warm engine worker, update one segment; every other segment keeps its voxels; the edit is recorded and the
training module's export stores it."""

from __future__ import annotations

import sys
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
from ContrastSegLib.correct import CorrectionLogic, edits  # noqa: E402
from contrastseg.errors import ContrastSegError  # noqa: E402
from contrastseg.io import read_image, read_labels, write_labels  # noqa: E402
from contrastseg.organs import TOTALSEGMENTATOR_TO_BTCV  # noqa: E402
from realdata import TS, needs_data, needs_default_model  # noqa: E402
from slicer_app import slicer_app  # noqa: E402,F401

pytestmark = [needs_data, needs_default_model()]


@pytest.fixture
def logic(tmp_path, monkeypatch):
    monkeypatch.setenv("CONTRASTSEG_HOME", str(tmp_path / "home"))
    made = CorrectionLogic(python=sys.executable)
    yield made
    made.cleanup()


def test_markups_points_update_one_segment_and_record_the_edit(slicer_app, logic, tmp_path):  # noqa: F811
    ct = TS / "example_ct_sm.nii.gz"
    volume = slicer_app.load_volume(ct, "ct")
    labels = sitk.GetArrayFromImage(read_labels(TS / "example_seg.nii.gz", read_image(ct), TOTALSEGMENTATOR_TO_BTCV))
    kidney = np.argwhere(labels == 2)
    missed = np.where(labels == 2, 0, labels).astype(np.uint8)  # the model "missed" the right kidney
    initial = tmp_path / "missed.nii.gz"
    image = read_image(ct)
    lab = sitk.GetImageFromArray(missed)
    lab.CopyInformation(image)
    present = sorted(int(v) for v in np.unique(missed) if v)
    write_labels(lab, initial, present)
    segmentation = nodes.load_labels(initial, volume, present + [2], name="ct segmentation")
    before = nodes.labelmap_array(segmentation, volume)
    z, y, x = kidney.mean(0).round().astype(int)
    import vtk

    m = vtk.vtkMatrix4x4()
    volume.GetIJKToRASMatrix(m)
    ras = m.MultiplyPoint([float(x), float(y), float(z), 1.0])[:3]
    points = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "positive")
    points.AddControlPoint(vtk.vtkVector3d(*ras))
    with pytest.raises(ContrastSegError, match="place at least one point"):
        logic.refine(volume, segmentation, "right_kidney")
    change = logic.refine(volume, segmentation, "right_kidney", positive=points)
    after = nodes.labelmap_array(segmentation, volume)
    kept = (before != 0) & (before != 2)
    assert np.array_equal(after[kept], before[kept])  # every other organ exactly as it was
    found = after == 2
    assert found.sum() > 50 and found[z, y, x]  # the clicked kidney is there now
    assert change["organ"] == "right_kidney" and change["added"] > 0 and change["positive"] == 1
    assert edits(segmentation) == [change]  # recorded on the node

    from ContrastSegTraining import ContrastSegTrainingLogic  # the export stores the edits as provenance

    segmentation.SetAttribute("ContrastSeg.InitialLabels", str(initial))
    record = ContrastSegTrainingLogic(dataset=tmp_path / "ds").exportCase(volume, segmentation).record
    assert record["provenance"]["prompted_edits"] == [change]
    assert record["provenance"]["edited"]["right_kidney"]["added"] == int(found.sum())


def test_the_correction_uses_the_worker_segment_used_and_the_ct_it_opened(slicer_app, logic):  # noqa: F811
    from ContrastSegLib.parameter import COARSE_ONLY, SegmentSettings
    from ContrastSegLib.segmentation import SegmentationLogic

    volume = slicer_app.load_volume(TS / "example_ct_sm.nii.gz", "ct")
    seg_logic = SegmentationLogic(python=sys.executable)
    settings = SegmentSettings(device="CPU", threads=2, quality=COARSE_ONLY, show3D=False)
    running = seg_logic.start(volume, settings)
    points = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "positive")
    import vtk

    points.AddControlPoint(vtk.vtkVector3d(0.0, 0.0, 0.0))
    logic.device, logic.threads = "cpu", 2  # what the panel takes from the Segment settings
    with pytest.raises(ContrastSegError, match="still segmenting"):  # one request at a time, and no freeze
        logic.refine(volume, nodes.load_labels(TS / "example_seg.nii.gz", volume, [1], name="x"), "liver", positive=points)
    run = seg_logic.wait(running, timeout=300)
    assert run.state == "done", run.error
    worker = logic.worker()
    sent = worker.client.next_id
    m = vtk.vtkMatrix4x4()
    volume.GetIJKToRASMatrix(m)
    labels = nodes.labelmap_array(run.result_node, volume)
    z, y, x = np.argwhere(labels == 6).mean(0).round().astype(int)
    points.SetNthControlPointPosition(0, *m.MultiplyPoint([float(x), float(y), float(z), 1.0])[:3])
    change = logic.refine(volume, run.result_node, "liver", positive=points)
    assert worker.client.next_id == sent + 1  # only the refine: the CT was still open from Segment
    assert change["organ"] == "liver" and (nodes.labelmap_array(run.result_node, volume) == 6).sum() > 1000
