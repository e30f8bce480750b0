"""Reading CT volumes and label maps, and writing label maps atomically with their organ names and colours.

Images keep their world geometry (spacing, origin, direction) as SimpleITK images, so a label map computed
on any working grid can be resampled back onto the input grid and overlays it exactly in world coordinates.
Every CT read here passes the checks of `ct_checks` (header, DICOM series, values, geometry); every file
written goes through `outputs.atomic_path` (temporary name, fsync, read back, rename).
"""

from __future__ import annotations

import json  # noqa: F401  (tests reach json.dump through this module)
import os
import sys
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from .ct_checks import check_dicom_series, check_geometry, check_nifti_header, check_values
from .errors import ContrastSegError
from .guards import check_input, is_regular
from .maskfiles import check_gzip_complete as _check_gzip_complete
from .maskfiles import first_line as _first_line
from .maskfiles import is_structure_folder, read_mask_file, read_structure_folder
from .organs import BY_ID, TOTALSEGMENTATOR_TO_BTCV
from .outputs import (IMAGE_SUFFIXES, WRITABLE_IMAGE_SUFFIXES, IncompleteFile, atomic_path, captured_stderr,  # noqa: F401
                      split_suffix, write_json)


def _read_dicom_series(folder: Path) -> sitk.Image:
    reader = sitk.ImageSeriesReader()
    series = reader.GetGDCMSeriesIDs(str(folder))
    if not series:
        raise ContrastSegError(f"{folder} holds no DICOM series (no readable DICOM image files found)")
    if len(series) > 1:
        described = []
        for uid in series:
            files = reader.GetGDCMSeriesFileNames(str(folder), uid)
            described.append(f"{uid} ({len(files)} files)")
        raise ContrastSegError(
            f"{folder} holds {len(series)} DICOM series; put one series per folder. Series: " + "; ".join(described)
        )
    # GetGDCMSeriesFileNames sorts by ImagePositionPatient along the slice normal, not by file name.
    files = reader.GetGDCMSeriesFileNames(str(folder), series[0])
    check_dicom_series(Path(folder), list(files))
    reader.SetFileNames(files)
    try:
        return reader.Execute()  # GDCM applies RescaleSlope / RescaleIntercept
    except RuntimeError as err:
        raise ContrastSegError(f"cannot read the DICOM series in {folder}: {_first_line(err)}") from None


# voxel types kept as stored: every value is exact in them, and a 512x512x516 CT takes 0.27 GB instead of
# 0.54 GB as float32 (networks read it through `preprocess.prepare`, which resamples into float32)
COMPACT_TYPES = (sitk.sitkInt16, sitk.sitkUInt16, sitk.sitkInt8, sitk.sitkUInt8)


def read_image(path: str | os.PathLike) -> sitk.Image:
    """Read a 3D image (NIfTI, NRRD, MHA or a folder holding one DICOM series) with its geometry: 8- and 16-bit
    integer voxels as stored, any other type as float32."""
    path = check_input(path, "input")  # a named pipe would hang the read
    if path.is_dir():
        image = _read_dicom_series(path)
    else:
        _check_gzip_complete(path)
        check_nifti_header(path)
        try:
            image = sitk.ReadImage(str(path))
        except RuntimeError as err:
            raise ContrastSegError(f"cannot read {path}: not a readable image file ({_first_line(err)})") from None
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise ContrastSegError(f"{path} has {image.GetNumberOfComponentsPerPixel()} components per voxel; expected a scalar CT")
    if image.GetDimension() == 4 and image.GetSize()[3] == 1:
        image = image[:, :, :, 0]
    if image.GetDimension() != 3 or min(image.GetSize()) < 2:
        raise ContrastSegError(
            f"{path} is not a 3D volume (size {'x'.join(map(str, image.GetSize()))}); ContrastSeg needs a CT volume of several slices"
        )
    check_geometry(image, path)
    if image.GetPixelID() not in COMPACT_TYPES:
        image = sitk.Cast(image, sitk.sitkFloat32)
    check_values(image, path)
    return image


def read_ct(path: str | os.PathLike) -> sitk.Image:
    """The CT a command works on, with every check `segment` runs: `read_image`'s (file, header, series,
    geometry, values) and `check_ct`'s (Hounsfield units), so a label map or a [0, 1] image given as the CT
    is refused by `refine-organ`, `dataset add` and the worker as it is by `segment`."""
    image = read_image(path)
    check_ct(image, str(path))
    return image


