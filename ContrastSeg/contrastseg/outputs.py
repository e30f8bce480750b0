"""Every file the engine writes (images, JSON, PNG, safetensors) goes through `atomic_path`, and every command
checks its output paths with `check_outputs` before it computes anything.

`atomic_path` writes under a temporary name in the same folder, flushes and fsyncs it, reads it back (the
size, and the header of an image; a NIfTI's whole payload, since ITK's NIfTI writer does not report a full
disk), and only then renames it onto the final name. An OSError (full disk, read-only folder, no permission,
not a folder) becomes one ContrastSegError sentence, and the temporary file is removed: a failed write
leaves nothing behind.
"""

from __future__ import annotations

import errno
import gzip
import json
import math
import os
import re
import shutil
import sys
import tempfile
import zlib
from contextlib import contextmanager
from pathlib import Path

from .errors import ContrastSegError

IMAGE_SUFFIXES = (".nii.gz", ".nii", ".seg.nrrd", ".nrrd", ".mha", ".mhd")
# .mhd keeps its voxels in a second file, which cannot be renamed into place with it
WRITABLE_IMAGE_SUFFIXES = (".nii.gz", ".nii", ".seg.nrrd", ".nrrd", ".mha")


def split_suffix(path: str | os.PathLike) -> tuple[str, str]:
    """Split a path into (stem, known image suffix); '.nii.gz' and '.seg.nrrd' count as one suffix."""
    name = str(path)
    for suffix in IMAGE_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)], suffix
    return os.path.splitext(name)


class WriteError(ContrastSegError, OSError):
    """A file could not be written (full disk, read-only folder, ...), as one sentence. It is also an OSError,
    so code that handles OSError around a write still does."""


def _reason(err: OSError, folder: Path) -> str:
    """What an OSError means for the user, in a few words."""
    code = err.errno
    if code == errno.ENOSPC:
        return f"the disk holding {folder} is full"
    if code == getattr(errno, "EDQUOT", -1):
        return f"the disk quota for {folder} is used up"
    if code == errno.EROFS:
        return f"{folder} is on a read-only file system"
    if code in (errno.EACCES, errno.EPERM):
        return f"no permission to write in {folder}"
    if code == errno.ENOTDIR:
        return f"{folder} is not a folder"
    if code == errno.EISDIR:
        return "a folder of that name is in the way"
    if code == errno.ENOENT:
        return f"{err.filename} does not exist" if err.filename else f"{folder} does not exist"
    return err.strerror or str(err)


def os_error_message(err: OSError, path: str | os.PathLike) -> str:
    path = Path(path)
    return f"cannot write {path}: {_reason(err, path.parent)}"


def check_output(path: str | os.PathLike, what: str = "output") -> Path:
    """Refuse an output path whose folder is missing, not a folder or not writable (tried with a probe file)."""
    path = Path(path)
    folder = path.parent
    if not folder.exists():
        raise ContrastSegError(f"the folder of {what} '{path}' does not exist")
    if not folder.is_dir():
        raise ContrastSegError(f"the folder of {what} '{path}' is not a folder ({folder} is a file)")
    if path.is_dir():
        raise ContrastSegError(f"{what} '{path}' is a folder; give a file name")
    try:
        fd, probe = tempfile.mkstemp(prefix=".contrastseg-probe.", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        raise ContrastSegError(f"cannot write {what} '{path}': {_reason(err, folder)}") from None
    return path


def check_label_output(path: str | os.PathLike, what: str = "output") -> None:
    """A label map output's format, by its extension, before anything is computed (not after, at the write)."""
    if split_suffix(Path(path).name)[1].lower() not in WRITABLE_IMAGE_SUFFIXES:
        raise ContrastSegError(f"{what} '{path}' has an unsupported extension; use .nii.gz, .nii, .nrrd, .seg.nrrd or .mha")


def _real(path: str | os.PathLike) -> str:
    return os.path.normcase(os.path.realpath(os.path.abspath(path)))


def check_outputs(outputs: dict[str, str | os.PathLike | None], inputs: list[str | os.PathLike | None]) -> None:
    """Before any computation: no output is an input (after resolving symlinks and relative paths), none lies
    inside an input folder (a DICOM series, a model) or a folder ContrastSeg keeps (a model, a dataset, a run,
    the store: `guards.check_not_kept`), no two outputs name the same file, and every output folder exists and
    is writable."""
    from .guards import check_not_kept

    files, folders = {}, {}
    for inp in inputs:
        if inp is None:
            continue
        (folders if Path(inp).is_dir() else files)[_real(inp)] = Path(inp)
    seen: dict[str, str] = {}
    for what, out in outputs.items():
        if out is None:
            continue
        real = _real(out)
        hit = files.get(real)
        if hit is None and Path(out).exists():
            hit = next((p for p in files.values() if p.exists() and os.path.samefile(p, out)), None)
        if hit is not None:
            raise ContrastSegError(f"{what} '{out}' is the input '{hit}'; ContrastSeg never overwrites an input: "
                                   "choose another file name")
        for folder, given in folders.items():
            if real == folder or real.startswith(folder.rstrip(os.sep) + os.sep):
                raise ContrastSegError(f"{what} '{out}' is inside the input folder '{given}'; ContrastSeg never "
                                       "writes into an input: choose another folder")
        if real in seen:
            raise ContrastSegError(f"{seen[real]} and {what} are the same file '{out}'; give each its own name")
        seen[real] = what
        check_not_kept(out, what)
    for what, out in outputs.items():
        if out is not None:
            check_output(out, what)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDWR)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_folder(folder: Path) -> None:
    try:  # makes the rename itself durable; not possible on Windows
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class IncompleteFile(Exception):
    """A file read back after writing is not what was written (size, header or payload)."""


