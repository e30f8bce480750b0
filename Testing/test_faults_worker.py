"""The warm worker's faults on real CT (issue 20, items 2, 3 and 5): killed while it writes, its stdin or its
stdout closed mid-request, a running refine cancelled; and the CLI's checks in the worker (a label map as the
CT, an organ the model does not cover, an output inside a model, an organ table over a foreign file).

The rule each fault test holds: a label map under its final name is whole (it reads back equal to what an
uninterrupted run writes) or absent; a temporary file of a killed write is hidden (a leading dot) and never
under the final name.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from contrastseg.errors import ContrastSegError
from contrastseg.serve_client import Client
from realdata import TS, needs_data, needs_default_model
from tiny_model import build_tiny_model

pytestmark = [needs_data, needs_default_model()]
CT = TS / "example_ct.nii.gz"  # 122 x 101 x 112: its label map takes long enough to write to be caught at it


def start(home: Path) -> Client:
    c = Client(env=dict(os.environ, CONTRASTSEG_HOME=str(home)))
    c.command += ["--threads", "2"]
    return c.start()


@pytest.fixture()
def worker(tmp_path):
    c = start(tmp_path / "home")
    yield c
    c.stop()


def labels_of(path: Path) -> np.ndarray:
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


def whole_or_absent(path: Path, reference: np.ndarray) -> str:
    if not path.exists():
        return "absent"
    assert np.array_equal(labels_of(path), reference), f"{path} is under its final name but not whole"
    return "whole"


def kill_when(folder: Path, seen, proc, timeout: float = 300) -> threading.Thread:
    """SIGKILL `proc` as soon as a file name in `folder` satisfies `seen` (polled every half millisecond)."""
    def watch():
        end = time.monotonic() + timeout
        while time.monotonic() < end and proc.poll() is None:
            if any(seen(n) for n in os.listdir(folder)):
                os.kill(proc.pid, signal.SIGKILL)
                return
            time.sleep(0.0005)
    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


# --- item 5: killed while it writes ----------------------------------------------------------------------

def test_a_worker_killed_while_it_writes_leaves_no_half_file(tmp_path):
    """Killed as the label map's temporary file appears, as the organ table's does, and at a random moment;
    then the same output written by a fresh worker (a leftover temporary blocks nothing) is the reference."""
    outcomes = []
    for trial, moment in enumerate(["label map temporary", "organ table temporary", "random"]):
        out = tmp_path / f"out{trial}"
        out.mkdir()
        c = start(tmp_path / "home")
        try:
            ct = c.request("open", ct=str(CT))["ct"]
            if moment == "random":
                rid = c.send("segment", ct=ct, coarse_only=True, output=str(out / "seg.nii.gz"))
                time.sleep(random.uniform(0.0, 6.0))
                os.kill(c.proc.pid, signal.SIGKILL)
            else:
                suffix = ".tmp.nii.gz" if moment == "label map temporary" else ".tmp.json"
                watcher = kill_when(out, lambda n, s=suffix: n.startswith(".seg.") and n.endswith(s), c.proc)
                rid = c.send("segment", ct=ct, coarse_only=True, output=str(out / "seg.nii.gz"))
                watcher.join(timeout=300)
            try:
                answer = c.answer(rid, timeout=300)
                assert answer["ok"] and moment == "random", answer  # killed after its answer: the file is whole
            except ContrastSegError as err:
                assert "exit code -9" in str(err)
        finally:
            c.stop()
        if moment != "random":  # caught at it: a hidden temporary, nothing under the final name
            assert not (out / "seg.nii.gz").exists() and any(n.startswith(".seg.") for n in os.listdir(out))
        outcomes.append(out)
    c = start(tmp_path / "home")
    try:
        ct = c.request("open", ct=str(CT))["ct"]
        for out in outcomes[:1]:
            assert c.request("segment", ct=ct, coarse_only=True, output=str(out / "seg.nii.gz"))["ok"]
            assert json.loads((out / "seg.json").read_text())["format"] == "contrastseg-labels/1"
    finally:
        c.stop()
    reference = labels_of(outcomes[0] / "seg.nii.gz")
    assert (reference == 6).sum() > 1000
    assert [whole_or_absent(out / "seg.nii.gz", reference) for out in outcomes[1:2]] == ["absent"]
    whole_or_absent(outcomes[2] / "seg.nii.gz", reference)  # either, as long as never half


def test_stdin_closed_mid_request_finishes_it_and_exits(worker, tmp_path):
    ct = worker.request("open", ct=str(CT))["ct"]
    rid = worker.send("segment", ct=ct, coarse_only=True, output=str(tmp_path / "seg.nii.gz"))
    while not worker.take(rid):
        time.sleep(0.01)  # it is running
    worker.proc.stdin.close()  # the client's end of input
    answer = worker.answer(rid, timeout=300)
    assert answer["ok"] and worker.proc.wait(timeout=120) == 0, answer
    assert (labels_of(tmp_path / "seg.nii.gz") == 6).sum() > 1000  # written whole


def test_stdout_closed_mid_request_cancels_it_and_exits(tmp_path):
    """The client died: nobody reads the answers. The worker stops at its next progress report and exits,
    without a traceback and without a half-written file."""
    env = dict(os.environ, CONTRASTSEG_HOME=str(tmp_path / "home"))
    proc = subprocess.Popen([sys.executable, "-m", "contrastseg.cli", "serve", "--stdio", "--threads", "2"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    out = tmp_path / "seg.nii.gz"
    proc.stdin.write(json.dumps({"id": 1, "op": "open", "ct": str(CT)}).encode() + b"\n")
    proc.stdin.write(json.dumps({"id": 2, "op": "segment", "ct": "ct1", "output": str(out)}).encode() + b"\n")
    proc.stdin.flush()
    for line in proc.stdout:
        if json.loads(line).get("id") == 2:  # segment has started
            break
    proc.stdout.close()
    code = proc.wait(timeout=300)
    err = proc.stderr.read().decode()
    assert code == 0 and "Traceback" not in err, err
    assert not out.exists() and not any(tmp_path.glob("*.json"))  # stopped before its write
    proc.stdin.close()


def organ_point_ras(image_path: Path, labels_path: Path, organ: int) -> list[float]:
    """The RAS millimetres of the organ's central voxel in a label map on the CT's grid."""
    image = sitk.ReadImage(str(image_path))
    z, y, x = np.argwhere(labels_of(labels_path) == organ).mean(0).round().astype(int)
    lps = image.TransformIndexToPhysicalPoint((int(x), int(y), int(z)))
    return [-lps[0], -lps[1], lps[2]]


def test_cancel_of_a_running_refine_writes_nothing_and_keeps_the_ct(worker, tmp_path):
    small = TS / "example_ct_sm.nii.gz"
    ct = worker.request("open", ct=str(small))["ct"]
    assert worker.request("segment", ct=ct, coarse_only=True, output=str(tmp_path / "seg.nii.gz"))["ok"]
    point = {"ct": ct, "organ": "liver", "points_ras": [organ_point_ras(small, tmp_path / "seg.nii.gz", 6)],
             "output": str(tmp_path / "fixed.nii.gz")}
    rid = worker.send("refine", **point)
    while not any(m.get("event") == "progress" for m in worker.take(rid)):
        time.sleep(0.005)  # it is running
    assert worker.request("cancel", target=rid)["ok"]
    assert worker.answer(rid, timeout=300)["cancelled"] is True
    assert not (tmp_path / "fixed.nii.gz").exists() and not (tmp_path / "fixed.json").exists()
    done = worker.request("refine", **point)  # the CT and its last segmentation are still there
    assert done["ok"], done
    assert (labels_of(tmp_path / "fixed.nii.gz") == 6).sum() >= (labels_of(tmp_path / "seg.nii.gz") == 6).sum()


# --- items 2 and 3 in the worker ---------------------------------------------------------------------------

def test_the_worker_runs_the_checks_the_cli_runs(worker, tmp_path, monkeypatch):
    from contrastseg import store
    from contrastseg.cli import main

    refused = worker.request("open", ct=str(TS / "example_seg.nii.gz"))  # a label map as the CT
    assert not refused["ok"] and "does not look like CT in Hounsfield units" in refused["error"]
    ct = worker.request("open", ct=str(TS / "example_ct_sm.nii.gz"))["ct"]
    seg = worker.request("segment", ct=ct, organs=["esophagus"], output=str(tmp_path / "e.nii.gz"))
    assert not seg["ok"] and "does not cover organ ids [5]" in seg["error"]
    assert worker.request("segment", ct=ct, coarse_only=True, output=str(tmp_path / "seg.nii.gz"))["ok"]
    liver = organ_point_ras(TS / "example_ct_sm.nii.gz", tmp_path / "seg.nii.gz", 6)
    refine = worker.request("refine", ct=ct, organ="esophagus", points_ras=[liver])
    assert not refine["ok"] and "does not cover organ ids [5]" in refine["error"]
    monkeypatch.setenv("CONTRASTSEG_HOME", str(tmp_path / "home"))  # the worker's store
    assert main(["models", "add", str(build_tiny_model(tmp_path / "tiny")), "--name", "mine"]) == 0
    model = store.models_root() / "mine"
    card = (model / "card.json").read_bytes()
    into = worker.request("segment", ct=ct, coarse_only=True, output=str(model / "card.nii.gz"))
    assert not into["ok"] and "is inside the model store" in into["error"] and (model / "card.json").read_bytes() == card
    (tmp_path / "notes.json").write_text('{"mine": true}')
    over = worker.request("refine", ct=ct, organ="liver", points_ras=[liver],
                          output=str(tmp_path / "notes.nii.gz"))
    assert not over["ok"] and "is not an organ table ContrastSeg wrote" in over["error"]
    assert (tmp_path / "notes.json").read_text() == '{"mine": true}' and not (tmp_path / "notes.nii.gz").exists()
