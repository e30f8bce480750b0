"""Every hint applies at once (issue 23) on real MRML (slicer-core) and real CT, through the real worker:
a placed point updates the organ of the selected segment, and the Segment Editor's own undo state
(vtkSegmentationHistory, what its Ctrl+Z restores) takes the interaction back exactly, its edit record and
its hint point included. A click for one organ takes voxels from another only where it points, and no voxel is
ever in two segments. The CT and model are the segmentation's own, a CT under a transform gets its hints
where they were placed, and a correction refuses, with a sentence, a segmentation whose CT is gone."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import pytest

slicer = pytest.importorskip("slicer", reason="slicer-core is not installed (pip install slicer-core)")

REPO = Path(__file__).resolve().parents[1]
for _sub in ("ContrastSegTraining", "ContrastSeg"):
    if str(REPO / _sub) not in sys.path:
        sys.path.insert(0, str(REPO / _sub))

import SimpleITK as sitk  # noqa: E402
import vtk  # noqa: E402

from ContrastSegLib import nodes  # noqa: E402
from ContrastSegLib.correct import CorrectionLogic, edits, source_of  # noqa: E402
from ContrastSegLib.interaction import InteractionLogic, model_organs, organ_of_segment  # noqa: E402
from contrastseg.errors import ContrastSegError  # noqa: E402
from contrastseg.io import read_image, read_labels, write_labels  # noqa: E402
from contrastseg.organs import TOTALSEGMENTATOR_TO_BTCV  # noqa: E402
from realdata import TS, needs_data, needs_default_model  # noqa: E402
from slicer_app import slicer_app  # noqa: E402,F401

pytestmark = [needs_data, needs_default_model()]
CT = TS / "example_ct_sm.nii.gz"
SPLEEN, RIGHT_KIDNEY = 1, 2


@pytest.fixture
def correction(tmp_path, monkeypatch):
    monkeypatch.setenv("CONTRASTSEG_HOME", str(tmp_path / "home"))
    made = CorrectionLogic(python=sys.executable, device="cpu", threads=2)
    yield made
    made.cleanup()


def segmentation_of(slicer_app, tmp_path, relabel, name="ct segmentation"):  # noqa: F811
    """The small TS CT and its labels (BTCV ids) changed by `relabel(labels)`, loaded as Segment would have made
    them (source volume and model recorded); returns (volume, segmentation node, the true labels)."""
    volume = slicer_app.load_volume(CT, "ct")
    truth = sitk.GetArrayFromImage(read_labels(TS / "example_seg.nii.gz", read_image(CT), TOTALSEGMENTATOR_TO_BTCV))
    labels = relabel(truth.copy()).astype(np.uint8)
    image = sitk.GetImageFromArray(labels)
    image.CopyInformation(read_image(CT))
    present = sorted(int(v) for v in np.unique(truth) if v)
    write_labels(image, tmp_path / "start.nii.gz", present)
    node = nodes.load_labels(tmp_path / "start.nii.gz", volume, present, name=name)
    node.SetAttribute("ContrastSeg.SourceVolume", volume.GetID())
    node.SetAttribute("ContrastSeg.Model", "default")
    return volume, node, truth


def world(volume, zyx) -> list[float]:
    """The RAS position of a voxel (z, y, x) of the CT (its own space: world when it has no transform)."""
    m = vtk.vtkMatrix4x4()
    volume.GetIJKToRASMatrix(m)
    return list(m.MultiplyPoint([float(zyx[2]), float(zyx[1]), float(zyx[0]), 1.0])[:3])


def hint_nodes():
    scene = slicer.mrmlScene
    return (scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "inside"),
            scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "outside"),
            scene.AddNewNodeByClass("vtkMRMLMarkupsROINode", "box"))


def run(session: InteractionLogic, timeout: float = 300.0) -> None:
    """What the panel's timer does: tick until the interaction is applied."""
    end = time.monotonic() + timeout
    while session.tick():
        assert time.monotonic() < end, "the update did not finish"
        time.sleep(0.05)


