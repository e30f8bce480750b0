"""Faults of the dataset and of training runs on real CT (issue 20, items 3-5): a run killed with SIGKILL at a
random step and resumed, two `run start` of one run, two `run plan --name X` at once, a full disk (a real
small tmpfs) during `dataset add` and `run start`, and the one-sentence refusals that were tracebacks.

Runs use the tiny random model (tiny_model.py) on example_ct_sm with small crops, so a run takes about a
minute on 2 CPU threads; the training loop checkpoints every CHECKPOINT_EVERY steps.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from contrastseg import store
from contrastseg.cli import main
from contrastseg.dataset_edit import add_entry, check
from contrastseg.outputs import safetensors_header
from contrastseg.runs.plan import RunRequest, make_plan, run_status
from realdata import TS, needs_data
from test_faults import readonly  # noqa: F401 - fixture: a read-only folder
from tiny_model import build_tiny_model, home, tiny  # noqa: F401 - fixtures

pytestmark = needs_data
CT, SEG = TS / "example_ct_sm.nii.gz", TS / "example_seg.nii.gz"
CHECKPOINT_EVERY = 50  # train.loop.train's default, which train-coarse and finetune use
FAST = ["--crop", "16,32,32"]


def one_line(capsys, argv, pattern) -> str:
    rc = main(list(map(str, argv)))
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert rc == 2 and len(lines) == 1 and "Traceback" not in err and pattern in lines[0], err
    return lines[0]


def cli(*argv, **kwargs) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "contrastseg.cli", *map(str, argv)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True, **kwargs)


@pytest.fixture()
def dataset(tmp_path) -> Path:
    ds = tmp_path / "ds"
    add_entry(ds, CT, SEG, id_map="totalsegmentator", case="c")
    return ds


def plan(ds, tiny, name, coarse_steps, run_dir=None) -> Path:
    run_dir, _ = make_plan(RunRequest(ds, base=str(tiny), steps=2, coarse_steps=coarse_steps, batch=2, device="cpu",
                                      threads=1, name=name, coarse_args=FAST), run_dir)
    return run_dir


def steps_done(history: Path) -> int:
    """The last whole line's step in a history.jsonl being written (0 before the first)."""
    done = 0
    if history.exists():
        for line in history.read_text().splitlines():
            try:
                done = json.loads(line)["step"]
            except (ValueError, KeyError):
                break
    return done


def wait_for_step(run_dir: Path, step: int, proc: subprocess.Popen, timeout: float = 600) -> int:
    end = time.monotonic() + timeout
    history = run_dir / "steps" / "coarse" / "history.jsonl"
    while time.monotonic() < end:
        done = steps_done(history)
        if done >= step:
            return done
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.05)
    raise AssertionError(f"step {step} not reached in {timeout} s")


def kill_group(proc: subprocess.Popen) -> None:
    os.killpg(proc.pid, signal.SIGKILL)  # the run and its step's child process, as a crash or OOM kill would
    proc.wait(timeout=60)


# --- runs ---------------------------------------------------------------------------------------------------

