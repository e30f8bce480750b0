"""Prompted correction in Slicer on real MRML (slicer-core) and real CT: points of a Markups node, through the
warm engine worker, update one segment; every other segment keeps its voxels but those the clicked organ took
(recorded); the edit is recorded and the training module's export stores it."""

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
from ContrastSegLib.correct import CorrectionLogic, change_message, edits  # noqa: E402
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


def missed_kidney(slicer_app, tmp_path):  # noqa: F811
    """The small TS CT with its labels as the segmentation, the right kidney "missed" (removed); returns
    (volume, segmentation node, its initial label file, the true labels)."""
    ct = TS / "example_ct_sm.nii.gz"
    volume = slicer_app.load_volume(ct, "ct")
    labels = sitk.GetArrayFromImage(read_labels(TS / "example_seg.nii.gz", read_image(ct), TOTALSEGMENTATOR_TO_BTCV))
    missed = np.where(labels == 2, 0, labels).astype(np.uint8)
    initial = tmp_path / "missed.nii.gz"
    lab = sitk.GetImageFromArray(missed)
    lab.CopyInformation(read_image(ct))
    present = sorted(int(v) for v in np.unique(missed) if v)
    write_labels(lab, initial, present)
    return volume, nodes.load_labels(initial, volume, present + [2], name="ct segmentation"), initial, labels


def dice(a, b) -> float:
    return 2 * float((a & b).sum()) / max(1, int(a.sum()) + int(b.sum()))


def test_markups_points_update_one_segment_and_record_the_edit(slicer_app, logic, tmp_path):  # noqa: F811
    volume, segmentation, initial, labels = missed_kidney(slicer_app, tmp_path)
    kidney = np.argwhere(labels == 2)
    before = nodes.labelmap_array(segmentation, volume)
    z, y, x = kidney.mean(0).round().astype(int)
    import vtk

    m = vtk.vtkMatrix4x4()
    volume.GetIJKToRASMatrix(m)
    ras = m.MultiplyPoint([float(x), float(y), float(z), 1.0])[:3]
    points = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "positive")
    points.AddControlPoint(vtk.vtkVector3d(*ras))
    with pytest.raises(ContrastSegError, match="place at least one point, a box or a stroke"):
        logic.refine(volume, segmentation, "right_kidney")
    change = logic.refine(volume, segmentation, "right_kidney", positive=points)
    after = nodes.labelmap_array(segmentation, volume)
    kept = (before != 0) & (before != 2)
    taken = kept & (after != before)  # another organ's voxels only become the clicked kidney, as recorded
    assert (after[taken] == 2).all() and sum(change["taken"].values()) == int(taken.sum())
    found = after == 2
    assert found.sum() > 50 and found[z, y, x]  # the clicked kidney is there now
    assert change["organ"] == "right_kidney" and change["added"] > 0 and change["positive"] == 1
    assert edits(segmentation) == [change]  # recorded on the node
    assert change_message("Right kidney", change).startswith(f"Right kidney: +{change['added']} / -0 voxels")
    # a point in the middle of the kidney's segment now: nothing new to add there, and the status says why
    from scipy import ndimage

    depth = ndimage.distance_transform_edt(found)
    iz, iy, ix = np.unravel_index(depth.argmax(), depth.shape)
    points.SetNthControlPointPosition(0, *m.MultiplyPoint([float(ix), float(iy), float(iz), 1.0])[:3])
    again = logic.refine(volume, segmentation, "right_kidney", positive=points)
    assert again["added"] == again["removed"] == 0 and np.array_equal(nodes.labelmap_array(segmentation, volume), after)
    assert "nothing changed" in change_message("Right kidney", again)
    assert edits(segmentation) == [change]  # and it is no edit

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
    with pytest.raises(ContrastSegError, match="still busy"):  # one request at a time, and no freeze
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
    # the worker dies while idle (out of memory, a crash): the next click starts a new one and opens the CT again
    import os
    import signal

    old = worker.client.proc
    os.kill(old.pid, signal.SIGKILL)
    old.wait(timeout=30)
    points.SetNthControlPointPosition(0, *m.MultiplyPoint([float(x), float(y), float(z), 1.0])[:3])
    again = logic.refine(volume, run.result_node, "liver", positive=points)
    assert again["organ"] == "liver" and worker.client.proc.pid != old.pid


