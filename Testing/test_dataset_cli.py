"""`contrastseg dataset add | list | remove | check`: every action from the command line, errors as one sentence."""

from __future__ import annotations

import json

import pytest

from contrastseg.cli import main
from realdata import TS, needs_data

pytestmark = needs_data


@pytest.fixture(autouse=True)
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("CONTRASTSEG_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def test_dataset_cli_round_trip(home, capsys):
    ct, seg = str(TS / "example_ct_sm.nii.gz"), str(TS / "example_seg.nii.gz")
    assert main(["dataset", "add", ct, seg, "--id-map", "totalsegmentator", "--phase", "portal", "--source", "test"]) == 0
    assert main(["dataset", "add", str(TS / "example_ct_dicom")]) == 0
    assert (home / "dataset" / "manifest.json").exists()  # the default dataset lives in CONTRASTSEG_HOME
    capsys.readouterr()
    assert main(["dataset", "list", "--json"]) == 0
    records = json.loads(capsys.readouterr().out)
    assert [(r["id"], bool(r["labels"]), r["phase"]) for r in records] == [
        ("example-ct-sm-v1", True, "portal"), ("example-ct-dicom-v1", False, None)]
    assert main(["dataset", "list"]) == 0
    out = capsys.readouterr()
    assert "example-ct-sm-v1" in out.out and "2 entries, 1 labelled" in out.err
    assert main(["dataset", "check"]) == 0
    assert "dataset OK" in capsys.readouterr().err
    assert main(["dataset", "remove", "example-ct-sm-v1"]) == 0
    assert "trash" in capsys.readouterr().out
    assert main(["dataset", "list", "--removed"]) == 0
    assert "(removed)" in capsys.readouterr().out


def test_dataset_cli_errors_are_one_sentence(tmp_path, capsys):
    ct, seg = str(TS / "example_ct_sm.nii.gz"), str(TS / "example_seg.nii.gz")
    assert main(["dataset", "list", "--dataset", str(tmp_path / "none")]) == 2
    assert "no dataset at" in capsys.readouterr().err
    assert main(["dataset", "add", ct, seg]) == 2  # TotalSegmentator ids without --id-map
    err = capsys.readouterr().err
    assert err.startswith("contrastseg dataset: error:") and "not BTCV" in err and err.count("\n") == 1
    assert main(["dataset", "add", ct, str(TS / "example_seg_fast_force_split.nii.gz"), "--id-map", "totalsegmentator"]) == 2
    assert "does not match its image" in capsys.readouterr().err
    assert main(["dataset", "remove", "nope"]) == 2
