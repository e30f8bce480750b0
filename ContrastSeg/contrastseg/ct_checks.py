"""The checks an input CT passes before anything is computed from it.

`io.read_image` runs them for every command that reads a CT (`segment`, `dataset add`, training, validation),
so they live in one place: the raw NIfTI header (ITK silently reads a voxel size of 0 as 1 mm and replaces a
sheared sform by the qform), the DICOM series (Modality, readable files, slice positions), the voxel values
and the geometry. `check_memory` refuses a CT whose working grids would not fit in memory, before they are
allocated, naming the size asked for.

The limits accept every real CT in ../shared/data (0.57-3 mm voxels; 3 to 129 slices; 3 mm to 500 mm across):
a voxel spacing of 0.1-10 mm along every axis, at least 2 voxels along every axis and 50 mm across two of
them, at most 2000 mm along any.
"""

from __future__ import annotations

import gzip
import os
import struct
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from .errors import ContrastSegError

MIN_SPACING_MM = 0.1  # below: micro-CT or a header in the wrong unit
MAX_SPACING_MM = 10.0  # above: not a diagnostic CT (the thickest clinical slices are 10 mm)
MIN_FIELD_MM = 50.0  # at least two axes must cover this much: a body cross-section, not a sliver
MAX_EXTENT_MM = 2000.0  # a whole-body CT is under 2 m along every axis
ORTHONORMAL_TOLERANCE = 1e-3


# --- NIfTI header ------------------------------------------------------------------------------------------

def nifti_header(path: str | os.PathLike) -> dict | None:
    """The fields of a NIfTI-1 or NIfTI-2 header that ITK does not pass on faithfully; None for other formats."""
    name = str(path).lower()
    if not name.endswith((".nii", ".nii.gz")):
        return None
    try:
        with (gzip.open if name.endswith(".gz") else open)(path, "rb") as f:
            raw = f.read(540)
    except (OSError, EOFError):
        return None  # the reader says what is wrong with the file
    for e in "<>":
        if len(raw) >= 348 and struct.unpack_from(e + "i", raw, 0)[0] == 348:
            return {"endian": e, "datatype": struct.unpack_from(e + "h", raw, 70)[0],
                    "dim": list(struct.unpack_from(e + "8h", raw, 40)), "bitpix": struct.unpack_from(e + "h", raw, 72)[0],
                    "pixdim": list(struct.unpack_from(e + "8f", raw, 76)), "vox_offset": struct.unpack_from(e + "f", raw, 108)[0],
                    "qform_code": struct.unpack_from(e + "h", raw, 252)[0], "sform_code": struct.unpack_from(e + "h", raw, 254)[0],
                    "srow": np.array(struct.unpack_from(e + "12f", raw, 280), dtype=float).reshape(3, 4)}
        if len(raw) >= 540 and struct.unpack_from(e + "i", raw, 0)[0] == 540:
            return {"endian": e, "datatype": struct.unpack_from(e + "h", raw, 12)[0],
                    "dim": list(struct.unpack_from(e + "8q", raw, 16)), "bitpix": struct.unpack_from(e + "h", raw, 14)[0],
                    "pixdim": list(struct.unpack_from(e + "8d", raw, 104)), "vox_offset": struct.unpack_from(e + "q", raw, 168)[0],
                    "qform_code": struct.unpack_from(e + "i", raw, 344)[0], "sform_code": struct.unpack_from(e + "i", raw, 348)[0],
                    "srow": np.array(struct.unpack_from(e + "12d", raw, 400), dtype=float).reshape(3, 4)}
    return None


def check_nifti_header(path: str | os.PathLike) -> None:
    """Refuse a NIfTI whose voxel size is 0 (ITK would read 1 mm) or whose sform axes are not orthonormal."""
    h = nifti_header(path)
    if h is None:
        return
    ndim = max(0, min(int(h["dim"][0]), 3))
    for axis in range(1, ndim + 1):
        value = h["pixdim"][axis]
        if not np.isfinite(value) or value == 0:
            raise ContrastSegError(
                f"{path} has a voxel size of {value:g} along axis {axis} in its NIfTI header (pixdim[{axis}]); "
                "fix the header: ContrastSeg will not guess the size (ITK would read it as 1 mm)")
    if h["sform_code"] > 0 and ndim == 3:
        check_orthonormal(h["srow"][:, :3], f"{path} (its NIfTI sform)")
    _check_nifti_floats(path, h)


NIFTI_FLOATS = {16: "f4", 64: "f8"}


