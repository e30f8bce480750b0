"""Export: the CT volume and its corrected Segmentation node become a new, immutable dataset entry.

Segments are matched to BTCV organs the way the ContrastSeg module reads them back (`ContrastSegLib.nodes.
organ_id`: its organ tag, else the SNOMED CT terminology, else the organ's name or key); other segments
(a tumour, a bone) are listed and left out. The engine (`contrastseg.dataset_edit.add_entry`) stores the
files, checksums and provenance; this module only turns nodes into files and gathers what the scene knows
about where the case came from (DICOM UIDs, the model that made the first segmentation, its output file).
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import slicer

from ContrastSegLib import nodes
from ContrastSegLib.segmentation import INITIAL_LABELS_ATTRIBUTE
from contrastseg.dataset_edit import add_entry, default_dataset, live_records, summary_row
from contrastseg.errors import ContrastSegError
from contrastseg.organs import BY_ID

# Attributes the ContrastSeg module sets on a segmentation it produced.
MODEL_ATTRIBUTE = "ContrastSeg.Model"


@dataclass
class ExportResult:
    record: dict
    organs: list[int]
    left_out: list[str] = field(default_factory=list)

    def message(self) -> str:
        text = f"Saved {self.record['id']}: {len(self.organs)} organ(s)"
        if self.left_out:
            text += f". Left out (not BTCV organs): {', '.join(self.left_out)}"
        return text + "."


def classify_segments(segmentation_node) -> tuple[dict[str, int], list[str]]:
    """({segment ID: BTCV id} for organ segments, [names of the others]); refuses two segments for one organ."""
    segmentation = segmentation_node.GetSegmentation()
    matched, others, seen = {}, [], {}
    for i in range(segmentation.GetNumberOfSegments()):
        segment = segmentation.GetNthSegment(i)
        label = nodes.organ_id(segment)
        if label is None:
            others.append(segment.GetName())
            continue
        if label in seen:
            raise ContrastSegError(f"segments '{seen[label]}' and '{segment.GetName()}' are both the {BY_ID[label].name}; "
                                   "merge them or rename one before exporting")
        seen[label] = segment.GetName()
        matched[segmentation.GetNthSegmentID(i)] = label
    return matched, others


def dicom_uids(volume_node) -> dict | None:
    """Series and study instance UIDs of a volume loaded from DICOM (from the subject hierarchy), else None."""
    try:
        sh = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(volume_node.GetScene())
        item = sh.GetItemByDataNode(volume_node)
        uids = {"series_uid": sh.GetItemUID(item, "DICOM"), "study_uid": sh.GetItemUID(sh.GetItemParent(item), "DICOM")}
    except Exception:  # noqa: BLE001 - no hierarchy: not from DICOM as far as we can tell
        uids = {}
    instances = (volume_node.GetAttribute("DICOM.instanceUIDs") or "").split()
    if instances:
        uids["first_instance_uid"] = instances[0]
    uids = {k: v for k, v in uids.items() if v}
    return uids or None


def export_case(volume_node, segmentation_node, dataset: Path | None = None, phase: str | None = None,
                note: str | None = None, initial_labels: Path | None = None, validation: bool = False) -> ExportResult:
    """Store the CT (and, with a Segmentation, its organ segments as BTCV labels) as a new dataset entry.

    Without `segmentation_node` the CT is stored unlabelled (for pretraining). The organs annotated are the
    segments that are BTCV organs, empty ones included ("absent here"); organs without a segment say nothing,
    so retraining does not teach them as background. `initial_labels` (default: the segmentation's
    ContrastSeg.InitialLabels attribute, set by the ContrastSeg module) is the model output before
    correction; the entry keeps a copy and records which organs were edited, how many voxels changed and
    the initial Dice per organ (the "before" of the run table). `validation` holds the case out of training.
    """
    if volume_node is None:
        raise ContrastSegError("select the CT volume to export")
    dataset = Path(dataset) if dataset else default_dataset()
    organs, left_out = [], []
    model = initial = None
    work = Path(tempfile.mkdtemp(prefix="ContrastSegExport-"))
    try:
        image = nodes.write_volume(volume_node, work / "image.nrrd")
        labels = None
        if segmentation_node is not None:
            matched, left_out = classify_segments(segmentation_node)
            if not matched:
                raise ContrastSegError(f"no segment of '{segmentation_node.GetName()}' is a BTCV organ (names, keys or "
                                       f"terminology of {', '.join(o.name for o in BY_ID.values())}); nothing to export")
            array = nodes.labelmap_array(segmentation_node, volume_node)
            labels = nodes.write_labels_like(array, image, work / "labels.nrrd")
            organs = sorted(set(matched.values()))
            model = segmentation_node.GetAttribute(MODEL_ATTRIBUTE)
            initial = initial_labels or segmentation_node.GetAttribute(INITIAL_LABELS_ATTRIBUTE)
            if initial and not Path(initial).exists():
                initial = None
        record = add_entry(dataset, image, labels, phase=phase or None, source=f"3D Slicer: {volume_node.GetName()}",
                           initial=initial, model=model, volume_name=volume_node.GetName(), dicom=dicom_uids(volume_node),
                           note=note or None, extra=_extra(left_out, segmentation_node),
                           organs=organs if labels is not None else None, validation=validation)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return ExportResult(record, organs, left_out)


def _extra(left_out: list[str], segmentation_node) -> dict | None:
    """Provenance beyond the engine's own: segments left out, and the prompted edits made in ContrastSeg."""
    from ContrastSegLib.correct import edits

    extra = {"left_out": left_out} if left_out else {}
    made = edits(segmentation_node)
    if made:
        extra["prompted_edits"] = made
    return extra or None


def dataset_rows(dataset: Path | None = None) -> list[dict]:
    """The dataset table: one row per live entry (id, case, labelled, organs, phase, date, edited organs)."""
    dataset = Path(dataset) if dataset else default_dataset()
    if not (dataset / "manifest.json").exists():
        return []
    return [summary_row(r) for r in live_records(dataset)]
