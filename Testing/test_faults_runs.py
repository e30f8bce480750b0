"""Faults in the dataset and in training runs (issue 8, items 4-5): a failed add blocks nothing, `check` finds
and sets aside partial files, one process per run, safe run names, what can be checked is checked at plan and
again at start, a damaged checkpoint is one sentence, a resume does not duplicate the history."""

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
import torch

from contrastseg import store
from contrastseg.cli import main
from contrastseg.dataset import read_manifest
from contrastseg.dataset_edit import add_entry, check
from contrastseg.errors import ContrastSegError
from contrastseg.runs.execute import run_lock
from contrastseg.runs.plan import RunRequest, make_plan, preflight
from contrastseg.train.loop import read_history, train
from realdata import TS, needs_data
from tiny_model import build_tiny_model, home, tiny  # noqa: F401 - fixtures

CT, SEG = TS / "example_ct_sm.nii.gz", TS / "example_seg.nii.gz"


# ---------------------------------------------------------------- dataset
@needs_data
def test_a_failed_add_leaves_nothing_that_blocks_a_retry(tmp_path, monkeypatch):
    import contrastseg.dataset_edit as de

    ds = tmp_path / "ds"
    real = de.write_labels
    calls = []

    def failing(*args, **kwargs):  # the second label file (the initial segmentation) hits a full disk
        calls.append(1)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        return real(*args, **kwargs)

    monkeypatch.setattr(de, "write_labels", failing)
    with pytest.raises(OSError):
        add_entry(ds, CT, SEG, id_map="totalsegmentator", initial=SEG, initial_id_map="totalsegmentator", case="c")
    monkeypatch.setattr(de, "write_labels", real)
    assert not list((ds / "labels").glob("*")) and not list((ds / "images").glob("*"))
    rec = add_entry(ds, CT, SEG, id_map="totalsegmentator", initial=SEG, initial_id_map="totalsegmentator", case="c")
    assert rec["id"] == "c-v1" and check(ds) == ([], [])


@needs_data
def test_a_label_file_left_by_a_killed_add_is_set_aside(tmp_path):
    ds = tmp_path / "ds"
    (ds / "labels").mkdir(parents=True)
    (ds / "labels" / "c-v1.seg.nrrd").write_bytes(b"half a file")  # what a SIGKILL mid-add leaves
    rec = add_entry(ds, CT, SEG, id_map="totalsegmentator", case="c")
    assert rec["id"] == "c-v1"
    (orphan,) = (ds / "trash" / "orphans").glob("*c-v1.seg.nrrd")
    assert orphan.read_bytes() == b"half a file"  # moved, never deleted


@needs_data
def test_check_reports_partial_files_and_fix_moves_only_those(tmp_path, capsys):
    ds = tmp_path / "ds"
    rec = add_entry(ds, CT, SEG, id_map="totalsegmentator", case="c")
    (ds / "labels" / ".c-v2.seg.nrrd.tmp").write_bytes(b"partial")
    (ds / "images" / "stray.nrrd").write_bytes(b"stray")
    (ds / ".manifest.json.123.tmp").write_text("{")
    problems, warnings = check(ds)
    assert problems == [] and sum("partial file" in w for w in warnings) == 2 and any("stray.nrrd" in w for w in warnings)
    assert main(["dataset", "check", "--fix", "--dataset", str(ds)]) == 0
    assert "moved 3 file(s)" in capsys.readouterr().out
    assert check(ds) == ([], []) and (ds / rec["labels"]).exists() and (ds / rec["image"]).exists()
    assert len(list((ds / "trash" / "orphans").rglob("*"))) == 4  # the folder and the three files


