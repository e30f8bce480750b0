"""A segmentation's organs read and written in place, in the shared label map layer they live in.

Why: every click exported all organs through a CT-sized label map volume (IRCAD's 512x512x129: 0.3 s) and
wrote each organ it changed back through another CT-sized temporary volume (0.12 s per organ), for a change
that fits in a box of a few hundred thousand voxels. Segment's import puts every organ into one shared layer
on the CT's own voxel grid, each organ with its own label value: that layer *is* the label map up to a
lookup table. It is read through the table, and a box of it is written in place; Slicer's own observer on the
layer then drops the derived surfaces and tells the views, as after a Segment Editor stroke.

Anything else returns None and the caller takes Slicer's export and import: organs in several layers (a
segment the user added, an organ re-created empty), a non-organ segment sharing the organs' layer, two
segments of one organ, a layer on another grid or under another transform than the CT, a source
representation other than the binary label map. Written in place, the layer tells the segmentation that every
segment changed, and Slicer drops every organ's 3D surface, to be rebuilt where shown (IRCAD's six: 1.4 s);
its own per-organ import does the same (measured on slicer-core 5.11). `write_box` puts back the surfaces of
the organs the box leaves unchanged before the views hear of it; the web page also takes the surfaces off
during a click, so that even the changed organs' are built after the slice views show it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .nodes import organ_id

LABELMAP = "Binary labelmap"
SURFACE = "Closed surface"


@dataclass
class OrganLayer:
    """The layer holding every organ segment: its image, its voxels as a (k, j, i) view, where that view starts
    on the CT's grid, and each organ's label value in it."""

    image: object  # vtkOrientedImageData, kept so the view stays valid
    array: np.ndarray  # (k, j, i) view of the image's voxels: writing it writes the segmentation
    offset: tuple  # (k0, j0, i0): the view's first voxel in the CT's IJK
    values: dict  # BTCV id -> the organ's label value in the layer


def _source_representation(segmentation) -> str:
    for getter in ("GetSourceRepresentationName", "GetMasterRepresentationName"):  # renamed in Slicer 5.4
        if hasattr(segmentation, getter):
            return getattr(segmentation, getter)()
    return ""


def _same_matrix(a, b, tol: float = 1e-4) -> bool:
    return all(abs(a.GetElement(r, c) - b.GetElement(r, c)) <= tol for r in range(4) for c in range(4))


def organ_layer(segmentation_node, volume_node) -> OrganLayer | None:
    """The one layer holding all organ segments and nothing else, on `volume_node`'s voxel grid; else None."""
    import vtk
    from vtk.util.numpy_support import vtk_to_numpy

    segmentation = segmentation_node.GetSegmentation()
    if _source_representation(segmentation) != LABELMAP:
        return None
    if segmentation_node.GetParentTransformNode() is not volume_node.GetParentTransformNode():
        return None
    values, organ_layers, other_layers = {}, set(), set()
    for i in range(segmentation.GetNumberOfSegments()):
        segment, segment_id = segmentation.GetNthSegment(i), segmentation.GetNthSegmentID(i)
        label = organ_id(segment)
        index = segmentation.GetLayerIndex(segment_id)
        if label is None:
            other_layers.add(index)
            continue
        if label in values:
            return None  # two segments of one organ: which one a voxel goes to is Slicer's export's to say
        values[label] = segment.GetLabelValue()
        organ_layers.add(index)
    if len(organ_layers) != 1 or organ_layers & other_layers or len(set(values.values())) != len(values) \
            or min(values.values()) <= 0:
        return None
    image = segmentation.GetLayerDataObject(organ_layers.pop())
    if image is None or not image.IsA("vtkOrientedImageData") or image.GetNumberOfScalarComponents() != 1:
        return None
    layer_matrix, ct_matrix = vtk.vtkMatrix4x4(), vtk.vtkMatrix4x4()
    image.GetImageToWorldMatrix(layer_matrix)
    volume_node.GetIJKToRASMatrix(ct_matrix)
    if not _same_matrix(layer_matrix, ct_matrix):
        return None
    i0, i1, j0, j1, k0, k1 = image.GetExtent()
    shape = (max(k1 - k0 + 1, 0), max(j1 - j0 + 1, 0), max(i1 - i0 + 1, 0))
    scalars = image.GetPointData().GetScalars()
    if scalars is None or not all(shape):
        array = np.zeros(shape, dtype=np.uint8)
    else:
        array = vtk_to_numpy(scalars).reshape(shape)
        if array.dtype.kind not in "iu":
            return None
    return OrganLayer(image, array, (k0, j0, i0), values)


def _overlap(layer: OrganLayer, box: tuple) -> tuple | None:
    """(slices on the CT grid, the same slices in the layer's view) of `box`'s part inside the layer."""
    on_ct, in_layer = [], []
    for s, start, size in zip(box, layer.offset, layer.array.shape):
        lo, hi = max(s.start, start), min(s.stop, start + size)
        if hi <= lo:
            return None
        on_ct.append(slice(lo, hi))
        in_layer.append(slice(lo - start, hi - start))
    return tuple(on_ct), tuple(in_layer)


def organ_labels(layer: OrganLayer, shape: tuple) -> np.ndarray:
    """The organs as BTCV ids (uint8, (k, j, i) of `shape`, the CT's size); voxels of no organ 0."""
    out = np.zeros(shape, dtype=np.uint8)
    where = _overlap(layer, tuple(slice(0, n) for n in shape))
    if where is not None:
        out[where[0]] = _lookup({value: label for label, value in layer.values.items()}, layer.array[where[1]])
    return out


