"""The local dataset's write side on real CT: add and read back, versions, refusal to overwrite, trash,
crash safety, check. The manifest stays readable by the training code (`contrastseg.dataset.entries`)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import SimpleITK as sitk

from contrastseg.checksum import sha256
from contrastseg.dataset import entries, prepare_case, read_manifest
from contrastseg.dataset_edit import add_entry, check, latest_per_case, live_records, remove_entry
from contrastseg.errors import ContrastSegError
from contrastseg.io import read_image, read_labels, write_labels
from contrastseg.organs import TOTALSEGMENTATOR_TO_BTCV
from realdata import DCMQI, TS, needs_data

CT, SEG = TS / "example_ct_sm.nii.gz", TS / "example_seg.nii.gz"
pytestmark = needs_data


@pytest.fixture(autouse=True)
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("CONTRASTSEG_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def btcv_truth() -> np.ndarray:
    return sitk.GetArrayFromImage(read_labels(SEG, read_image(CT), TOTALSEGMENTATOR_TO_BTCV))


def test_add_and_read_back_identical(tmp_path):
    ds = tmp_path / "ds"
    rec = add_entry(ds, CT, SEG, id_map="totalsegmentator", phase="portal", source="TotalSegmentator example")
    assert rec["id"] == "example-ct-sm-v1" and rec["version"] == 1
    (entry,) = entries(ds)
    assert entry.id == rec["id"] and entry.phase == "portal" and entry.id_map is None
    # the image is the original file byte for byte; the labels are the same voxels with BTCV ids
    assert sha256(entry.image) == sha256(CT) == rec["provenance"]["source_image_sha256"]
    labels = read_labels(entry.labels, read_image(entry.image))
    assert np.array_equal(sitk.GetArrayFromImage(labels), btcv_truth())
    stored = sitk.ReadImage(str(entry.labels))
    original = sitk.ReadImage(str(CT))
    assert stored.GetSize() == original.GetSize()
    assert np.allclose(stored.GetSpacing(), original.GetSpacing()) and np.allclose(stored.GetOrigin(), original.GetOrigin())
    assert np.allclose(stored.GetDirection(), original.GetDirection())
    assert rec["organs"] == sorted(int(v) for v in np.unique(btcv_truth()) if v)
    assert rec["labels_sha256"] == sha256(entry.labels) and rec["image_sha256"] == sha256(entry.image)
    # the training code prepares it like any other entry
    case = prepare_case(entry, (3.0, 3.0, 3.0))
    assert case.labels is not None and set(np.unique(case.labels)) <= set(range(14))
    assert check(ds) == ([], [])


def test_versions_never_overwrite(tmp_path):
    ds = tmp_path / "ds"
    v1 = add_entry(ds, CT, SEG, id_map="totalsegmentator")
    before = sha256(ds / v1["labels"])
    edited = btcv_truth()
    edited[10:14][edited[10:14] == 6] = 0  # the user erased part of the liver
    corrected = tmp_path / "corrected.nii.gz"
    img = sitk.GetImageFromArray(edited)
    img.CopyInformation(read_image(CT))
    write_labels(img, corrected, list(range(1, 14)))
    v2 = add_entry(ds, CT, corrected, initial=SEG, initial_id_map="totalsegmentator", model="default")
    assert (v2["id"], v2["case"], v2["version"]) == ("example-ct-sm-v2", "example-ct-sm", 2)
    assert v2["image"] == v1["image"]  # one copy of the CT for both versions
    assert sha256(ds / v1["labels"]) == before
    removed = int((btcv_truth()[10:14] == 6).sum())
    assert v2["provenance"]["edited"] == {"liver": {"id": 6, "added": 0, "removed": removed}}
    assert v2["provenance"]["changed_voxels"] == removed and v2["provenance"]["model"] == "default"
    assert [r["id"] for r in latest_per_case(live_records(ds))] == ["example-ct-sm-v2"]
    with pytest.raises(ContrastSegError, match="never overwritten"):
        add_entry(ds, CT, SEG, id_map="totalsegmentator", entry_id="example-ct-sm-v1")
    with pytest.raises(ContrastSegError, match="not BTCV"):
        add_entry(ds, CT, SEG)  # TotalSegmentator ids without their map
    assert len(read_manifest(ds)["entries"]) == 2


def test_unlabelled_dicom_with_uids_and_custom_id_map(tmp_path):
    ds = tmp_path / "ds"
    rec = add_entry(ds, DCMQI / "ct-3slice", DCMQI / "liver_spine_seg.nrrd", id_map={1: 6})  # liver kept, spine out
    assert rec["organs"] == [6] and rec["image"].endswith(".nrrd")
    assert rec["provenance"]["dicom"]["series_uid"] and rec["provenance"]["dicom"]["study_uid"]
    ct = add_entry(ds, TS / "example_ct_dicom")
    assert ct["labels"] is None and ct["case"] == "example-ct-dicom"
    assert [e.labels is None for e in entries(ds)] == [False, True]
    assert [e.id for e in entries(ds, labelled_only=True)] == [rec["id"]]
    stored, original = read_image(ds / rec["image"]), read_image(DCMQI / "ct-3slice")
    assert np.array_equal(sitk.GetArrayFromImage(stored), sitk.GetArrayFromImage(original))
    assert np.allclose(stored.GetOrigin(), original.GetOrigin()) and np.allclose(stored.GetDirection(), original.GetDirection())
    assert check(ds)[0] == []


def test_remove_moves_to_trash(tmp_path):
    ds = tmp_path / "ds"
    v1 = add_entry(ds, CT, SEG, id_map="totalsegmentator")
    v2 = add_entry(ds, CT, SEG, id_map="totalsegmentator")
    labels = (ds / v1["labels"]).read_bytes()
    rec = remove_entry(ds, v1["id"])
    assert rec["removed"] and not (ds / v1["labels"]).exists()
    assert (ds / rec["trash"]["labels"]).read_bytes() == labels
    assert (ds / v2["image"]).exists() and "image" not in rec["trash"]  # v2 still uses the CT
    assert [e.id for e in entries(ds)] == [v2["id"]]
    rec2 = remove_entry(ds, v2["id"])
    assert (ds / rec2["trash"]["image"]).exists() and not list((ds / "images").iterdir())
    assert entries(ds) == [] and len(read_manifest(ds)["entries"]) == 2
    assert check(ds) == ([], [])
    with pytest.raises(ContrastSegError, match="no entry"):
        remove_entry(ds, "nope")


def test_crash_while_writing_the_manifest_keeps_it_valid(tmp_path, monkeypatch):
    ds = tmp_path / "ds"
    add_entry(ds, CT, SEG, id_map="totalsegmentator")
    before = (ds / "manifest.json").read_text()

    def half_then_crash(data, f, **kw):
        f.write(json.dumps(data)[:50])
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("contrastseg.io.json.dump", half_then_crash)
    with pytest.raises(OSError):
        add_entry(ds, CT, SEG, id_map="totalsegmentator")
    monkeypatch.undo()
    assert (ds / "manifest.json").read_text() == before
    assert [p.name for p in ds.iterdir() if p.name.startswith(".manifest")] == []
    assert len(entries(ds)) == 1
    assert check(ds) == ([], [])  # the failed add took its v2 label file away again: nothing blocks a retry
    assert add_entry(ds, CT, SEG, id_map="totalsegmentator")["id"].endswith("-v2")


def test_killed_writer_leaves_a_valid_manifest(tmp_path):
    """SIGKILL a process that keeps adding entries: the manifest is always whole JSON with usable entries."""
    ds = tmp_path / "ds"
    code = (f"from contrastseg.dataset_edit import add_entry\n"
            f"for i in range(50): add_entry({str(ds)!r}, {str(CT)!r}, {str(SEG)!r}, id_map='totalsegmentator')\n")
    proc = subprocess.Popen([sys.executable, "-c", code])
    end = time.monotonic() + 60
    while time.monotonic() < end and len(read_manifest(ds)["entries"] if (ds / "manifest.json").exists() else []) < 2:
        time.sleep(0.05)
    time.sleep(0.37)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    records = read_manifest(ds)["entries"]
    assert len(records) >= 2
    assert check(ds)[0] == []  # every recorded entry is complete; at most orphan files are reported
    assert [r["version"] for r in records] == list(range(1, len(records) + 1))


def test_check_finds_changed_and_missing_files(tmp_path):
    ds = tmp_path / "ds"
    rec = add_entry(ds, CT, SEG, id_map="totalsegmentator")
    other = add_entry(ds, TS / "example_ct.nii.gz", TS / "example_seg_fast_force_split.nii.gz", id_map="totalsegmentator")
    path = ds / rec["labels"]
    path.chmod(0o644)
    data = bytearray(path.read_bytes())
    data[-10] ^= 0xFF
    path.write_bytes(bytes(data))
    (ds / other["image"]).rename(ds / "moved.nii.gz")
    problems, _ = check(ds)
    assert any("has changed" in p and rec["id"] in p for p in problems)
    assert any("missing" in p and other["id"] in p for p in problems)