# ---------------------------------------------------------------- runs: plan
@needs_data
def test_plan_refuses_unsafe_names_empty_labels_and_a_broken_base(tmp_path, tiny, home):
    ds = tmp_path / "ds"
    add_entry(ds, CT, SEG, id_map="totalsegmentator", case="c")
    with pytest.raises(ContrastSegError, match="run name '../x' is not allowed"):
        make_plan(RunRequest(ds, base=str(tiny), device="cpu", name="../x"))
    assert not (home / "x").exists() and not (home / "runs").exists()
    empty_labels = tmp_path / "empty.nii.gz"
    ct = sitk.ReadImage(str(CT))
    zeros = sitk.GetImageFromArray(np.zeros(sitk.GetArrayViewFromImage(ct).shape, np.uint8))
    zeros.CopyInformation(ct)
    sitk.WriteImage(zeros, str(empty_labels))
    empty = tmp_path / "empty-ds"
    add_entry(empty, CT, empty_labels)
    assert any("hold no organ voxels" in e for e in preflight(RunRequest(empty, base=str(tiny), device="cpu")).errors)
    broken = tmp_path / "broken"
    build_tiny_model(broken)
    with open(broken / "refined.safetensors", "r+b") as f:
        f.seek(-8, os.SEEK_END)
        f.write(b"\0" * 8)
    errors = preflight(RunRequest(ds, base=str(broken), device="cpu")).errors
    assert any("refined.safetensors does not match the SHA-256" in e for e in errors)


@needs_data
def test_a_dataset_changed_after_planning_is_refused_at_start(tmp_path, tiny, capsys):
    ds = tmp_path / "ds"
    rec = add_entry(ds, CT, SEG, id_map="totalsegmentator", case="c")
    run_dir, _ = make_plan(RunRequest(ds, base=str(tiny), steps=2, coarse_steps=2, batch=2, device="cpu", threads=1, name="chg"))
    labels = ds / rec["labels"]
    os.chmod(labels, 0o644)
    data = bytearray(labels.read_bytes())
    data[-1] ^= 0xFF
    labels.write_bytes(bytes(data))
    assert main(["run", "start", str(run_dir), "--progress", "none"]) == 2
    err = capsys.readouterr().err
    assert "the dataset changed after this run was planned" in err and "c-v1's labels" in err
    assert "chg" not in [m["name"] for m in store.list_models()]


# ---------------------------------------------------------------- runs: one process, resume
@needs_data
def test_one_process_per_run_and_a_crash_frees_the_lock(tmp_path, tiny, capsys):
    ds = tmp_path / "ds"
    add_entry(ds, CT, SEG, id_map="totalsegmentator", case="c")
    run_dir, _ = make_plan(RunRequest(ds, base=str(tiny), steps=2, coarse_steps=2, batch=2, device="cpu", threads=1, name="lk"))
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from contrastseg.runs.execute import run_lock\n"
                               "with run_lock(sys.argv[1]):\n    print('held', flush=True); time.sleep(120)", str(run_dir)],
                              stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    assert main(["run", "start", str(run_dir), "--progress", "none"]) == 2
    assert "already running in another process" in capsys.readouterr().err
    holder.send_signal(signal.SIGKILL)  # a crashed run: the OS drops its lock
    holder.wait(timeout=10)
    with run_lock(run_dir):
        pass


def test_a_damaged_checkpoint_is_one_sentence_with_the_way_out(tmp_path):
    net = torch.nn.Linear(3, 1)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    x = torch.ones(4, 3)
    train(tmp_path, net, opt, lambda rng: net(x).pow(2).mean(), steps=5, checkpoint_every=5)
    (tmp_path / "checkpoint.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ContrastSegError, match=r"checkpoint in .* is damaged .*delete those two files"):
        train(tmp_path, net, opt, lambda rng: net(x).pow(2).mean(), steps=10, checkpoint_every=5)


def test_a_resume_does_not_duplicate_the_history(tmp_path):
    net = torch.nn.Linear(3, 1)
    opt = torch.optim.SGD(net.parameters(), lr=0.01)
    x = torch.ones(4, 3)
    calls = []

    def crash_after_8(rng):
        calls.append(1)
        if len(calls) == 9:
            raise KeyboardInterrupt  # killed after step 8; the checkpoint on disk is step 5
        return net(x).pow(2).mean()
    with pytest.raises(KeyboardInterrupt):
        train(tmp_path, net, opt, crash_after_8, steps=10, checkpoint_every=5)
    assert [h["step"] for h in read_history(tmp_path)] == list(range(1, 9))
    with open(tmp_path / "history.jsonl", "a") as f:
        f.write('{"step": 9, "lo')  # a torn line
    train(tmp_path, net, opt, lambda rng: net(x).pow(2).mean(), steps=10, checkpoint_every=5)
    assert [h["step"] for h in read_history(tmp_path)] == list(range(1, 11))
    assert json.loads((tmp_path / "checkpoint.json").read_text())["step"] == 10
