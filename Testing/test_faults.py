"""Faults and bad input (issue 8, items 1 and 2): no output overwrites an input, a failed write leaves nothing
behind and says why in one sentence, output folders are checked before computing, and every bad CT is
refused in one sentence by the checks `io.read_image` runs for every command.

Most cases call the CLI in this process (`contrastseg.cli.main`), which returns the exit code; refusals
happen before any network runs, so they take well under a second each.
"""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from contrastseg import ct_checks
from contrastseg.cli import main
from contrastseg.errors import ContrastSegError
from contrastseg.io import read_image
from realdata import DATA, DCMQI, IRCAD, TS, needs_data, needs_default_model

pytestmark = [needs_data, needs_default_model()]
SMALL = TS / "example_ct_sm.nii.gz"


def digest(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def refused(capsys, argv, pattern) -> str:
    """Run the CLI in-process: exit code 2 and exactly one line on stderr, naming `pattern`."""
    rc = main([*map(str, argv), "--threads", "1", "--progress", "none"] if argv[0] == "segment" else list(map(str, argv)))
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert rc == 2, err
    assert len(lines) == 1 and "error:" in lines[0] and "Traceback" not in err, err
    assert pattern in lines[0], lines[0]
    return lines[0]


def leftovers(folder: Path, keep=()) -> list[str]:
    return sorted(p.name for p in Path(folder).iterdir() if p.name not in keep)


# --- item 1: outputs ---------------------------------------------------------------------------------------

@pytest.fixture()
def ct(tmp_path, monkeypatch):
    shutil.copy(SMALL, tmp_path / "ct.nii.gz")
    (tmp_path / "ct.nii.gz").chmod(0o644)
    os.symlink("ct.nii.gz", tmp_path / "link.nii.gz")
    (tmp_path / "sub").mkdir()
    monkeypatch.chdir(tmp_path)
    return tmp_path / "ct.nii.gz"


@pytest.mark.parametrize("options", [
    ["-o", "ct.nii.gz"],
    ["-o", "link.nii.gz"],  # a symlink to the input
    ["-o", "sub/../ct.nii.gz"],  # a relative path that leads back to it
    ["-o", "out.nii.gz", "--overlay", "ct.nii.gz"],
    ["-o", "out.nii.gz", "--timings", "link.nii.gz"],
    ["-o", "out.nii.gz", "--coarse-output", "./ct.nii.gz"],
])
def test_no_output_overwrites_the_input(ct, capsys, options):
    before = digest(ct)
    refused(capsys, ["segment", "ct.nii.gz", *options], "is the input")
    assert digest(ct) == before and os.path.islink("link.nii.gz")
    assert leftovers(ct.parent) == ["ct.nii.gz", "link.nii.gz", "sub"]


def test_output_is_input_exit_code_from_the_shell(ct):
    before = digest(ct)
    proc = subprocess.run([sys.executable, "-m", "contrastseg.cli", "segment", str(ct), "-o", str(ct.parent / "link.nii.gz"),
                           "--progress", "none"], capture_output=True, text=True)
    assert proc.returncode == 2 and "never overwrites an input" in proc.stderr and "Traceback" not in proc.stderr
    assert digest(ct) == before


def test_outputs_inside_a_dicom_input_or_colliding_are_refused(tmp_path, capsys, ct):
    series = tmp_path / "series"
    shutil.copytree(DCMQI / "ct-3slice", series)
    refused(capsys, ["segment", series, "-o", series / "seg.nii.gz"], "inside the input folder")
    assert sorted(p.name for p in series.iterdir()) == ["01.dcm", "02.dcm", "03.dcm"]
    # the organ table of -o (out.json) and --timings out.json would overwrite each other
    refused(capsys, ["segment", "ct.nii.gz", "-o", "out.nii.gz", "--timings", "out.json"], "are the same file")


@pytest.fixture()
def readonly(tmp_path):
    """A folder nobody may write to: a read-only bind mount for root (who ignores file modes), else mode 555."""
    folder = tmp_path / "ro"
    folder.mkdir()
    if os.geteuid() != 0:
        folder.chmod(0o555)
        yield folder
        folder.chmod(0o755)
        return
    ok = subprocess.run(["mount", "--bind", str(folder), str(folder)], capture_output=True).returncode == 0
    if ok and subprocess.run(["mount", "-o", "remount,ro,bind", str(folder)], capture_output=True).returncode != 0:
        subprocess.run(["umount", str(folder)])
        ok = False
    if not ok:
        pytest.skip("running as root without permission to mount: cannot make a read-only folder here")
    yield folder
    subprocess.run(["umount", str(folder)])


def test_unwritable_output_folder_is_refused_before_computing(readonly, tmp_path, capsys, monkeypatch):
    import contrastseg.io

    def no_reading(*a, **k):
        raise AssertionError("the CT was read: the output folder was not checked first")

    monkeypatch.setattr(contrastseg.io, "read_image", no_reading)
    line = refused(capsys, ["segment", SMALL, "-o", readonly / "out.nii.gz"], "cannot write output")
    assert "read-only" in line or "no permission" in line
    (tmp_path / "file").write_text("x")
    refused(capsys, ["segment", SMALL, "-o", tmp_path / "file" / "out.nii.gz"], "is not a folder")
    assert leftovers(readonly) == []


def _enospc(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def _writers(folder: Path):
    import matplotlib.pyplot as plt
    import torch

    from contrastseg.io import write_json, write_labels
    from contrastseg.outputs import write_safetensors
    from contrastseg.plots import save_figure
    from contrastseg.train.checkpoint import save_checkpoint

    labels = sitk.Image(40, 40, 8, sitk.sitkUInt8)
    net = torch.nn.Linear(2, 2)
    return {
        "json": (lambda: write_json({"a": 1}, folder / "out.json")),
        "png": (lambda: save_figure(plt.figure(), folder / "out.png")),
        "safetensors": (lambda: write_safetensors({"w": torch.zeros(3)}, folder / "out.safetensors")),
        "labels": (lambda: write_labels(labels, folder / "out.nii.gz", [6])),
        "checkpoint": (lambda: save_checkpoint(folder, net, torch.optim.SGD(net.parameters(), lr=0.1), 1)),
    }


@pytest.mark.parametrize("kind", ["json", "png", "safetensors", "labels", "checkpoint"])
def test_full_disk_leaves_nothing_and_says_so(tmp_path, monkeypatch, kind):
    write = _writers(tmp_path)[kind]
    monkeypatch.setattr(os, "fsync", _enospc)  # every writer flushes to disk before the rename
    with pytest.raises(ContrastSegError, match="is full") as err:
        write()
    assert "\n" not in str(err.value)
    assert leftovers(tmp_path) == []  # neither the final name nor a temporary file


def test_itk_silently_truncated_label_map_is_caught(ct, monkeypatch, capsys):
    """ITK's NIfTI writer prints a message and returns normally on a full disk: the read-back must notice."""
    real = sitk.WriteImage

    def short_write(image, path, *args, **kwargs):
        real(image, path, *args, **kwargs)
        data = Path(path).read_bytes()
        Path(path).write_bytes(data[: len(data) // 2])

    monkeypatch.setattr(sitk, "WriteImage", short_write)
    refused(capsys, ["segment", "ct.nii.gz", "-o", "out.nii.gz", "--coarse-only"], "came back incomplete")
    assert leftovers(ct.parent) == ["ct.nii.gz", "link.nii.gz", "sub"]


@pytest.fixture()
def full_disk(tmp_path):
    """A 1 MB tmpfs filled to its last page (root only; skipped where mounting is not allowed)."""
    folder = tmp_path / "small"
    folder.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(folder)], capture_output=True).returncode:
        pytest.skip("cannot mount a small tmpfs here (needs root): the simulated full-disk tests still ran")
    try:
        free = shutil.disk_usage(folder).free
        (folder / "filler").write_bytes(b"\0" * (free - 4096))
        yield folder
    finally:
        subprocess.run(["umount", str(folder)])


def test_real_full_disk_during_segment(full_disk):
    proc = subprocess.run([sys.executable, "-m", "contrastseg.cli", "segment", str(SMALL), "-o", str(full_disk / "out.nii.gz"),
                           "--coarse-only", "--threads", "1", "--progress", "none"], capture_output=True, text=True)
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert proc.returncode == 2 and len(lines) == 1 and "is full" in lines[0], proc.stderr
    assert leftovers(full_disk) == ["filler"]


# --- item 2: inputs ----------------------------------------------------------------------------------------

def _nifti(tmp_path: Path, name: str, edit=None, array_edit=None, spacing=None) -> Path:
    img = sitk.ReadImage(str(SMALL), sitk.sitkFloat32)
    if array_edit is not None:
        arr = sitk.GetArrayFromImage(img)
        array_edit(arr)
        new = sitk.GetImageFromArray(arr)
        new.CopyInformation(img)
        img = new
    if spacing is not None:
        img.SetSpacing(spacing)
    path = tmp_path / name
    sitk.WriteImage(img, str(path))
    if edit is not None:  # patch the raw NIfTI-1 header (uncompressed .nii)
        raw = bytearray(path.read_bytes())
        edit(raw)
        path.write_bytes(bytes(raw))
    return path


def _sheared_sform(raw: bytearray) -> None:
    srow = np.array(struct.unpack_from("<12f", raw, 280)).reshape(3, 4)
    srow[0, 1] = 1.5  # x moves with y: a sheared grid
    struct.pack_into("<12f", raw, 280, *srow.ravel())


def _series(tmp_path: Path, edit) -> Path:
    """A copy of the 20-slice TotalSegmentator DICOM series, changed by `edit(folder, files sorted by z)`."""
    folder = tmp_path / "series"
    shutil.copytree(TS / "example_ct_dicom", folder)
    files = sorted(folder.iterdir(), key=lambda f: float(pydicom.dcmread(f, stop_before_pixels=True).ImagePositionPatient[2]))
    edit(folder, files)
    return folder


def _modality_mr(folder, files):
    for f in files:
        ds = pydicom.dcmread(f)
        ds.Modality = "MR"
        ds.save_as(f)


BAD_CTS = {
    "nan": (lambda t: _nifti(t, "nan.nii.gz", array_edit=lambda a: a.__setitem__((15, 50, slice(10, 20)), np.nan)),
            "10 NaN and 0 infinite"),
    "inf": (lambda t: _nifti(t, "inf.nii.gz", array_edit=lambda a: a.__setitem__((3, 3, 3), np.inf)), "1 infinite"),
    "pixdim0": (lambda t: _nifti(t, "pixdim0.nii", edit=lambda r: struct.pack_into("<f", r, 76 + 12, 0.0)),
                "voxel size of 0 along axis 3"),
    "spacing20": (lambda t: _nifti(t, "coarse.nii.gz", spacing=(20.0, 20.0, 20.0)), "outside the plausible CT range"),
    "spacing0.01": (lambda t: _nifti(t, "fine.nii.gz", spacing=(0.01, 0.01, 0.01)), "outside the plausible CT range"),
    "sliver": (lambda t: _nifti(t, "sliver.nii.gz", spacing=(0.4, 0.4, 0.4)), "must cover at least 50 mm"),
    "sheared_nifti": (lambda t: _nifti(t, "sheared.nii", edit=_sheared_sform), "non-orthonormal direction"),
    "dicom_missing": (lambda t: _series(t, lambda d, f: f[10].unlink()), "1 slice(s) missing between"),
    "dicom_duplicate": (lambda t: _series(t, lambda d, f: shutil.copy(f[7], d / "copy.dcm")), "a slice is there twice"),
    "dicom_truncated": (lambda t: _series(t, lambda d, f: f[5].write_bytes(f[5].read_bytes()[:40000])),
                        "truncated or corrupt"),
    "dicom_mr": (lambda t: _series(t, _modality_mr), "Modality MR, not CT"),
}


@pytest.mark.parametrize("case", list(BAD_CTS))
def test_bad_ct_is_refused_by_segment(tmp_path, capsys, case):
    make, pattern = BAD_CTS[case]
    source = make(tmp_path)
    refused(capsys, ["segment", source, "-o", tmp_path / "out.nii.gz"], pattern)
    assert not (tmp_path / "out.nii.gz").exists()


def test_sheared_mha_direction_is_refused(tmp_path):
    img = sitk.ReadImage(str(SMALL))
    img.SetDirection((1, 0.5, 0, 0, 1, 0, 0, 0, 1))
    sitk.WriteImage(img, str(tmp_path / "sheared.mha"))
    with pytest.raises(ContrastSegError, match="non-orthonormal direction .* refuses it rather than resample"):
        read_image(tmp_path / "sheared.mha")


def test_dataset_add_runs_the_same_checks(tmp_path, capsys):
    ds = tmp_path / "ds"
    for case in ("nan", "dicom_mr"):
        (tmp_path / case).mkdir()
        make, pattern = BAD_CTS[case]
        refused(capsys, ["dataset", "add", make(tmp_path / case), "--dataset", ds], pattern)
    assert not (ds / "images").exists() or leftovers(ds / "images") == []


def test_memory_guard_names_the_size_before_allocating(tmp_path, capsys, monkeypatch):
    big = _nifti(tmp_path, "big.nii.gz", spacing=(10.0, 10.0, 10.0))  # 1.2 x 1 x 0.3 m: within every limit
    monkeypatch.setattr(ct_checks, "available_memory", lambda: 1 << 30)
    line = refused(capsys, ["segment", big, "-o", tmp_path / "out.nii.gz"], "would need about")
    assert "coarse grid 407x337x100 voxels" in line and "only 1.0 GB is available" in line


@pytest.mark.parametrize("source", [TS / "example_ct.nii.gz", TS / "example_ct_dicom", DCMQI / "ct-3slice",
                                    IRCAD / "PATIENT_DICOM", DATA / "chaos-ct-case1" / "DICOM_anon"],
                         ids=["ts-ct", "ts-dicom", "dcmqi-3slice", "ircad", "chaos"])
def test_every_real_ct_still_reads(source):
    if not source.exists():
        pytest.skip(f"{source} is not in ../shared/data")
    image = read_image(source)
    assert min(image.GetSize()) >= 3
