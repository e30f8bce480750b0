"""The organs read and written in their shared layer (ContrastSegLib.layers) on real MRML and real CT: the same
label map as Slicer's own export, a box written in place that every segment's own mask agrees with and that
tells the node, the general path wherever the layer cannot be used, and a click that gives the same organs
either way."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

slicer = pytest.importorskip("slicer", reason="slicer-core is not installed (pip install slicer-core)")

REPO = Path(__file__).resolve().parents[1]
if str(REPO / "ContrastSeg") not in sys.path:
    sys.path.insert(0, str(REPO / "ContrastSeg"))

import SimpleITK as sitk  # noqa: E402

from ContrastSegLib import layers, nodes  # noqa: E402
from ContrastSegLib.correct import CorrectionLogic  # noqa: E402
from contrastseg.io import read_image, read_labels  # noqa: E402
from contrastseg.organs import BY_ID, TOTALSEGMENTATOR_TO_BTCV  # noqa: E402
from realdata import TS, needs_data, needs_default_model  # noqa: E402
from slicer_app import slicer_app  # noqa: E402,F401

pytestmark = needs_data
CT = TS / "example_ct_sm.nii.gz"


def truth() -> np.ndarray:
    return sitk.GetArrayFromImage(read_labels(TS / "example_seg.nii.gz", read_image(CT), TOTALSEGMENTATOR_TO_BTCV))


def loaded(slicer_app, tmp_path, labels, name="seg"):  # noqa: F811
    """The CT and `labels` as a segmentation the way Segment imports one (one segment per organ)."""
    from contrastseg.io import write_labels

    volume = slicer_app.load_volume(CT, "ct")
    image = sitk.GetImageFromArray(labels.astype(np.uint8))
    image.CopyInformation(read_image(CT))
    present = sorted(int(v) for v in np.unique(labels) if v)
    write_labels(image, tmp_path / f"{name}.nii.gz", present)
    return volume, nodes.load_labels(tmp_path / f"{name}.nii.gz", volume, present, name=name)


def masks(segmentation, volume) -> dict:
    """Each segment's own voxels, as Slicer gives them (not through the layer)."""
    seg = segmentation.GetSegmentation()
    return {seg.GetNthSegmentID(i): slicer.util.arrayFromSegmentBinaryLabelmap(segmentation, seg.GetNthSegmentID(i), volume) > 0
            for i in range(seg.GetNumberOfSegments())}


def test_the_layer_reads_as_slicers_export_and_a_box_is_written_in_place(slicer_app, tmp_path):  # noqa: F811
    labels = truth()
    volume, segmentation = loaded(slicer_app, tmp_path, labels)
    layer = layers.organ_layer(segmentation, volume)
    assert layer is not None and set(layer.values) == {int(v) for v in np.unique(labels) if v}
    exported = nodes.exported_labels(segmentation, volume)
    assert exported.any() and np.array_equal(nodes.labelmap_array(segmentation, volume), exported)
    assert np.array_equal(exported, labels)

    # the right kidney's box: the kidney becomes spleen there, the rest of the box keeps its labels; the 3D
    # surfaces shown before are dropped (Slicer rebuilds them where shown), none stays stale
    segmentation.CreateClosedSurfaceRepresentation()
    told = []
    segmentation.AddObserver(slicer.vtkSegmentation.SourceRepresentationModified, lambda *a: told.append(a))
    box = tuple(slice(int(lo), int(hi) + 1) for lo, hi in zip(np.argwhere(labels == 2).min(0), np.argwhere(labels == 2).max(0)))
    new = labels[box].copy()
    new[new == 2] = 1
    assert layers.write_organs(layers.organ_layer(segmentation, volume), box, new)
    assert told, "the node was not told: the views would not update"
    assert segmentation.GetSegmentation().GetSegment("spleen").GetRepresentation("Closed surface") is None
    expected = labels.copy()
    expected[box] = new
    own = masks(segmentation, volume)
    assert not own["right_kidney"].any() and np.array_equal(own["spleen"], expected == 1)
    assert all(np.array_equal(m, expected == nodes.organ_id(segmentation.GetSegmentation().GetSegment(k)))
               for k, m in own.items())
    assert np.array_equal(nodes.exported_labels(segmentation, volume), expected)

    # a box reaching outside the CT, or naming an organ without a segment, writes nothing
    missing = min(set(BY_ID) - set(layers.organ_layer(segmentation, volume).values))
    assert not layers.write_organs(layers.organ_layer(segmentation, volume), (slice(0, 2), slice(0, 2), slice(-1, 1)),
                                   np.zeros((2, 2, 2), np.uint8))
    assert not layers.write_organs(layers.organ_layer(segmentation, volume), (slice(0, 1),) * 3, np.full((1, 1, 1), missing, np.uint8))
    assert np.array_equal(nodes.exported_labels(segmentation, volume), expected)


