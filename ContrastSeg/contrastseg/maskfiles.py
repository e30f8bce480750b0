"""Reading label and mask files whole: one file, or TotalSegmentator's folder of one mask per structure.

Below io.py (which reads CTs and label maps through these): a truncated .gz is refused rather than read with
zeros where its end was lost, and ITK's error text is cut to the one line a person needs.
"""

from __future__ import annotations

import gzip
import os
import zlib
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from .ct_checks import check_nifti_header, nifti_header
from .errors import ContrastSegError
from .tissues import TS_IDS


def first_line(err: Exception) -> str:
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
    useful = [ln for ln in lines if "Description" in ln or "ERROR" in ln.upper()]
    return (useful or lines or ["unknown error"])[-1][:200]


def check_gzip_complete(path: Path) -> None:
    """ITK reads a truncated .gz without complaint (the missing voxels come back as zeros): check the stream."""
    if not path.name.lower().endswith(".gz"):
        return
    try:
        with gzip.open(path, "rb") as f:
            while f.read(1 << 24):
                pass
    except (EOFError, OSError, zlib.error) as err:
        raise ContrastSegError(f"cannot read {path}: the compressed file is truncated or corrupt ({err})") from None


def read_mask_file(path: Path, what: str = "mask") -> sitk.Image:
    """One label or mask file, read whole (a truncated .gz is refused, not zero-filled)."""
    check_gzip_complete(path)
    check_nifti_header(path)
    try:
        return sitk.ReadImage(str(path))
    except RuntimeError as err:
        raise ContrastSegError(f"cannot read {what} {path} ({first_line(err)})") from None


def is_structure_folder(path: str | os.PathLike) -> bool:
    """A TotalSegmentator `segmentations/` folder: one `<structure>.nii.gz` mask per structure."""
    path = Path(path)
    return path.is_dir() and any((path / f"{name}.nii.gz").is_file() for name in ("liver", "spleen", "aorta", "kidney_left"))


def read_structure_folder(path: str | os.PathLike):
    """The masks of a `segmentations/` folder as one uint8 SimpleITK label map in TotalSegmentator ids.

    Files not named after a structure are refused (a typo would silently drop an organ); a voxel claimed by
    two masks keeps the higher id, as TotalSegmentator's own combined maps do. All masks must share a grid.
    """
    path = Path(path)
    files = sorted(p for p in path.iterdir() if p.name.endswith(".nii.gz"))
    unknown = [p.name for p in files if p.name[: -len(".nii.gz")] not in TS_IDS]
    if unknown:
        raise ContrastSegError(f"{path} holds masks that are not TotalSegmentator structures: {unknown[:5]}")
    if not files:
        raise ContrastSegError(f"{path} holds no structure masks (<structure>.nii.gz)")
    out, ref, refused = None, None, []
    for f in sorted(files, key=lambda p: TS_IDS[p.name[: -len(".nii.gz")]]):
        try:
            mask = read_mask_file(f)
        except ContrastSegError:
            refused.append(f)  # e.g. ITK's stricter test of a direction rounded in float32: read below
            continue
        if out is None:
            ref, out = mask, np.zeros(tuple(reversed(mask.GetSize())), dtype=np.uint8)
        elif mask.GetSize() != ref.GetSize() or not np.allclose(mask.GetSpacing(), ref.GetSpacing(), atol=1e-3):
            raise ContrastSegError(f"{f} is on another grid than {files[0].name}; a segmentations folder shares one grid")
        out[sitk.GetArrayViewFromImage(mask) > 0] = TS_IDS[f.name[: -len(".nii.gz")]]
    if out is None:
        raise ContrastSegError(f"no mask in {path} could be read")
    for f in refused:
        out[_voxels(f, out.shape) > 0] = TS_IDS[f.name[: -len(".nii.gz")]]
    image = sitk.GetImageFromArray(out)
    image.CopyInformation(ref)
    return image


_NIFTI_INTS = {2: "u1", 4: "i2", 8: "i4", 256: "i1", 512: "u2", 768: "u4"}


def _voxels(path: Path, shape: tuple[int, int, int]) -> np.ndarray:
    """A mask's voxels read straight from its NIfTI file, for a mask of a folder whose grid another mask gave:
    ITK refuses a direction matrix that float32 rounding made a hair non-orthonormal (TotalSegmentator s0004's
    thyroid), though the grid is the folder's. The header must say the same size and an integer type."""
    h = nifti_header(path)
    dims = tuple(int(d) for d in reversed(h["dim"][1:4])) if h else None
    if h is None or h["datatype"] not in _NIFTI_INTS or dims != tuple(shape):
        raise ContrastSegError(f"cannot read mask {path}: not an integer NIfTI on the folder's {shape[::-1]} grid")
    dtype = np.dtype(h["endian"] + _NIFTI_INTS[h["datatype"]])
    with gzip.open(path, "rb") as f:
        f.seek(int(h["vox_offset"]))
        data = f.read(int(np.prod(shape)) * dtype.itemsize)
    if len(data) != int(np.prod(shape)) * dtype.itemsize:
        raise ContrastSegError(f"cannot read mask {path}: the file ends before its voxels do")
    return np.frombuffer(data, dtype=dtype).reshape(shape)