def _incomplete_message(path: Path, detail: str) -> str:
    try:
        free = shutil.disk_usage(path.parent).free
    except OSError:
        free = None
    if free is not None and free < (1 << 20):
        return f"cannot write {path}: the disk holding {path.parent} is full (the file came back incomplete)"
    return f"cannot write {path}: the file came back incomplete or corrupt ({detail})"


def _itk_error(err: RuntimeError) -> bool:
    text = str(err)
    return "ITK" in text or "SimpleITK" in text or "nrrd" in text


def _first_line(err: Exception) -> str:
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
    useful = [ln for ln in lines if "Description" in ln or "ERROR" in ln.upper() or "Reason" in ln]
    return (useful or lines or ["unknown error"])[-1][:200]


@contextmanager
def atomic_path(path: str | os.PathLike):
    """Yield a temporary path beside `path` (same suffix) and move it onto `path` only if the block succeeds
    and the file reads back complete.

    Readers never see a half-written file, and a failure (full disk, read-only folder, bad data) leaves no
    file behind: neither under the final name nor under the temporary one.
    """
    path = Path(path)
    if not path.parent.exists():
        raise ContrastSegError(f"output folder does not exist: {path.parent}")
    stem, suffix = split_suffix(path.name)
    try:
        fd, name = tempfile.mkstemp(prefix=f".{stem}.", suffix=f".tmp{suffix}", dir=path.parent)
        os.close(fd)
    except OSError as err:
        raise WriteError(os_error_message(err, path)) from None
    tmp = Path(name)
    try:
        yield tmp
        _fsync(tmp)
        verify_file(tmp, path)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600 files; outputs get the user's usual mode
        os.replace(tmp, path)
        _fsync_folder(path.parent)
    except ContrastSegError:  # already a sentence (e.g. a nested write of a second file)
        raise
    except OSError as err:
        raise WriteError(os_error_message(err, path)) from None
    except IncompleteFile as err:
        raise WriteError(_incomplete_message(path, str(err))) from None
    except RuntimeError as err:
        if not _itk_error(err):
            raise
        raise WriteError(_incomplete_message(path, _first_line(err))) from None
    finally:
        try:
            if os.path.lexists(tmp):
                os.unlink(tmp)
        except OSError:
            pass


def verify_file(tmp: Path, final: Path) -> None:
    """Read a just-written file back by its final name's format; raise IncompleteFile if it is not whole."""
    kind = split_suffix(final.name)[1].lower()
    size = tmp.stat().st_size
    known = kind in IMAGE_SUFFIXES or kind in (".json", ".png", ".safetensors")
    if known and size == 0:
        raise IncompleteFile("it is empty")
    if kind in IMAGE_SUFFIXES:
        verify_image_file(tmp)
    elif kind == ".json":
        try:
            json.loads(tmp.read_bytes())
        except ValueError as err:
            raise IncompleteFile(f"not valid JSON: {err}") from None
    elif kind == ".png":
        with open(tmp, "rb") as f:
            head = f.read(8)
            f.seek(max(0, size - 8))
            tail = f.read(8)
        if head != b"\x89PNG\r\n\x1a\n" or tail != b"IEND\xaeB`\x82":
            raise IncompleteFile("the PNG has no end marker")
    elif kind == ".safetensors":
        try:
            safetensors_header(tmp)
        except ValueError as err:
            raise IncompleteFile(str(err)) from None