def _lookup(table: dict, values: np.ndarray) -> np.ndarray:
    """`values` mapped through `table` (others to 0), as uint8. 8- and 16-bit layers (Slicer's) index a full
    table, the bits read as unsigned (a negative value finds 0 there); np.take with clipping took 0.4 s on a
    512x512x129 layer, indexing 0.03 s."""
    if values.dtype.itemsize <= 2:
        unsigned = values.view(np.uint8 if values.dtype.itemsize == 1 else np.uint16)
        full = np.zeros(256 ** values.dtype.itemsize, dtype=np.uint8)
        for value, label in table.items():
            full[value] = label
        return full[unsigned]
    out = np.zeros(values.shape, dtype=np.uint8)
    for value, label in table.items():
        out[values == value] = label
    return out


def write_organs(layer: OrganLayer, box: tuple, labels: np.ndarray) -> bool:
    """Write `labels` (BTCV ids, the shape of `box`, slices (k, j, i) on the CT grid) into the layer; True if
    written. False, with nothing written, when the box reaches outside the layer or names an organ that has
    no segment in it."""
    if tuple(s.stop - s.start for s in box) != labels.shape:
        raise ValueError(f"labels of shape {labels.shape} for a box of {[(s.start, s.stop) for s in box]}")
    where = _overlap(layer, box)
    if where is None or where[0] != tuple(box):
        return False
    present = np.flatnonzero(np.bincount(labels.ravel(), minlength=256))
    if any(int(v) and int(v) not in layer.values for v in present):
        return False
    table = np.zeros(256, dtype=layer.array.dtype)
    for label, value in layer.values.items():
        table[label] = value
    layer.array[where[1]] = table[labels]
    layer.image.Modified()  # the segmentation's observer: surfaces invalidated, the node and the views told
    return True


def box_labels(segmentation_node, volume_node, box: tuple) -> np.ndarray:
    """The organs' BTCV ids in `box` (slices (k, j, i) on the CT grid): from the layer where it covers the box,
    else from Slicer's export."""
    layer = organ_layer(segmentation_node, volume_node)
    where = _overlap(layer, box) if layer is not None else None
    if where is not None and where[0] == tuple(box):
        return _lookup({value: label for label, value in layer.values.items()}, layer.array[where[1]])
    from .nodes import labelmap_array

    return labelmap_array(segmentation_node, volume_node)[box]


def lost_and_gained(before: np.ndarray, after: np.ndarray) -> tuple[set, set]:
    """The organs (BTCV ids) that lose voxels and those that gain voxels where `after` replaces `before`."""
    differ = before != after
    return set(np.unique(before[differ]).tolist()) - {0}, set(np.unique(after[differ]).tolist()) - {0}


def write_box(segmentation_node, volume_node, box: tuple, labels: np.ndarray, organs=(), before=None) -> bool:
    """The organs in `box` (slices (k, j, i) on the CT grid) set to `labels` (BTCV ids): in place where the
    layer allows (True), else through Slicer's import of each organ that changes there (False): the organs that
    lose voxels first, then those that gain, so no voxel is in two segments at any time. `organs` (ids) get a
    segment first if they have none (a clicked organ the user deleted). `before`: the organs in the box now, if
    the caller has them (`box_labels`; read again otherwise).

    Either way Slicer drops every organ's 3D surface; those of the organs the box leaves unchanged are put back
    before the node tells its views (one modification), so Slicer rebuilds only the changed organs' surfaces
    (IRCAD: all six took 1.4 s, a kidney 0.2 s)."""
    from .nodes import organ_segment

    for organ in organs:
        organ_segment(segmentation_node, organ)
    if before is None:
        before = box_labels(segmentation_node, volume_node, box)
    changed = set().union(*lost_and_gained(before, labels))
    segmentation = segmentation_node.GetSegmentation()
    surfaces = {segmentation.GetNthSegmentID(i): segmentation.GetNthSegment(i).GetRepresentation(SURFACE)
                for i in range(segmentation.GetNumberOfSegments())}
    was = segmentation_node.StartModify()
    try:
        layer = organ_layer(segmentation_node, volume_node)
        in_place = layer is not None and write_organs(layer, box, labels)
        if not in_place:
            _import_box(segmentation_node, volume_node, box, labels, before)
        for segment_id, surface in surfaces.items():
            segment = segmentation.GetSegment(segment_id)
            if surface is not None and segment is not None and organ_id(segment) not in changed \
                    and segment.GetRepresentation(SURFACE) is None:
                segment.AddRepresentation(SURFACE, surface)
    finally:
        segmentation_node.EndModify(was)
    return in_place


def _import_box(segmentation_node, volume_node, box: tuple, labels: np.ndarray, before: np.ndarray) -> None:
    """`write_box` through Slicer's import, organ by organ, then the layers merged again (`share`)."""
    import slicer

    from contrastseg.organs import BY_ID

    from .nodes import set_segment

    lost, gained = lost_and_gained(before, labels)
    segmentation = segmentation_node.GetSegmentation()
    for organ in sorted(lost - gained) + sorted(gained):
        key = BY_ID[organ].key
        if segmentation.GetSegment(key) is None:
            continue
        mask = slicer.util.arrayFromSegmentBinaryLabelmap(segmentation_node, key, volume_node)
        if mask is None:
            i, j, k = volume_node.GetImageData().GetDimensions()
            mask = np.zeros((k, j, i), dtype=bool)
        mask = mask > 0
        mask[box] = labels == organ
        set_segment(segmentation_node, key, mask, volume_node)
    share(segmentation_node)


def share(segmentation_node) -> None:
    """Put the segments back into as few layers as they fit without overlapping. Slicer's import of one
    segment (a rewrite, a clear) moves it into a layer of its own, and every later click would then take
    the slow path; the merge costs a few milliseconds to a tenth of a second."""
    segmentation_node.GetSegmentation().CollapseBinaryLabelmaps(False)
