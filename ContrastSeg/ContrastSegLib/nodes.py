"""Converting between MRML nodes and the engine's files: volume out, label map in, organs as named segments.

Only storage nodes and module logics are used (no `slicer.util.loadVolume` / `saveNode`, no Qt), so this
runs the same inside Slicer and under slicer-core in CI (docs/SLICER-TESTING.md). Segment names, colours
and SNOMED CT terminology come from the engine's organ table (`contrastseg.organs`), never from Slicer's
terminology files, so Slicer, the engine and the tests agree on them.

Each organ becomes one segment whose ID is the organ key, whose label value is the BTCV id, and which
carries the tag `ContrastSegOrganId`: the corrected segmentation can be exported back to BTCV ids even if
the user renames segments (`labelmap_array`).
"""

from __future__ import annotations

from pathlib import Path

import slicer

from contrastseg.organs import BY_ID, ORGANS

ORGAN_TAG = "ContrastSegOrganId"


def volumes_logic():
    return slicer.modules.volumes.logic()


def segmentations_logic():
    return slicer.modules.segmentations.logic()


def write_volume(volume_node, path: Path) -> Path:
    """Write a scalar volume through a fresh storage node (the node's own storage stays untouched).

    NRRD keeps the exact IJK-to-RAS geometry, and without compression the write costs well under a second.
    """
    if volume_node is None or volume_node.GetImageData() is None:
        raise ValueError("the selected volume holds no image data")
    if volume_node.GetImageData().GetNumberOfScalarComponents() != 1:
        raise ValueError(f"'{volume_node.GetName()}' is not a scalar (single-component) volume; select a CT")
    storage = volume_node.CreateDefaultStorageNode()
    storage.SetFileName(str(path))
    if hasattr(storage, "SetUseCompression"):
        storage.SetUseCompression(0)
    if not storage.WriteData(volume_node) or not Path(path).exists():
        raise OSError(f"could not write '{volume_node.GetName()}' to {path}")
    return Path(path)


def segment_tag(segment, name: str) -> str | None:
    """A segment's tag value, or None (vtkSegment.GetTag returns it through an output argument)."""
    import vtk

    value = vtk.reference("")
    return str(value) if segment.GetTag(name, value) else None


def organ_id(segment) -> int | None:
    """The BTCV id of a segment: its ContrastSeg tag, else its SNOMED CT terminology, else its name."""
    tag = segment_tag(segment, ORGAN_TAG)
    if tag is not None and tag.isdigit() and int(tag) in BY_ID:
        return int(tag)
    entry = segment_tag(segment, segment.GetTerminologyEntryTagName())
    if entry:
        for organ in ORGANS:
            if entry.split("~")[2:4] == organ.terminology_entry().split("~")[2:4]:
                return organ.id
    name = segment.GetName().strip().lower()
    return next((o.id for o in ORGANS if name in (o.name, o.key)), None)


def _organ_segment(organ, representation_name: str, labelmap):
    seg = slicer.vtkSegment()
    seg.SetName(organ.name)
    seg.SetColor(*(c / 255.0 for c in organ.color))
    seg.SetLabelValue(organ.id)
    seg.SetTag(seg.GetTerminologyEntryTagName(), organ.terminology_entry())
    seg.SetTag(ORGAN_TAG, str(organ.id))
    seg.AddRepresentation(representation_name, labelmap)
    return seg


def read_labelmap(path: Path):
    """Read a label map file into a vtkOrientedImageData (geometry included), leaving no node behind."""
    scene = slicer.mrmlScene
    node = volumes_logic().AddArchetypeVolume(str(path), "ContrastSeg temporary labels", 1)
    if node is None:
        raise OSError(f"could not read the label map {path}")
    try:
        image = slicer.vtkSlicerSegmentationsModuleLogic.CreateOrientedImageDataFromVolumeNode(node)
        # a new reference the wrapper does not own (Slicer's own Python releases it): without this, one
        # CT-sized image leaked per loaded result
        image.UnRegister(None)
        return image
    finally:
        for n in (node.GetDisplayNode(), node.GetStorageNode(), node):
            if n is not None:
                scene.RemoveNode(n)