def _check_nifti_floats(path, h: dict) -> None:
    """ITK reads a NIfTI's NaN voxels as 0: count the non-finite values in the file itself."""
    if h["datatype"] not in NIFTI_FLOATS:
        return
    dtype = np.dtype(h["endian"] + NIFTI_FLOATS[h["datatype"]])
    nan = inf = 0
    with (gzip.open if str(path).lower().endswith(".gz") else open)(path, "rb") as f:
        f.seek(int(h["vox_offset"]))
        rest = b""
        while chunk := f.read(1 << 24):
            chunk = rest + chunk
            cut = len(chunk) - len(chunk) % dtype.itemsize
            values, rest = np.frombuffer(chunk[:cut], dtype=dtype), chunk[cut:]
            bad = ~np.isfinite(values)
            if bad.any():
                n = int(np.isnan(values).sum())
                nan, inf = nan + n, inf + int(bad.sum()) - n
    _refuse_non_finite(path, nan, inf)


def _refuse_non_finite(source, nan: int, inf: int) -> None:
    if nan or inf:
        raise ContrastSegError(f"{source} holds {nan} NaN and {inf} infinite voxel values; a CT holds finite "
                               "Hounsfield units: fix or re-export it")


def check_orthonormal(matrix: np.ndarray, source: str) -> None:
    """Columns of `matrix` (scaled axes allowed) must be perpendicular: a sheared grid is refused."""
    m = np.asarray(matrix, dtype=float)
    norms = np.linalg.norm(m, axis=0)
    if not np.all(np.isfinite(m)) or np.any(norms == 0):
        raise ContrastSegError(f"{source} has a degenerate direction matrix (an axis of length 0 or not a number); "
                               "fix the header")
    unit = m / norms
    off = np.abs(unit.T @ unit - np.eye(3)).max()
    if off > ORTHONORMAL_TOLERANCE:
        angle = float(np.degrees(np.arcsin(np.clip(off, 0, 1))))
        raise ContrastSegError(
            f"{source} has a non-orthonormal direction (its axes are sheared by about {angle:.1f} degrees); "
            "ContrastSeg refuses it rather than resample: resample the CT onto an orthonormal grid first")


# --- DICOM series ------------------------------------------------------------------------------------------

def _looks_dicom(path: Path) -> bool:
    if path.suffix.lower() in (".dcm", ".dicom", ".ima"):
        return True
    try:
        with open(path, "rb") as f:
            return f.read(132)[128:] == b"DICM"
    except OSError:
        return True


def _floats(text: str) -> list[float]:
    return [float(v) for v in text.replace(" ", "").split("\\") if v]