def test_a_run_killed_at_a_random_step_resumes_losing_at_most_one_interval(dataset, tiny, tmp_path):
    run_dir = plan(dataset, tiny, "killed", coarse_steps=CHECKPOINT_EVERY + 10)
    at = random.Random().randint(3, CHECKPOINT_EVERY + 8)
    proc = cli("run", "start", run_dir, "--progress", "none")
    wait_for_step(run_dir, at, proc)
    kill_group(proc)
    coarse = run_dir / "steps" / "coarse"
    reached = steps_done(coarse / "history.jsonl")
    saved = json.loads((coarse / "checkpoint.json").read_text())["step"] if (coarse / "checkpoint.json").exists() else 0
    assert reached >= at and reached - saved <= CHECKPOINT_EVERY, (at, reached, saved)
    if saved:
        safetensors_header(coarse / "checkpoint.safetensors")  # the checkpoint on disk is whole
    status = run_status(run_dir)
    assert status["status"] == "interrupted" and status["resumable"]
    assert "killed" not in [m["name"] for m in store.list_models()]  # no half-trained model registered
    assert not (coarse / "model").exists()
    done = subprocess.run([sys.executable, "-m", "contrastseg.cli", "run", "start", str(run_dir), "--progress", "none"],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert [h["step"] for h in map(json.loads, (coarse / "history.jsonl").read_text().splitlines())] == \
        list(range(1, CHECKPOINT_EVERY + 11))  # every step once: the lost ones trained again
    log = (coarse / "log.txt").read_text()
    assert f"resume at step {saved}" in log if saved else log.count("start at step 0") == 2
    assert "killed" in [m["name"] for m in store.list_models()] and run_status(run_dir)["status"] == "done"


def test_two_starts_of_one_run_one_is_refused(dataset, tiny):
    run_dir = plan(dataset, tiny, "twice", coarse_steps=CHECKPOINT_EVERY + 10)
    first = cli("run", "start", run_dir, "--progress", "none")
    try:
        wait_for_step(run_dir, 1, first)
        second = subprocess.run([sys.executable, "-m", "contrastseg.cli", "run", "start", str(run_dir), "--progress",
                                 "none"], capture_output=True, text=True, timeout=300)
        lines = [ln for ln in second.stderr.splitlines() if ln.strip()]
        assert second.returncode == 2 and len(lines) == 1 and "already running in another process" in lines[0], second.stderr
        state = json.loads((run_dir / "state.json").read_text())
        assert state["status"] == "running" and state["pid"] == first.pid  # the refused one changed nothing
        assert first.poll() is None
    finally:
        kill_group(first)


def test_two_plans_of_one_name_at_once_exactly_one_wins(dataset, tiny, home):
    procs = [cli("run", "plan", "--dataset", dataset, "--base", tiny, "--name", "same", "--device", "cpu",
                 "--steps", "2", "--coarse-steps", "2") for _ in range(3)]
    results = [(p.wait(timeout=300), p.stderr.read()) for p in procs]
    assert sorted(rc for rc, _ in results) == [0, 2, 2], results
    for rc, err in results:
        if rc == 2:
            assert "already holds a run, or another `contrastseg run plan` is planning it" in err and "Traceback" not in err
    assert sorted(p.name for p in (home / "runs").iterdir()) == ["same"]
    assert json.loads((home / "runs" / "same" / "plan.json").read_text())["name"] == "same"


# --- a full disk ----------------------------------------------------------------------------------------------

@pytest.fixture()
def small_disk(tmp_path):
    """mount(size): a real tmpfs of that size (root only); the test is skipped, saying why, where mounting is
    not permitted."""
    folders = []

    def mount(size: str) -> Path:
        folder = tmp_path / f"small{len(folders)}"
        folder.mkdir()
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)], capture_output=True,
                              text=True)
        if done.returncode:
            pytest.skip(f"cannot mount a small tmpfs here ({done.stderr.strip() or 'needs root'}); the full-disk "
                        "cases of test_faults.py still run on a simulated full disk")
        folders.append(folder)
        return folder

    yield mount
    for folder in folders:
        subprocess.run(["umount", "-l", str(folder)])


def fill(folder: Path, leave: int) -> Path:
    filler = folder / "filler"
    filler.write_bytes(b"\0" * max(0, shutil.disk_usage(folder).free - leave))
    return filler