def check_ct(image: sitk.Image, source: str = "input") -> None:
    """Refuse images whose intensities cannot be CT Hounsfield units.

    A body CT always holds air (about -1000 HU) around or inside the patient; images scaled to [0, 1] or
    [0, 255] (PNG stacks, MRI, normalised arrays) do not, and would be silently mis-segmented.
    """
    arr = sitk.GetArrayViewFromImage(image)
    sample = arr[:: max(1, arr.shape[0] // 16)].ravel()
    low, high = np.percentile(sample, [0.5, 99.5])
    if low > -300 or high - low < 300:
        raise ContrastSegError(
            f"{source} does not look like CT in Hounsfield units (intensities from {low:.1f} to {high:.1f}; a CT has air "
            "near -1000 HU). Convert it to HU, or give the original CT."
        )


def read_labels(path: str | os.PathLike, reference: sitk.Image | None = None, id_map: dict[int, int] | None = None) -> sitk.Image:
    """Read a label map as uint8; map its ids through `id_map` (others become 0) and put it on `reference`'s grid.

    A label map on another grid is accepted only if it covers the same world region (e.g. the same voxels
    stored with a flipped axis); it is then resampled by nearest neighbour. Otherwise it is refused, since
    it does not belong to the image.
    """
    if is_structure_folder(path):  # TotalSegmentator's one-mask-per-structure folder: its ids, mapped to BTCV
        labels = read_structure_folder(path)
        id_map = TOTALSEGMENTATOR_TO_BTCV if id_map is None else id_map
    else:
        labels = read_mask_file(check_input(path, "label map", folder_ok=False), "label map")
    arr = sitk.GetArrayViewFromImage(labels)
    if (arr.dtype.kind == "f" and np.any(arr != np.round(arr))) or (arr.dtype.kind != "u" and arr.min() < 0):
        raise ContrastSegError(f"{path} is not a label map (it has negative or non-integer values)")
    if arr.dtype != np.uint8:  # a uint8 map (every map this tool writes) is used as it is: a click reads one
        arr = arr.astype(np.int64)
    if id_map is not None:
        lut = np.zeros(max(int(arr.max()), max(id_map)) + 1, dtype=np.uint8)
        for src, dst in id_map.items():
            lut[src] = dst
        arr = lut[arr]
    else:
        unknown = sorted(set(label_values(arr)) - set(BY_ID) - {0})
        if unknown:
            raise ContrastSegError(
                f"{path} has label ids {unknown[:10]} that are not BTCV organ ids (1-13); give an id map for it"
            )
    out = sitk.GetImageFromArray(arr.astype(np.uint8))
    out.CopyInformation(labels)
    if reference is None:
        return out
    if _same_grid(out, reference):
        out.CopyInformation(reference)
        return out
    if not _same_region(out, reference):
        raise ContrastSegError(
            f"label map {path} does not match its image: size {out.GetSize()} spacing "
            f"{tuple(round(s, 3) for s in out.GetSpacing())} vs the image's {reference.GetSize()} "
            f"{tuple(round(s, 3) for s in reference.GetSpacing())} over a different world region"
        )
    return sitk.Resample(out, reference, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)


def label_values(arr: np.ndarray) -> list[int]:
    """The values in a non-negative integer array. For uint8 (what a click reads and writes) the organ voxels
    are counted, not the whole map sorted: a label map is mostly background, and sorting or counting a
    512x512x129 map widened to int64 took 0.2-0.6 s per call (twice per click), its organ voxels alone 0.02 s."""
    if arr.dtype == np.uint8:
        flat = arr.ravel()
        organs = flat[flat != 0]
        return ([0] if organs.size < flat.size else []) + [int(v) for v in np.flatnonzero(np.bincount(organs, minlength=256)) if v]
    return [int(v) for v in np.unique(arr)]


def _same_grid(a: sitk.Image, b: sitk.Image, tol: float = 1e-3) -> bool:
    return (
        a.GetSize() == b.GetSize()
        and np.allclose(a.GetSpacing(), b.GetSpacing(), atol=tol)
        and np.allclose(a.GetOrigin(), b.GetOrigin(), atol=tol * 100)
        and np.allclose(a.GetDirection(), b.GetDirection(), atol=tol)
    )


def world_bounds(image: sitk.Image) -> np.ndarray:
    """Axis-aligned world bounding box (2x3: min, max) of the voxel centres of `image`."""
    size = np.array(image.GetSize()) - 1
    corners = [
        image.TransformContinuousIndexToPhysicalPoint([float(c) for c in (i * size[0], j * size[1], k * size[2])])
        for i in (0, 1) for j in (0, 1) for k in (0, 1)
    ]
    corners = np.array(corners)
    return np.stack([corners.min(0), corners.max(0)])


def _same_region(a: sitk.Image, b: sitk.Image) -> bool:
    tol = max(max(a.GetSpacing()), max(b.GetSpacing()))
    return bool(np.all(np.abs(world_bounds(a) - world_bounds(b)) <= tol))


def _write_image(image: sitk.Image, tmp: Path) -> None:
    """ITK writes the temporary file; it is read back whole and compared, since ITK's NIfTI writer reports a
    full disk only on stderr (the message is kept back: the sentence replaces it)."""
    with captured_stderr() as said:
        try:
            sitk.WriteImage(image, str(tmp), useCompression=True)
            back = sitk.ReadImage(str(tmp))
        except RuntimeError as err:
            raise IncompleteFile(_first_line(err)) from None
    same = (back.GetSize() == image.GetSize()
            and np.array_equal(sitk.GetArrayViewFromImage(back), sitk.GetArrayViewFromImage(image)))
    if not same:
        raise IncompleteFile("the voxels read back differ from those written")
    if said and said[0].strip():
        sys.stderr.write(said[0])


def segment_metadata(label_ids: list[int]) -> dict[str, str]:
    """Slicer .seg.nrrd header fields so Slicer shows named, coloured organs with SNOMED CT terminology."""
    meta = {"Segmentation_MasterRepresentation": "Binary labelmap", "Segmentation_ContainedRepresentationNames": "Binary labelmap|"}
    for i, label in enumerate(label_ids):
        organ = BY_ID[label]
        meta.update({
            f"Segment{i}_ID": organ.key,
            f"Segment{i}_Name": organ.name,
            f"Segment{i}_NameAutoGenerated": "0",
            f"Segment{i}_Color": " ".join(f"{c / 255:.6f}" for c in organ.color),
            f"Segment{i}_ColorAutoGenerated": "0",
            f"Segment{i}_LabelValue": str(label),
            f"Segment{i}_Layer": "0",
            f"Segment{i}_Tags": f"TerminologyEntry:{organ.terminology_entry()}|",
        })
    return meta


SIDECAR_FORMAT = "contrastseg-labels/1"


def label_sidecar(label_ids: list[int]) -> dict:
    """The organ table for a label map: what each id means, for readers other than Slicer. Its `format` marks
    it as ContrastSeg's (`check_sidecar`)."""
    return {
        "format": SIDECAR_FORMAT,
        "labels": [
            {"id": o.id, "key": o.key, "name": o.name, "color": list(o.color),
             "snomed": {"scheme": o.snomed[0], "code": o.snomed[1], "meaning": o.snomed[2]},
             "modifier": None if o.modifier is None else {"scheme": o.modifier[0], "code": o.modifier[1], "meaning": o.modifier[2]}}
            for o in (BY_ID[i] for i in label_ids)
        ]
    }


def sidecar_path(path: str | os.PathLike) -> Path:
    """`seg.nii.gz` -> `seg.json`: the organ names and colours of a label map written by ContrastSeg."""
    stem, _ = split_suffix(path)
    return Path(stem + ".json")


def _ours(table) -> bool:
    """An organ table ContrastSeg wrote: with its format marker, or (written before the marker) exactly the
    {"labels": [{id, key, name, color, snomed, modifier}, ...]} that `label_sidecar` makes."""
    if not isinstance(table, dict):
        return False
    if table.get("format") == SIDECAR_FORMAT:
        return True
    rows = table.get("labels")
    return (set(table) == {"labels"} and isinstance(rows, list)
            and all(isinstance(r, dict) and set(r) == {"id", "key", "name", "color", "snomed", "modifier"} for r in rows))


def organ_table(path: str | os.PathLike) -> Path | None:
    """The organ table that writing the label map `path` also writes, or None (a .seg.nrrd carries its own):
    an output of its own for `outputs.check_outputs`."""
    return None if split_suffix(path)[1].lower() == ".seg.nrrd" else sidecar_path(path)


def check_sidecar(path: str | os.PathLike) -> Path | None:
    """`organ_table(path)`, refused if a file ContrastSeg did not write is at that name: `seg.nii.gz` would
    otherwise replace any `seg.json` beside it (a model's `card.json` was lost that way)."""
    side = organ_table(path)
    if side is None or not os.path.lexists(side):
        return side
    table = None
    if is_regular(side, follow=False):  # not a link, a pipe or a folder
        try:
            with open(side, "rb") as f:
                table = json.loads(f.read(1 << 20))
        except (OSError, ValueError, RecursionError):
            table = None
    if not _ours(table):
        raise ContrastSegError(f"{side} exists and is not an organ table ContrastSeg wrote; the label map "
                               f"{Path(path).name} would replace it: move it or choose another output name")
    return side


def write_labels(labels: sitk.Image, path: str | os.PathLike, label_ids: list[int]) -> list[Path]:
    """Write a BTCV label map (format by extension) and its organ table; return the paths written.

    `.seg.nrrd` carries the segment names, colours and terminology in its header (Slicer reads it as a
    Segmentation); other formats get a JSON sidecar. Both files are written atomically, and the label map is
    read back and compared before it takes its name.
    """
    path = Path(path)
    stem, suffix = split_suffix(path)
    if suffix.lower() not in WRITABLE_IMAGE_SUFFIXES:
        raise ContrastSegError(f"unsupported output format '{path.name}'; use .nii.gz, .nii, .nrrd, .seg.nrrd or .mha")
    check_sidecar(path)  # before anything is written
    labels = sitk.Cast(labels, sitk.sitkUInt8)
    if suffix.lower() == ".seg.nrrd":
        labels = sitk.Image(labels)
        for key, value in segment_metadata(label_ids).items():
            labels.SetMetaData(key, value)
    written = [path]
    with atomic_path(path) as tmp:
        _write_image(labels, tmp)
        if suffix.lower() != ".seg.nrrd":  # the organ table first: it is renamed into place just before the map
            write_json(label_sidecar(label_ids), sidecar_path(path))
            written.append(sidecar_path(path))
    return written
