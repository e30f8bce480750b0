"""Every bad input to `contrastseg segment`: one clear sentence, exit code 2, and no output file left behind."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
import SimpleITK as sitk

from contrastseg.paths import default_model
from realdata import DCMQI, TS, needs_data, needs_default_model

pytestmark = [needs_data, needs_default_model()]


def run_segment(*args, out=None):
    cmd = [sys.executable, "-m", "contrastseg.cli", "segment", *map(str, args), "--threads", "1", "--progress", "none"]
    if out is not None:
        cmd += ["-o", str(out)]
    return subprocess.run(cmd, capture_output=True, text=True)


def assert_refused(proc, pattern, folder):
    assert proc.returncode == 2, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip() and not ln.startswith(("WARNING", "GDCM", "  "))]
    assert len(lines) == 1 and "error:" in lines[0], proc.stderr
    assert pattern in lines[0]
    assert "Traceback" not in proc.stderr
    leftovers = [p.name for p in folder.iterdir() if p.name.startswith(("out", ".out"))]
    assert leftovers == [], f"files left behind: {leftovers}"


@pytest.fixture()
def bad_inputs(tmp_path):
    arr = sitk.GetArrayFromImage(sitk.ReadImage(str(TS / "example_ct_sm.nii.gz")))
    sitk.WriteImage(sitk.GetImageFromArray(arr[12]), str(tmp_path / "slice2d.nii.gz"))
    scaled = ((arr - arr.min()) / (arr.max() - arr.min()) * 255).astype(np.uint8)
    sitk.WriteImage(sitk.GetImageFromArray(scaled), str(tmp_path / "png_like.nii.gz"))
    data = (TS / "example_ct_sm.nii.gz").read_bytes()
    (tmp_path / "truncated.nii.gz").write_bytes(data[: len(data) // 2])
    (tmp_path / "empty").mkdir()
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    for f in list((TS / "example_ct_dicom").iterdir())[:2] + list((DCMQI / "ct-3slice").iterdir()):
        shutil.copy(f, mixed / f"{f.parent.name}_{f.name}")
    return tmp_path


@pytest.mark.parametrize("name, pattern", [
    ("missing.nii.gz", "input not found"),
    ("truncated.nii.gz", "truncated or corrupt"),
    ("slice2d.nii.gz", "not a 3D volume"),
    ("png_like.nii.gz", "does not look like CT"),
    ("empty", "no DICOM series"),
    ("mixed", "holds 2 DICOM series"),
])
def test_bad_inputs_are_refused(bad_inputs, name, pattern):
    assert_refused(run_segment(bad_inputs / name, out=bad_inputs / "out.nii.gz"), pattern, bad_inputs)


def test_output_in_missing_folder_and_bad_extension(tmp_path):
    proc = run_segment(TS / "example_ct_sm.nii.gz", out=tmp_path / "nowhere" / "out.nii.gz")
    assert_refused(proc, "does not exist", tmp_path)
    assert_refused(run_segment(TS / "example_ct_sm.nii.gz", out=tmp_path / "out.png"), "unsupported extension", tmp_path)


def _copy_model(tmp_path, edit):
    folder = tmp_path / "model"
    shutil.copytree(default_model(), folder)
    card = json.loads((folder / "card.json").read_text())
    edit(card)
    (folder / "card.json").write_text(json.dumps(card))
    return folder


def test_model_for_another_architecture_is_refused(tmp_path):
    folder = _copy_model(tmp_path, lambda c: c["refined"].update(depth=34))
    proc = run_segment(TS / "example_ct_sm.nii.gz", "--model", folder, out=tmp_path / "out.nii.gz")
    assert_refused(proc, "for another architecture", tmp_path)


def test_model_for_another_organ_set_is_refused(tmp_path):
    folder = _copy_model(tmp_path, lambda c: c.update(organs=[1, 2, 3]))
    proc = run_segment(TS / "example_ct_sm.nii.gz", "--model", folder, "--organs", "liver", out=tmp_path / "out.nii.gz")
    assert_refused(proc, "does not cover organ ids [6]", tmp_path)
    other = tmp_path / "other"
    other.mkdir()
    folder2 = _copy_model(other, lambda c: c.update(organs=[1, 42]))
    proc = run_segment(TS / "example_ct_sm.nii.gz", "--model", folder2, out=tmp_path / "out.nii.gz")
    assert_refused(proc, "not BTCV organ ids", tmp_path)


def test_unknown_organ_and_not_a_model(tmp_path):
    assert_refused(run_segment(TS / "example_ct_sm.nii.gz", "--organs", "heart", out=tmp_path / "out.nii.gz"),
                   "unknown organ 'heart'", tmp_path)
    assert_refused(run_segment(TS / "example_ct_sm.nii.gz", "--model", tmp_path, out=tmp_path / "out.nii.gz"),
                   "no model", tmp_path)