def segment_masks(segmentation, volume) -> dict[str, np.ndarray]:
    seg = segmentation.GetSegmentation()
    return {seg.GetNthSegmentID(i): slicer.util.arrayFromSegmentBinaryLabelmap(segmentation, seg.GetNthSegmentID(i), volume) > 0
            for i in range(seg.GetNumberOfSegments())}


def test_a_placed_point_updates_the_selected_organ_at_once_and_undo_restores_it_exactly(slicer_app, correction, tmp_path):  # noqa: F811
    volume, segmentation, truth = segmentation_of(slicer_app, tmp_path, lambda t: np.where(t == RIGHT_KIDNEY, 0, t))
    history = slicer.vtkSegmentationHistory()  # the Segment Editor's undo (its saveStateForUndo / undo)
    history.SetSegmentation(segmentation.GetSegmentation())
    correction.save_undo = history.SaveState
    inside, outside, box = hint_nodes()
    pending = []
    session = InteractionLogic(correction, on_pending=lambda: pending.append(1))
    session.bind(segmentation, inside, outside, box)
    assert organ_of_segment(segmentation, "right_kidney") == "right_kidney"  # the editor's selected segment
    assert "right_kidney" in model_organs(segmentation) and "spleen" in model_organs(segmentation)
    session.set_organ(organ_of_segment(segmentation, "right_kidney"))
    before = nodes.labelmap_array(segmentation, volume)
    tags_before = {k: nodes.segment_tag(segmentation.GetSegmentation().GetSegment(k), "ContrastSeg.Edits")
                   for k in segment_masks(segmentation, volume)}

    kidney = np.argwhere(truth == RIGHT_KIDNEY).mean(0).round().astype(int)
    inside.AddControlPoint(world(volume, kidney))  # placing a point: its position is defined, nothing else
    assert pending and session.busy  # the update starts from the placement alone: no button
    run(session)
    after = nodes.labelmap_array(segmentation, volume)
    assert after[tuple(kidney)] == RIGHT_KIDNEY and (after == RIGHT_KIDNEY).sum() > 500
    (record,) = edits(segmentation)
    others = (before != 0) & (before != RIGHT_KIDNEY)
    taken = others & (after != before)  # another organ's voxels only ever become the kidney, as recorded
    assert (after[taken] == RIGHT_KIDNEY).all() and sum(record["taken"].values()) == int(taken.sum())
    assert record["organ"] == "right_kidney" and record["positive"] == 1 and record["added"] > 500
    assert "right kidney: +" in session.status_text().lower()

    history.RestorePreviousState()  # Ctrl+Z in the Segment Editor
    assert np.array_equal(nodes.labelmap_array(segmentation, volume), before)
    assert edits(segmentation) == []  # the record went with the voxels
    assert {k: nodes.segment_tag(segmentation.GetSegmentation().GetSegment(k), "ContrastSeg.Edits")
            for k in segment_masks(segmentation, volume)} == tags_before
    assert inside.GetNumberOfControlPoints() == 0  # and so did the point, so the next update does not bring it back