def test_a_full_disk_during_dataset_add(small_disk, capsys):
    disk = small_disk("4m")
    ds = disk / "ds"
    assert main(["dataset", "add", str(CT), str(SEG), "--id-map", "totalsegmentator", "--dataset", str(ds)]) == 0
    manifest = (ds / "manifest.json").read_bytes()
    filler = fill(disk, 1 << 20)
    capsys.readouterr()
    one_line(capsys, ["dataset", "add", TS / "example_ct.nii.gz", "--dataset", ds], "is full")  # 2.2 MB into 1 MB
    assert (ds / "manifest.json").read_bytes() == manifest and check(ds) == ([], [])  # nothing half-added
    assert not any(n.startswith(".") for n in os.listdir(ds / "images"))  # no temporary left behind
    filler.unlink()
    assert main(["dataset", "add", str(TS / "example_ct.nii.gz"), "--dataset", str(ds)]) == 0  # nothing blocks a retry
    assert check(ds) == ([], []) and len(json.loads((ds / "manifest.json").read_text())["entries"]) == 2


def test_a_full_disk_during_run_start(small_disk, dataset, tiny):
    disk = small_disk("64m")  # a whole tiny run takes about 11 MB
    run_dir = plan(dataset, tiny, "full", coarse_steps=12, run_dir=disk / "run")
    filler = fill(disk, 16 << 10)  # the plan fits; the first checkpoint (5 MB) does not
    failed = subprocess.run([sys.executable, "-m", "contrastseg.cli", "run", "start", str(run_dir), "--progress", "none"],
                            capture_output=True, text=True)
    lines = [ln for ln in failed.stderr.splitlines() if ln.strip()]
    assert failed.returncode == 2 and len(lines) == 1 and "is full" in lines[0], failed.stderr
    assert "Traceback" not in failed.stderr
    coarse = run_dir / "steps" / "coarse"
    assert not (coarse / "checkpoint.safetensors").exists() and not (coarse / "model").exists()
    assert not any(n.startswith(".") and "tmp" in n for n in os.listdir(coarse))  # no temporary left behind
    assert "full" not in [m["name"] for m in store.list_models()]
    assert run_status(run_dir)["resumable"]
    filler.unlink()
    done = subprocess.run([sys.executable, "-m", "contrastseg.cli", "run", "start", str(run_dir), "--progress", "none"],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert [h["step"] for h in map(json.loads, (coarse / "history.jsonl").read_text().splitlines())] == list(range(1, 13))
    assert "full" in [m["name"] for m in store.list_models()]


# --- tracebacks that are one sentence now ---------------------------------------------------------------------

def test_dataset_add_into_a_file_or_a_read_only_folder(tmp_path, readonly, capsys):  # noqa: F811
    (tmp_path / "file").write_text("not a dataset")
    one_line(capsys, ["dataset", "add", CT, "--dataset", tmp_path / "file"], "is a file, not a dataset folder")
    line = one_line(capsys, ["dataset", "add", CT, "--dataset", readonly], "cannot write")
    assert "read-only" in line or "no permission" in line
    assert os.listdir(readonly) == [] and (tmp_path / "file").read_text() == "not a dataset"


@pytest.mark.parametrize("options, pattern", [
    (["--finetune-args", '--lr "1e-4'], "--finetune-args '--lr \"1e-4' cannot be read as command-line options"),
    (["--finetune-args", "--lr abc"], "the refined step's command line is refused (argument --lr: invalid float value"),
    (["--coarse-args=--no-such-option"], "the coarse step's command line is refused (unrecognized arguments"),
    (["--finetune-args", "--widths -8,16,32,64"], "refined.widths must be 4 whole numbers"),
    (["--finetune-args", "--depth many"], "--depth 'many', which is not a valid value"),
])
def test_run_plan_option_strings_are_one_sentence(dataset, tiny, home, capsys, options, pattern):
    one_line(capsys, ["run", "plan", "--dataset", dataset, "--base", tiny, "--device", "cpu", "--name", "opts", *options],
             pattern)
    assert not (home / "runs" / "opts").exists()  # a refused plan takes no name


def test_run_plan_into_a_read_only_folder(dataset, tiny, readonly, capsys):  # noqa: F811
    line = one_line(capsys, ["run", "plan", "--dataset", dataset, "--base", tiny, "--device", "cpu", "--run",
                             readonly / "run"], "cannot write")
    assert "read-only" in line or "no permission" in line