def check_dicom_series(folder: Path, files: list[str]) -> None:
    """One CT series, whole: every DICOM file of the folder readable and in it, Modality CT (where the tag is
    present), one orientation, and slices at uniform steps along the slice normal (none missing, none twice)."""
    members = {os.path.realpath(f) for f in files}
    unreadable = sorted(p.name for p in folder.iterdir()
                        if p.is_file() and not p.name.startswith(".") and p.name.upper() != "DICOMDIR"
                        and os.path.realpath(p) not in members and _looks_dicom(p))
    if unreadable:
        shown = ", ".join(unreadable[:5]) + (f" and {len(unreadable) - 5} more" if len(unreadable) > 5 else "")
        raise ContrastSegError(f"{folder}: cannot read {len(unreadable)} DICOM file(s) of the series ({shown}); "
                               "they are truncated or corrupt: replace or remove them")
    names, modality, positions, orientations, pixel = [], set(), [], [], None
    for f in files:
        reader = sitk.ImageFileReader()
        reader.SetImageIO("GDCMImageIO")
        reader.SetFileName(f)
        try:
            reader.ReadImageInformation()
        except RuntimeError:
            raise ContrastSegError(f"{folder}: cannot read the DICOM file {Path(f).name}; it is truncated or "
                                   "corrupt: replace or remove it") from None
        get = lambda tag: reader.GetMetaData(tag).strip() if reader.HasMetaDataKey(tag) else ""  # noqa: E731
        names.append(Path(f).name)
        if get("0008|0060"):
            modality.add(get("0008|0060").upper())
        try:
            positions.append(_floats(get("0020|0032")))
            orientations.append(_floats(get("0020|0037")))
            pixel = pixel or _floats(get("0028|0030"))
        except ValueError:
            raise ContrastSegError(f"{folder}: {Path(f).name} has an unreadable slice position or orientation") from None
    if modality - {"CT"}:
        raise ContrastSegError(f"{folder} is a DICOM series of Modality {', '.join(sorted(modality - {'CT'}))}, not CT; "
                               "ContrastSeg segments CT only")
    if len(files) < 2 or any(len(p) != 3 for p in positions) or any(len(o) != 6 for o in orientations):
        return  # one slice (refused as not 3D), or no geometry tags: ITK's own spacing applies
    orient = np.array(orientations)
    if np.abs(orient - orient[0]).max() > 1e-3:
        raise ContrastSegError(f"{folder}: the slices do not share one orientation (ImageOrientationPatient); "
                               "it is not one volume")
    normal = np.cross(orient[0, :3], orient[0, 3:])
    pos = np.array(positions)
    z = pos @ normal
    order = np.argsort(z, kind="stable")
    z, pos, names = z[order], pos[order], [names[i] for i in order]
    steps = np.diff(z)
    twice = np.nonzero(steps < 1e-3)[0]
    if len(twice):
        i = twice[0]
        raise ContrastSegError(f"{folder}: {names[i]} and {names[i + 1]} are at the same slice position "
                               f"({z[i]:.2f} mm): a slice is there twice")
    step = float(np.median(steps))
    problems = []
    for i in np.nonzero(np.abs(steps - step) > max(0.05 * step, 0.01))[0]:
        ratio = steps[i] / step
        if abs(ratio - round(ratio)) < 0.1 and round(ratio) >= 2:
            problems.append(f"{round(ratio) - 1} slice(s) missing between {names[i]} ({z[i]:.2f} mm) and "
                            f"{names[i + 1]} ({z[i + 1]:.2f} mm)")
        else:
            problems.append(f"a step of {steps[i]:.2f} mm between {names[i]} and {names[i + 1]}")
    if problems:
        more = f" and {len(problems) - 3} more" if len(problems) > 3 else ""
        raise ContrastSegError(f"{folder}: the slices are not evenly spaced ({step:.2f} mm apart, but "
                               f"{'; '.join(problems[:3])}{more}); the series is incomplete: export it again")
    drift = np.linalg.norm((pos - np.outer(z, normal)) - (pos[0] - z[0] * normal), axis=1).max()
    if drift > 0.5 * min(pixel or [1.0]):
        raise ContrastSegError(f"{folder}: successive slices shift sideways by up to {drift:.1f} mm (a tilted "
                               "gantry?); ContrastSeg refuses this sheared grid: resample it onto an orthonormal one")


# --- values and geometry -----------------------------------------------------------------------------------

def check_values(image: sitk.Image, source) -> None:
    """Every voxel a finite number."""
    arr = sitk.GetArrayViewFromImage(image)
    if arr.dtype.kind != "f":
        return
    finite = np.isfinite(arr)
    if not finite.all():
        nan = int(np.isnan(arr).sum())
        _refuse_non_finite(source, nan, int(arr.size - finite.sum() - nan))


def _mm(values) -> str:
    return " x ".join(f"{v:g}" for v in np.round(values, 3))


def check_geometry(image: sitk.Image, source) -> None:
    """Spacing within the plausible CT range, orthonormal direction, an extent between a sliver and 2 m."""
    spacing = np.array(image.GetSpacing(), dtype=float)
    if not np.all(np.isfinite(spacing)) or np.any(spacing <= 0):
        raise ContrastSegError(f"{source} has a voxel spacing of {_mm(spacing)} mm; a spacing must be positive: fix the header")
    if np.any(spacing < MIN_SPACING_MM) or np.any(spacing > MAX_SPACING_MM):
        raise ContrastSegError(
            f"{source} has a voxel spacing of {_mm(spacing)} mm, outside the plausible CT range of "
            f"{MIN_SPACING_MM:g}-{MAX_SPACING_MM:g} mm; check the header (a wrong unit?)")
    check_orthonormal(np.array(image.GetDirection(), dtype=float).reshape(3, 3), str(source))
    extent = np.array(image.GetSize()) * spacing
    if np.any(extent > MAX_EXTENT_MM):
        raise ContrastSegError(f"{source} covers {_mm(extent)} mm, more than the {MAX_EXTENT_MM:g} mm a CT covers "
                               "along an axis; check its voxel spacing")
    if np.sort(extent)[1] < MIN_FIELD_MM:
        raise ContrastSegError(f"{source} covers only {_mm(extent)} mm; a CT must cover at least {MIN_FIELD_MM:g} mm "
                               "across two axes")


# --- memory ------------------------------------------------------------------------------------------------

