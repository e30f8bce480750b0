"""The labelled CTs of ../shared/data that the project's evaluations score, and their truth on a CT's grid.

One list for every script (default-model evaluation, the loop experiment, the click evaluation), so a number
in the README always means the same CT and the same truth. Whether a case was trained on depends on the
model: the shipped default model trained on the TotalSegmentator CTs, never on IRCAD or CHAOS.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
TS = DATA / "totalsegmentator-examples"
CHAOS = DATA / "chaos-ct-case1"


@dataclass(frozen=True)
class Case:
    key: str
    title: str
    image: Path
    truth: Path | str  # a label map, IRCAD's MASKS_DICOM.zip, a segmentations/ folder, or "chaos"
    id_map: str | None
    unseen: bool  # never trained on by the shipped default model (manual masks: IRCAD and CHAOS)


CASES = {c.key: c for c in [
    Case("ircad", "IRCAD patient 1 (manual masks, unseen)", DATA / "ircad-3d-01-patient1" / "PATIENT_DICOM",
         DATA / "ircad-3d-01-patient1" / "MASKS_DICOM.zip", None, True),
    Case("chaos", "CHAOS CT 1 (manual liver mask, unseen)", CHAOS / "DICOM_anon", "chaos", None, True),
    Case("ts-ct", "TS example_ct (training CT; TotalSegmentator's labels)", TS / "example_ct.nii.gz",
         TS / "example_seg_fast_force_split.nii.gz", "totalsegmentator", False),
    Case("ts-dicom", "TS DICOM series (training CT; TotalSegmentator's labels)", TS / "example_ct_dicom",
         TS / "example_seg_dicom.nii.gz", "totalsegmentator", False),
    Case("s0009", "TS dataset s0009 (training CT; reference labels)", DATA / "totalsegmentator-s0009" / "ct.nii.gz",
         DATA / "totalsegmentator-s0009" / "segmentations", None, False),
]}


def chaos_truth(reference) -> dict[int, np.ndarray]:
    """CHAOS's manual liver mask as {6: mask} on the CT's grid: one PNG per DICOM file, in file-name order.

    The series is read sorted by slice position; each file's own ImagePositionPatient says which slice of
    the volume its PNG belongs to (the file names run head to foot).
    """
    import SimpleITK as sitk

    files = sorted((CHAOS / "DICOM_anon").glob("*.dcm"))
    pngs = sorted((CHAOS / "Ground").glob("liver_GT_*.png"))
    if len(files) != len(pngs):
        raise SystemExit(f"CHAOS: {len(files)} DICOM files but {len(pngs)} masks")
    mask = np.zeros(tuple(reversed(reference.GetSize())), dtype=bool)
    for f, p in zip(files, pngs):
        r = sitk.ImageFileReader()
        r.SetFileName(str(f))
        r.ReadImageInformation()
        pos = [float(v) for v in r.GetMetaData("0020|0032").split("\\")]
        k = int(round(reference.TransformPhysicalPointToContinuousIndex(pos)[2]))
        mask[k] = sitk.GetArrayFromImage(sitk.ReadImage(str(p))) > 0
    return {6: mask}


def truth_of(case: Case, image) -> dict[int, np.ndarray]:
    """{BTCV id: mask} on `image`'s grid."""
    from contrastseg.dataset import NAMED_ID_MAPS
    from contrastseg.metrics import load_truth

    if case.truth == "chaos":
        return chaos_truth(image)
    return load_truth(Path(case.truth), image, NAMED_ID_MAPS[case.id_map] if case.id_map else None)


def available(keys: list[str] | None = None) -> list[Case]:
    """The cases whose files are on this machine (all, or those named)."""
    chosen = [CASES[k] for k in keys] if keys else list(CASES.values())
    return [c for c in chosen if c.image.exists()]