def load_labels(path: Path, volume_node, organs: list[int], segmentation_node=None, name: str | None = None):
    """Show a BTCV label map as one segment per organ in `organs`, on `volume_node`'s geometry.

    With `segmentation_node`, its segments are replaced in one modification (node, ID and editor selection
    survive: the coarse result becomes the refined one in place). Without it, a new node is created; if
    anything fails, that node is removed again, so the scene never holds a half-loaded segmentation.
    All segments share one labelmap layer whose voxel values are the BTCV ids: organs absent from the map
    still get their (empty) segment, ready to be painted in the Segment Editor.
    """
    labelmap = read_labelmap(path)
    scene = slicer.mrmlScene
    created = segmentation_node is None
    if created:
        segmentation_node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", name or "ContrastSeg segmentation")
    try:
        if segmentation_node.GetDisplayNode() is None:
            segmentation_node.CreateDefaultDisplayNodes()
        segmentation_node.SetReferenceImageGeometryParameterFromVolumeNode(volume_node)
        if volume_node.GetParentTransformNode() is not None:  # the labels are in the volume's local space
            segmentation_node.SetAndObserveTransformNodeID(volume_node.GetTransformNodeID())
        segmentation = segmentation_node.GetSegmentation()
        representation = slicer.vtkSegmentationConverter.GetBinaryLabelmapRepresentationName()
        was_modifying = segmentation_node.StartModify()
        try:
            segmentation.RemoveAllSegments()
            segmentation.SetSourceRepresentationName(representation)
            for organ_id_ in sorted(organs):
                segmentation.AddSegment(_organ_segment(BY_ID[organ_id_], representation, labelmap), BY_ID[organ_id_].key)
        finally:
            segmentation_node.EndModify(was_modifying)
        if name:
            segmentation_node.SetName(name)
        _place_beside(segmentation_node, volume_node)
    except Exception:
        if created:
            remove_node(segmentation_node)
        raise
    return segmentation_node


def _place_beside(node, volume_node) -> None:
    """Put the segmentation in the CT's study/folder in the Data module (best effort: no hierarchy, no-op)."""
    try:
        sh = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(slicer.mrmlScene)
        volume_item, item = sh.GetItemByDataNode(volume_node), sh.GetItemByDataNode(node)
        parent = sh.GetItemParent(volume_item) if volume_item and item else 0
        if parent and parent != sh.GetSceneItemID():
            sh.SetItemParent(sh.GetItemByDataNode(node), parent)
    except Exception:  # noqa: BLE001 - cosmetic only
        pass


def show_3d(segmentation_node) -> None:
    """Build closed surfaces so the organs appear in the 3D view (kept up to date after edits)."""
    segmentation_node.CreateClosedSurfaceRepresentation()


def remove_node(node) -> None:
    """Remove a node and the display/storage nodes that belong only to it."""
    scene = slicer.mrmlScene
    if node is None or scene.GetNodeByID(node.GetID()) is None:
        return
    display = [node.GetNthDisplayNode(i) for i in range(node.GetNumberOfDisplayNodes())] if hasattr(node, "GetNumberOfDisplayNodes") else []
    storage = [node.GetNthStorageNode(i) for i in range(node.GetNumberOfStorageNodes())] if hasattr(node, "GetNumberOfStorageNodes") else []
    scene.RemoveNode(node)
    for n in display + storage:
        if n is not None and scene.GetNodeByID(n.GetID()) is not None:
            scene.RemoveNode(n)


def labelmap_array(segmentation_node, reference_volume_node):
    """The segmentation as a numpy label array (k, j, i) on the reference volume's grid, in BTCV ids.

    Segments map to ids through `organ_id` (tag, terminology, name); segments that are no organ are left
    out. Used to compare with the engine's output and to export corrected labels for training. Read straight
    from the organs' shared layer where they have one on the CT's grid (`layers`: what Segment makes; 0.3 s
    less per click on a 512x512 CT), else through Slicer's export.
    """
    from .layers import organ_labels, organ_layer

    layer = organ_layer(segmentation_node, reference_volume_node)
    image = reference_volume_node.GetImageData()
    if layer is not None and image is not None:
        i, j, k = image.GetDimensions()
        return organ_labels(layer, (k, j, i))
    return exported_labels(segmentation_node, reference_volume_node)