def test_where_the_layer_cannot_be_used_the_export_is(slicer_app, tmp_path):  # noqa: F811
    labels = truth()
    volume, segmentation = loaded(slicer_app, tmp_path, labels)
    seg = segmentation.GetSegmentation()
    # a segment the user added, not an organ, in the organs' layer
    extra = seg.AddEmptySegment("", "my note", [1, 1, 0])
    mask = np.zeros(labels.shape, np.uint8)
    mask[labels == 6] = 1  # over the liver: Slicer puts it in a layer of its own
    slicer.util.updateSegmentBinaryLabelmapFromArray(mask, segmentation, extra, volume)
    assert seg.GetNumberOfLayers() == 2 and layers.organ_layer(segmentation, volume) is not None
    assert np.array_equal(nodes.labelmap_array(segmentation, volume), labels)  # the note is no organ
    seg.RemoveSegment(extra)
    # a second segment of one organ
    liver_copy = seg.AddEmptySegment("", "liver", [0.5, 0.2, 0.1])
    assert layers.organ_layer(segmentation, volume) is None
    seg.RemoveSegment(liver_copy)
    assert layers.organ_layer(segmentation, volume) is not None
    # the segmentation under a transform the CT is not under
    transform = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLLinearTransformNode")
    import vtk

    matrix = vtk.vtkMatrix4x4()
    matrix.SetElement(0, 3, 10.0)
    transform.SetMatrixTransformToParent(matrix)
    segmentation.SetAndObserveTransformNodeID(transform.GetID())
    assert layers.organ_layer(segmentation, volume) is None
    moved = nodes.labelmap_array(segmentation, volume)
    assert moved.any() and not np.array_equal(moved, labels)  # Slicer's export resampled it 10 mm over


@needs_default_model()
def test_a_click_gives_the_same_organs_through_the_layer_and_through_slicers_import(slicer_app, tmp_path, monkeypatch):  # noqa: F811
    """The right kidney labelled spleen; one click on it. Once with the organs in their layer (written in place),
    once with one organ moved to a layer of its own and made to overlap nothing (Slicer's import per organ):
    the same organs, segment by segment, and one label per voxel."""
    monkeypatch.setenv("CONTRASTSEG_HOME", str(tmp_path / "home"))
    labels = np.where(truth() == 2, 1, truth())
    logic = CorrectionLogic(python=sys.executable)
    try:
        results = []
        for name, general in (("layer", False), ("import", True)):
            volume, segmentation = loaded(slicer_app, tmp_path, labels, name)
            if general:  # a second segment of the liver, empty: the layer path refuses and the import runs
                segmentation.GetSegmentation().AddEmptySegment("", "liver", [0.5, 0.2, 0.1])
                assert layers.organ_layer(segmentation, volume) is None
            kidney = np.argwhere(truth() == 2).mean(0).round().astype(int)
            import vtk

            m = vtk.vtkMatrix4x4()
            volume.GetIJKToRASMatrix(m)
            points = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "positive")
            points.AddControlPoint(*m.MultiplyPoint([float(v) for v in kidney[::-1]] + [1.0])[:3])
            change = logic.refine(volume, segmentation, "right_kidney", positive=points)
            assert change["added"] > 100 and change["taken"].get("spleen", 0) > 100
            own = masks(segmentation, volume)
            assert (sum(v.astype(int) for v in own.values()) <= 1).all()  # one label per voxel
            results.append({k: v for k, v in own.items() if k in {o.key for o in BY_ID.values()}})
        assert results[0].keys() == results[1].keys()
        for key in results[0]:
            assert np.array_equal(results[0][key], results[1][key]), key
    finally:
        logic.cleanup()


@pytest.mark.parametrize("path", ["in place", "import"])
def test_a_written_box_keeps_the_3d_surfaces_of_the_organs_it_leaves_unchanged(slicer_app, tmp_path, path):  # noqa: F811
    """Slicer drops every organ's surface when a box is written (either way); those of the organs the box does
    not change are put back before the views hear of it, so only the changed organs' surfaces are rebuilt."""
    labels = truth()
    volume, segmentation = loaded(slicer_app, tmp_path, labels)
    if path == "import":  # a second, empty segment of the liver: the layer path refuses, Slicer's import runs
        segmentation.GetSegmentation().AddEmptySegment("", "liver", [0.5, 0.2, 0.1])
    segmentation.CreateClosedSurfaceRepresentation()
    seg = segmentation.GetSegmentation()
    before = {seg.GetNthSegmentID(i): seg.GetNthSegment(i).GetRepresentation("Closed surface")
              for i in range(seg.GetNumberOfSegments())}
    kidney = np.argwhere(labels == 2)
    box = tuple(slice(int(lo), int(hi) + 1) for lo, hi in zip(kidney.min(0), kidney.max(0)))
    new = labels[box].copy()
    new[new == 2] = 1  # the right kidney becomes spleen
    changed = {BY_ID[o].key for o in np.unique(np.concatenate([labels[box][labels[box] != new], new[labels[box] != new]]))}
    assert changed == {"right_kidney", "spleen"}
    assert layers.write_box(segmentation, volume, box, new) == (path == "in place")
    for key, surface in before.items():
        now = seg.GetSegment(key).GetRepresentation("Closed surface")
        if key in changed:
            assert now is None or now is not surface, key  # dropped, to be built anew from the new voxels
        elif surface is not None:
            assert now is surface, key
    expected = labels.copy()
    expected[box] = new
    assert np.array_equal(nodes.exported_labels(segmentation, volume), expected)