def test_a_box_or_a_rough_stroke_finds_the_missed_organ(slicer_app, logic, tmp_path):  # noqa: F811
    import vtk

    from ContrastSegLib.correct import HINT_SEGMENT, hint_segment

    volume, segmentation, _, labels = missed_kidney(slicer_app, tmp_path)
    before = nodes.labelmap_array(segmentation, volume)
    kept = (before != 0) & (before != 2)
    truth = labels == 2
    # a box around the kidney, as the ROI place widget leaves it (world RAS)
    m = vtk.vtkMatrix4x4()
    volume.GetIJKToRASMatrix(m)
    lo, hi = np.argwhere(truth).min(0), np.argwhere(truth).max(0)
    corners = np.array([m.MultiplyPoint([float(i), float(j), float(k), 1.0])[:3]
                        for k in (lo[0], hi[0]) for j in (lo[1], hi[1]) for i in (lo[2], hi[2])])
    roi = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLMarkupsROINode", "box")
    roi.SetCenter(*((corners.min(0) + corners.max(0)) / 2))
    roi.SetSize(*(corners.max(0) - corners.min(0)))
    change = logic.refine(volume, segmentation, "right_kidney", box=roi)
    after = nodes.labelmap_array(segmentation, volume)
    taken = kept & (after != before)  # other organs lose only what became the kidney, as recorded
    assert (after[taken] == 2).all() and sum(change["taken"].values()) == int(taken.sum()) and change["box"] is True
    boxed = dice(after == 2, truth)
    # a rough stroke instead: a few voxels of the kidney's middle on three slices, painted into the hint segment
    slicer.util.updateSegmentBinaryLabelmapFromArray(np.zeros_like(before), segmentation, "right_kidney", volume)
    stroke = np.zeros_like(before)
    zs = np.unique(np.argwhere(truth)[:, 0])
    for z in zs[len(zs) // 2 - 1: len(zs) // 2 + 2]:
        y, x = np.argwhere(truth[z]).mean(0).round().astype(int)
        stroke[z, y - 1: y + 2, x - 3: x + 4] = 1
    stroke &= truth
    hint = hint_segment(segmentation, create=True)
    slicer.util.updateSegmentBinaryLabelmapFromArray(stroke, segmentation, hint, volume)
    reset = nodes.labelmap_array(segmentation, volume)  # what the box took from other organs is background now
    change = logic.refine(volume, segmentation, "right_kidney")
    after = nodes.labelmap_array(segmentation, volume)
    taken = (reset != 0) & (reset != 2) & (after != reset)
    assert (after[taken] == 2).all() and change["stroke"] == int(stroke.sum()) > 0
    assert hint_segment(segmentation) is None, f"the '{HINT_SEGMENT}' segment should go once used"
    stroked = dice(after == 2, truth)
    print(f"\nright kidney from nothing: box {boxed:.3f}, rough stroke ({int(stroke.sum())} voxels) {stroked:.3f}")
    # measured 0.826 and 0.912 (2026-12-07, default model v0.3, the stroke's attention within a click's radius of it);
    # v0.2 0.835 and 0.548, and v0.3 with the stroke dilated by 2 pixels only: the stroke 0.087
    assert boxed > 0.75 and stroked > 0.75
def test_a_stroke_is_painted_without_overwriting_the_organs_under_it(slicer_app):  # noqa: F811
    from ContrastSegLib.correct import paint_hint_mode

    editor = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentEditorNode")
    editor.SetOverwriteMode(editor.OverwriteAllSegments)  # the Segment Editor's default
    previous = paint_hint_mode(editor)
    assert editor.GetOverwriteMode() == editor.OverwriteNone and previous == editor.OverwriteAllSegments
