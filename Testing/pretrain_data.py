"""Small real-CT datasets for the pretraining tests, built once per test session and shared by the files.

Two TotalSegmentator example CTs with their label maps (model output, mapped to BTCV ids): the upper-abdomen
crop `example_ct_sm` and the 20-slice DICOM series (phase "contrast" in its manifest entry, so both phase
sources are exercised: manifest and aorta estimate). Read in place from ../shared/data.
"""

from __future__ import annotations

import json
from pathlib import Path

from realdata import TS

SMALL = ["--batch", "4", "--patch", "64", "--probe", "32", "--slice-size", "64", "--slice-fraction", "0.6",
         "--region-slices", "3", "--max-regions", "48", "--crop", "32,48,48", "--threads", "1", "--progress", "none"]


def entries(labels: bool = True) -> list[dict]:
    return [
        {"id": "ts-sm", "image": str(TS / "example_ct_sm.nii.gz"), "labels": str(TS / "example_seg.nii.gz") if labels else None,
         "id_map": "totalsegmentator" if labels else None},
        {"id": "ts-dicom", "image": str(TS / "example_ct_dicom"), "labels": str(TS / "example_seg_dicom.nii.gz") if labels else None,
         "id_map": "totalsegmentator" if labels else None, "phase": "contrast"},
    ]


def write_dataset(folder: Path, items: list[dict]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "manifest.json").write_text(json.dumps({"format": "contrastseg-dataset/1", "entries": items}, indent=1))
    return folder


def shared_dataset(tmp_path_factory) -> Path:
    """The labelled two-CT dataset, in the session's temp folder (its cache is reused by every test file)."""
    folder = tmp_path_factory.getbasetemp() / "pretrain-dataset"
    if not (folder / "manifest.json").exists():
        write_dataset(folder, entries(True))
    return folder