def test_a_click_takes_the_kidney_back_from_the_spleen_one_label_per_voxel(slicer_app, correction, tmp_path):  # noqa: F811
    """The right kidney labelled spleen (a second spleen component): one positive click for the right kidney
    takes it back. The spleen loses exactly the voxels the kidney took, the record says how many, the other
    organs keep every voxel, and no voxel is in two segments."""
    volume, segmentation, truth = segmentation_of(slicer_app, tmp_path, lambda t: np.where(t == RIGHT_KIDNEY, SPLEEN, t))
    inside, outside, box = hint_nodes()
    session = InteractionLogic(correction)
    session.bind(segmentation, inside, outside, box)
    session.set_organ("right_kidney")
    before = nodes.labelmap_array(segmentation, volume)
    kidney = np.argwhere(truth == RIGHT_KIDNEY).mean(0).round().astype(int)
    inside.AddControlPoint(world(volume, kidney))
    run(session)
    masks = segment_masks(segmentation, volume)
    assert (sum(m.astype(int) for m in masks.values()) <= 1).all()  # one label per voxel
    after = nodes.labelmap_array(segmentation, volume)
    (record,) = edits(segmentation)
    for key, organ in (("spleen", SPLEEN), ("liver", 6), ("stomach", 7), ("inferior_vena_cava", 9)):
        lost = (before == organ) & (after != organ)
        assert (after[lost] == RIGHT_KIDNEY).all()  # an organ loses voxels only to the clicked one,
        assert record["taken"].get(key, 0) == int(lost.sum())  # as many as the record says
    took = (before == SPLEEN) & (after == RIGHT_KIDNEY)
    kidney_found = (after == RIGHT_KIDNEY) & (truth == RIGHT_KIDNEY)
    print(f"\nthe kidney took {int(took.sum())} voxels from the spleen; Dice "
          f"{2 * kidney_found.sum() / ((after == RIGHT_KIDNEY).sum() + (truth == RIGHT_KIDNEY).sum()):.3f}")
    assert took.sum() > 0.5 * (truth == RIGHT_KIDNEY).sum()
    assert (after[truth == SPLEEN] == SPLEEN).all()  # the true spleen, away from the click, keeps every voxel

    # the dataset entry the training module exports carries what the click took from which organ
    from ContrastSegTraining import ContrastSegTrainingLogic

    segmentation.SetAttribute("ContrastSeg.InitialLabels", str(tmp_path / "start.nii.gz"))
    provenance = ContrastSegTrainingLogic(dataset=tmp_path / "ds").exportCase(volume, segmentation).record["provenance"]
    assert provenance["prompted_edits"] == [record]
    assert provenance["relabelled"]["right_kidney"] == {k: v for k, v in record["taken"].items() if v}


def test_the_correction_uses_the_segmentations_own_ct_and_refuses_when_it_is_gone(slicer_app, correction, tmp_path):  # noqa: F811
    volume, segmentation, _ = segmentation_of(slicer_app, tmp_path, lambda t: t)
    assert source_of(segmentation) == (volume, None)
    other = slicer_app.load_volume(CT, "another ct")
    inside, _, _ = hint_nodes()
    inside.AddControlPoint([0.0, 0.0, 0.0])
    with pytest.raises(ContrastSegError, match="was made from 'ct', not 'another ct'"):
        correction.start(segmentation, "liver", positive=inside, volume_node=other)
    slicer.mrmlScene.RemoveNode(volume)
    with pytest.raises(ContrastSegError, match="no longer in the scene"):
        correction.start(segmentation, "liver", positive=inside)


def test_hints_on_a_transformed_ct_land_where_they_were_placed(slicer_app, correction, tmp_path):  # noqa: F811
    """The CT (and its segmentation) under a 40 mm translation: a point placed in world coordinates on the
    kidney brings the kidney, not whatever lies 40 mm away in the CT's own space."""
    volume, segmentation, truth = segmentation_of(slicer_app, tmp_path, lambda t: np.where(t == RIGHT_KIDNEY, 0, t))
    moved = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "moved")
    shift = vtk.vtkMatrix4x4()
    shift.SetElement(0, 3, 40.0)
    moved.SetMatrixTransformToParent(shift)
    volume.SetAndObserveTransformNodeID(moved.GetID())
    segmentation.SetAndObserveTransformNodeID(moved.GetID())
    kidney = np.argwhere(truth == RIGHT_KIDNEY).mean(0).round().astype(int)
    local = world(volume, kidney)
    inside, _, _ = hint_nodes()
    inside.AddControlPoint([local[0] + 40.0, local[1], local[2]])  # where the kidney shows in the views
    correction.refine(None, segmentation, "right_kidney", positive=inside)
    assert nodes.labelmap_array(segmentation, volume)[tuple(kidney)] == RIGHT_KIDNEY