def exported_labels(segmentation_node, reference_volume_node):
    """`labelmap_array` through Slicer's export of the segments to a label map volume (any layers, grid or
    transform)."""
    import vtk

    scene = slicer.mrmlScene
    segmentation = segmentation_node.GetSegmentation()
    colors = scene.AddNewNodeByClass("vtkMRMLColorTableNode", "ContrastSeg temporary colours")
    labelmap = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "ContrastSeg temporary export")
    try:
        colors.SetTypeToUser()
        colors.SetNumberOfColors(max(BY_ID) + 1)
        colors.SetColor(0, "Background", 0, 0, 0, 0)
        ids = vtk.vtkStringArray()
        for i in range(segmentation.GetNumberOfSegments()):
            segment = segmentation.GetNthSegment(i)
            label = organ_id(segment)
            if label is not None:
                ids.InsertNextValue(segmentation.GetNthSegmentID(i))
                colors.SetColor(label, segment.GetName(), *segment.GetColor(), 1.0)  # matched by segment name
        ok = segmentations_logic().ExportSegmentsToLabelmapNode(
            segmentation_node, ids, labelmap, reference_volume_node, slicer.vtkSegmentation.EXTENT_REFERENCE_GEOMETRY, colors)
        if not ok:
            raise RuntimeError(f"could not export '{segmentation_node.GetName()}' to a label map")
        return slicer.util.arrayFromVolume(labelmap).copy()
    finally:
        display = labelmap.GetDisplayNode()
        made = display.GetColorNode() if display is not None else None  # the export makes its own colour table
        if made is not None and made is not colors and not made.GetSingletonTag():
            remove_node(made)
        remove_node(labelmap)
        remove_node(colors)


def write_labels_like(array, like, path: Path) -> Path:
    """A label array (k, j, i) from `labelmap_array` as a file with the exact geometry of `like`: the CT
    written by `write_volume` (a path), or the volume node itself, so the engine reads it on that CT's grid."""
    import SimpleITK as sitk

    spacing, origin, direction = _lps_geometry(like)
    labels = sitk.GetImageFromArray(array.astype("uint8"))
    labels.SetSpacing(spacing)
    labels.SetOrigin(origin)
    labels.SetDirection(direction)
    sitk.WriteImage(labels, str(path), useCompression=str(path).endswith(".gz") or str(path).endswith(".nrrd"))
    return path


def _lps_geometry(like) -> tuple:
    """(spacing, origin, direction) in ITK's LPS convention, of an image file or of a volume node (whose
    IJK-to-RAS matrix is the same grid in RAS: x and y change sign)."""
    if isinstance(like, (str, Path)):
        import SimpleITK as sitk

        reader = sitk.ImageFileReader()
        reader.SetFileName(str(like))
        reader.ReadImageInformation()
        return reader.GetSpacing(), reader.GetOrigin(), reader.GetDirection()
    import vtk

    directions = vtk.vtkMatrix4x4()
    like.GetIJKToRASDirectionMatrix(directions)
    flip = (-1.0, -1.0, 1.0)
    direction = tuple(flip[r] * directions.GetElement(r, c) for r in range(3) for c in range(3))
    origin = tuple(f * v for f, v in zip(flip, like.GetOrigin()))
    return tuple(like.GetSpacing()), origin, direction


def organ_segment(segmentation_node, organ_id_: int):
    """The segment of an organ (ID: its key), made empty with its name, colour and terminology if the user
    deleted it."""
    organ = BY_ID[organ_id_]
    segmentation = segmentation_node.GetSegmentation()
    if segmentation.GetSegment(organ.key) is None:
        segmentation.AddEmptySegment(organ.key, organ.name, [c / 255.0 for c in organ.color])
        segment = segmentation.GetSegment(organ.key)
        segment.SetTag(segment.GetTerminologyEntryTagName(), organ.terminology_entry())
        segment.SetTag(ORGAN_TAG, str(organ.id))
    return segmentation.GetSegment(organ.key)


def set_segment(segmentation_node, segment_id: str, mask, volume_node) -> None:
    """Replace a segment's voxels by `mask` ((k, j, i) on `volume_node`'s grid). Through the segmentation logic's
    label map import, which keeps each segment's label value in a shared layer: a box-limited merge through
    SetBinaryLabelmapToSegment wrote an empty segment's new voxels under another segment's label value."""
    slicer.util.updateSegmentBinaryLabelmapFromArray(mask.astype("uint8"), segmentation_node, segment_id, volume_node)