def available_memory() -> int | None:
    """Bytes this process can still allocate (the smaller of free RAM and a cgroup limit); None if unknown."""
    found = []
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    found.append(int(line.split()[1]) * 1024)
    except (OSError, ValueError):
        pass
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if limit != "max":
            found.append(int(limit) - int(Path("/sys/fs/cgroup/memory.current").read_text()))
    except (OSError, ValueError):
        pass
    if not found and os.name == "nt":
        try:
            import ctypes

            class Status(ctypes.Structure):
                _fields_ = [("length", ctypes.c_ulong), ("load", ctypes.c_ulong)] + [
                    (n, ctypes.c_ulonglong) for n in ("total", "avail", "total_page", "avail_page", "total_virt", "avail_virt", "ext")]

            status = Status()
            status.length = ctypes.sizeof(Status)
            if ctypes.windll.kernel32.GlobalMemoryStatusEx(ctypes.byref(status)):
                found.append(int(status.avail))
        except (AttributeError, OSError):
            pass
    if not found:
        try:
            found.append(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
        except (AttributeError, ValueError, OSError):
            return None
    return max(0, min(found))


def _canonical(image: sitk.Image) -> tuple[np.ndarray, np.ndarray]:
    """Size and spacing along the canonical axes (x, y, z as `preprocess.to_canonical` orders them)."""
    direction = np.abs(np.array(image.GetDirection(), dtype=float).reshape(3, 3))
    axis = [int(np.argmax(direction[i])) for i in range(3)]
    if len(set(axis)) < 3:
        axis = [0, 1, 2]
    return np.array(image.GetSize())[axis], np.array(image.GetSpacing())[axis]


def working_grids(image: sitk.Image, card: dict, refined: bool = True) -> dict[str, tuple[int, int, int]]:
    """The voxel sizes (x, y, z) of the grids `infer.segment` resamples `image` onto, computed, not allocated."""
    size, spacing = _canonical(image)
    extent = size * spacing
    grids = {"coarse": tuple(int(v) for v in np.maximum(1, np.round(extent / np.array(card["coarse"]["spacing"], dtype=float))))}
    if refined and card.get("refined"):
        inplane = float(card["refined"].get("inplane_spacing", 1.5))
        grids["refined"] = (int(max(1, round(extent[0] / inplane))), int(max(1, round(extent[1] / inplane))), int(size[2]))
    return grids


def memory_needed(image: sitk.Image, card: dict, refined: bool = True) -> tuple[int, dict]:
    """Bytes `infer.segment` holds at its peak for `image` (an estimate, measured on the default model)."""
    grids = working_grids(image, card, refined)
    coarse = int(np.prod(grids["coarse"], dtype=np.int64))
    width = int((card["coarse"].get("channels") or [16])[0])
    window = coarse if coarse <= 192 ** 3 else 2 * 128 ** 3  # larger volumes go through a sliding window
    need = coarse * (8 + 3 * 14 * 4) + window * width * 4 * 12  # grid, probabilities/logits, activations
    if "refined" in grids:  # independent of the organ count: a running argmax, and votes in one organ's box
        fine = int(np.prod(grids["refined"], dtype=np.int64))
        need += fine * 17 + 2 ** 28  # image, attention, its running argmax, fused votes; patch activations
    need += int(np.prod(image.GetSize(), dtype=np.int64)) * 3  # the label maps on the input grid
    return need, grids


def _gb(n: int) -> str:
    return f"{n / 2 ** 30:.1f} GB"


def check_memory(image: sitk.Image, card: dict, refined: bool = True, source="the CT") -> None:
    """Refuse, before allocating anything, a CT whose working grids need more memory than is available, or
    whose coarse grid is too small for the coarse network (it needs more than one voxel at its deepest level)."""
    need, grids = memory_needed(image, card, refined)
    shown = ", ".join(f"{k} grid {'x'.join(map(str, v))} voxels" for k, v in grids.items())
    divisor = 2 ** (len(card["coarse"].get("channels") or [0, 0, 0, 0]) - 1)
    if max(grids["coarse"]) <= divisor:
        raise ContrastSegError(f"{source} is too small for this model: its coarse grid would be {shown.split(',')[0]}; "
                               f"the coarse network needs more than {divisor} voxels along an axis")
    free = available_memory()
    if free is not None and need > free:
        raise ContrastSegError(f"segmenting {source} would need about {_gb(need)} of memory ({shown}), but only "
                               f"{_gb(free)} is available; crop the CT or free memory")
