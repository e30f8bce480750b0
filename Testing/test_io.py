"""Reading CTs (NIfTI, DICOM series), refusing bad input with one clear sentence, and atomic label writing."""

from __future__ import annotations

import gzip
import shutil

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from contrastseg.errors import ContrastSegError
from contrastseg.io import check_ct, read_image, read_labels, sidecar_path, write_labels
from contrastseg.organs import TOTALSEGMENTATOR_TO_BTCV
from realdata import DCMQI, TS, needs_data

pytestmark = needs_data


def test_nifti_keeps_geometry_and_values():
    img = read_image(TS / "example_ct_sm.nii.gz")
    raw = sitk.ReadImage(str(TS / "example_ct_sm.nii.gz"))
    assert img.GetSize() == (122, 101, 30)
    assert img.GetDirection() == raw.GetDirection() and img.GetOrigin() == raw.GetOrigin()
    np.testing.assert_array_equal(sitk.GetArrayFromImage(img), sitk.GetArrayFromImage(raw).astype(np.float32))
    check_ct(img)


def test_dicom_series_sorted_by_position_with_rescale_applied():
    img = read_image(TS / "example_ct_dicom")
    assert img.GetSize() == (512, 512, 20)
    files = sorted((TS / "example_ct_dicom").iterdir())
    datasets = sorted((pydicom.dcmread(f) for f in files), key=lambda d: float(d.ImagePositionPatient[2]))
    arr = sitk.GetArrayFromImage(img)
    for k in (0, 7, 19):
        d = datasets[k]
        hu = d.pixel_array.astype(np.float32) * float(d.RescaleSlope) + float(d.RescaleIntercept)
        np.testing.assert_allclose(arr[k], hu)
    z = [img.TransformIndexToPhysicalPoint((0, 0, k))[2] for k in range(20)]
    assert np.all(np.diff(z) > 0)


def test_mixed_series_folder_names_each_series(tmp_path):
    for f in list((TS / "example_ct_dicom").iterdir())[:3]:
        shutil.copy(f, tmp_path / f"ts_{f.name}")
    for f in (DCMQI / "ct-3slice").iterdir():
        shutil.copy(f, tmp_path / f"dcmqi_{f.name}")
    with pytest.raises(ContrastSegError, match="holds 2 DICOM series") as err:
        read_image(tmp_path)
    assert "3 files" in str(err.value)


def test_empty_folder_missing_and_corrupt_files(tmp_path):
    with pytest.raises(ContrastSegError, match="no DICOM series"):
        read_image(tmp_path)
    with pytest.raises(ContrastSegError, match="not found"):
        read_image(tmp_path / "nothing.nii.gz")
    data = (TS / "example_ct_sm.nii.gz").read_bytes()
    truncated = tmp_path / "truncated.nii.gz"
    truncated.write_bytes(data[: len(data) // 3])
    with pytest.raises(ContrastSegError, match="cannot read"):
        read_image(truncated)
    garbage = tmp_path / "garbage.nrrd"
    garbage.write_bytes(b"this is not an image")
    with pytest.raises(ContrastSegError, match="cannot read"):
        read_image(garbage)


def test_2d_image_and_non_ct_intensities_are_refused(tmp_path):
    arr = sitk.GetArrayFromImage(sitk.ReadImage(str(TS / "example_ct_sm.nii.gz")))
    one = sitk.GetImageFromArray(arr[10])
    sitk.WriteImage(one, str(tmp_path / "slice.nii.gz"))
    with pytest.raises(ContrastSegError, match="not a 3D volume"):
        read_image(tmp_path / "slice.nii.gz")
    for scale in (1.0, 255.0):
        norm = sitk.GetImageFromArray(((arr - arr.min()) / (arr.max() - arr.min()) * scale).astype(np.float32))
        with pytest.raises(ContrastSegError, match="does not look like CT"):
            check_ct(norm)


def test_label_map_on_flipped_grid_is_resampled_and_mapped_to_btcv():
    image = read_image(TS / "example_ct_dicom")
    labels = read_labels(TS / "example_seg_dicom.nii.gz", image, TOTALSEGMENTATOR_TO_BTCV)
    raw = sitk.ReadImage(str(TS / "example_seg_dicom.nii.gz"))
    assert labels.GetOrigin() == image.GetOrigin() and labels.GetSize() == image.GetSize()
    # the stored seg has its y axis flipped relative to the series: same voxels, other order
    liver_raw = sitk.GetArrayFromImage(raw) == 5
    liver = sitk.GetArrayFromImage(labels) == 6
    np.testing.assert_array_equal(liver, liver_raw[:, ::-1, :])
    assert set(np.unique(sitk.GetArrayFromImage(labels))) <= set(TOTALSEGMENTATOR_TO_BTCV.values()) | {0}


def test_label_map_of_another_image_is_refused():
    image = read_image(TS / "example_ct_dicom")
    with pytest.raises(ContrastSegError, match="does not match its image"):
        read_labels(TS / "example_seg.nii.gz", image, TOTALSEGMENTATOR_TO_BTCV)
    with pytest.raises(ContrastSegError, match="not BTCV organ ids"):
        read_labels(TS / "example_seg.nii.gz")


def test_write_labels_atomic_with_sidecar_and_seg_nrrd(tmp_path):
    image = read_image(TS / "example_ct_sm.nii.gz")
    labels = read_labels(TS / "example_seg.nii.gz", image, TOTALSEGMENTATOR_TO_BTCV)
    out = tmp_path / "seg.nii.gz"
    written = write_labels(labels, out, [1, 6])
    assert written == [out, sidecar_path(out)] and sidecar_path(out).name == "seg.json"
    back = sitk.ReadImage(str(out))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(back), sitk.GetArrayFromImage(labels))
    assert np.allclose(back.GetOrigin(), image.GetOrigin()) and np.allclose(back.GetDirection(), image.GetDirection())
    seg = tmp_path / "seg.seg.nrrd"
    write_labels(labels, seg, [1, 6])
    meta = sitk.ReadImage(str(seg))
    assert meta.GetMetaData("Segment1_Name") == "liver" and meta.GetMetaData("Segment1_LabelValue") == "6"
    assert "SCT^10200004^Liver" in meta.GetMetaData("Segment1_Tags")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["seg.json", "seg.nii.gz", "seg.seg.nrrd"]
    with pytest.raises(ContrastSegError, match="output folder does not exist"):
        write_labels(labels, tmp_path / "missing" / "seg.nii.gz", [1])
    assert not (tmp_path / "missing").exists()


def test_gzip_sanity_of_sample():
    # the bundled sample is a byte copy of the Apache-2.0 TotalSegmentator example
    from contrastseg.paths import sample_ct

    assert gzip.decompress(sample_ct().read_bytes()) == gzip.decompress((TS / "example_ct.nii.gz").read_bytes())