def verify_image_file(path: Path) -> None:
    """The image's header reads back, and its voxel payload is all there."""
    import SimpleITK as sitk

    from .ct_checks import nifti_header

    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as err:
        raise IncompleteFile(f"its header does not read back: {_first_line(err)}") from None
    try:
        header = nifti_header(path)
    except ContrastSegError as err:
        raise IncompleteFile(str(err)) from None
    if header is not None:  # ITK reads a short NIfTI payload as zeros: count the bytes
        dims = header["dim"][1:1 + header["dim"][0]]
        expected = int(header["vox_offset"]) + abs(math.prod(dims)) * header["bitpix"] // 8
        if str(path).lower().endswith(".gz"):
            got = 0
            try:
                with gzip.open(path, "rb") as f:
                    while chunk := f.read(1 << 22):
                        got += len(chunk)
            except (EOFError, OSError, zlib.error) as err:
                raise IncompleteFile(f"the compressed stream is cut off ({err})") from None
        else:
            got = path.stat().st_size
        if got < expected:
            raise IncompleteFile(f"{got} of {expected} bytes")
    else:  # NRRD and MetaImage readers fail on a short payload
        try:
            sitk.ReadImage(str(path))
        except RuntimeError as err:
            raise IncompleteFile(_first_line(err)) from None


def safetensors_header(path: str | os.PathLike) -> dict:
    """The JSON header of a safetensors file, after checking that the file holds exactly the bytes it names.

    Raises ValueError (truncated, padded, or not a safetensors file at all). Needs no torch.
    """
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise ValueError("too short for a safetensors file")
        n = int.from_bytes(head, "little")
        if n <= 0 or n > min(size - 8, 100 << 20):
            raise ValueError("not a safetensors file (bad header length)")
        try:
            header = json.loads(f.read(n))
        except (ValueError, UnicodeDecodeError):
            raise ValueError("not a safetensors file (header is not JSON)") from None
    if not isinstance(header, dict):
        raise ValueError("not a safetensors file (header is not a table of tensors)")
    try:
        end = max((int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"), default=0)
    except (KeyError, TypeError, IndexError, ValueError):
        raise ValueError("not a safetensors file (bad tensor table)") from None
    if 8 + n + end != size:
        raise ValueError(f"{size} bytes where the header names {8 + n + end}: truncated or padded")
    return header


@contextmanager
def captured_stderr():
    """Collect what C libraries print on file descriptor 2 (ITK's NIfTI writer reports a full disk only
    there); yields a list that holds the text afterwards."""
    box: list[str] = []
    try:
        sys.stderr.flush()
        saved = os.dup(2)
        sink = tempfile.TemporaryFile()
    except (OSError, ValueError, AttributeError):
        yield box
        return
    os.dup2(sink.fileno(), 2)
    try:
        yield box
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        try:
            sink.seek(0)
            box.append(sink.read().decode(errors="replace"))
        except OSError:
            box.append("")
        sink.close()


def write_json(data, path: str | os.PathLike) -> None:
    """Write JSON atomically (temporary file, fsync, read back, rename)."""
    with atomic_path(path) as tmp:
        with open(tmp, "w") as f:
            json.dump(data, f, indent=2)
            f.flush()
            os.fsync(f.fileno())


def write_safetensors(tensors: dict, path: str | os.PathLike, metadata: dict[str, str] | None = None) -> Path:
    """Write torch tensors as safetensors atomically; an I/O error becomes one sentence."""
    from safetensors.torch import save_file

    with atomic_path(path) as tmp:
        try:
            save_file(tensors, str(tmp), metadata=metadata)
        except OSError:
            raise
        except Exception as err:  # SafetensorError wraps the OS error in its message
            found = re.search(r"os error (\d+)", str(err))
            if found:
                code = int(found.group(1))
                raise OSError(code, os.strerror(code)) from None
            raise
    return Path(path)
