"""Supervised training of both stages through the CLI on real CT: model files, resume, progress stream.

Tiny networks and a handful of steps: these test the machinery (files, resume, loading), not accuracy.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from contrastseg.models.files import load_model
from contrastseg.train.loop import read_history
from realdata import TS, needs_data

pytestmark = needs_data
TINY_COARSE = ["--channels", "4,8,16,32", "--crop", "16,32,32", "--batch", "1"]
TINY_REFINED = ["--depth", "10", "--widths", "8,16,32,64", "--aspp-width", "16", "--batch", "2"]


def cli(*args):
    proc = subprocess.run([sys.executable, "-m", "contrastseg.cli", *map(str, args), "--threads", "1"],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    return proc


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    folder = tmp_path_factory.mktemp("data")
    (folder / "manifest.json").write_text(json.dumps({"format": "contrastseg-dataset/1", "entries": [
        {"id": "sm", "image": str(TS / "example_ct_sm.nii.gz"), "labels": str(TS / "example_seg.nii.gz"),
         "id_map": "totalsegmentator"}]}))
    return folder


@pytest.fixture(scope="module")
def coarse_run(dataset, tmp_path_factory):
    run = tmp_path_factory.mktemp("coarse")
    cli("train-coarse", dataset, "--run", run, "--steps", "2", *TINY_COARSE, "--progress", "none")
    proc = cli("train-coarse", dataset, "--run", run, "--steps", "4", *TINY_COARSE, "--progress", "json")
    return run, proc


def test_train_coarse_resumes_and_writes_a_loadable_model(coarse_run):
    run, proc = coarse_run
    assert [h["step"] for h in read_history(run)] == [1, 2, 3, 4]  # resumed at 2, not restarted
    card = json.loads((run / "model" / "card.json").read_text())
    assert card["training"]["coarse"]["summary"]["resumed_from"] == 2
    assert card["training"]["coarse"]["data"][0]["image_sha256"]
    assert {6, 1} <= set(card["organs"]) and 5 not in card["organs"]  # no esophagus in the labels
    events = [json.loads(line) for line in proc.stdout.splitlines()]
    steps = [e["step"] for e in events if e["event"] == "progress" and "step" in e]
    assert steps and steps[-1] == 4 and all(e.get("loss") is not None for e in events if "step" in e)
    assert events[-1]["event"] == "done" and (run / "curves.png").stat().st_size > 5000
    model = load_model(run / "model", ("coarse",))
    assert model.coarse is not None and model.refined is None


def test_finetune_on_top_of_the_coarse_model_segments(coarse_run, dataset, tmp_path):
    run, _ = coarse_run
    ft = tmp_path / "ft"
    cli("finetune", dataset, "--run", ft, "--base", run / "model", "--steps", "3", *TINY_REFINED, "--progress", "none")
    model = load_model(ft / "model")
    assert model.refined is not None and model.card["refined"]["depth"] == 10
    assert model.card["training"]["refined"]["organs_trained"]
    out = tmp_path / "seg.nii.gz"
    cli("segment", TS / "example_ct_sm.nii.gz", "-o", out, "--model", ft / "model", "--coarse-only", "--progress", "none")
    assert out.exists()


def test_training_needs_labelled_entries(tmp_path):
    (tmp_path / "manifest.json").write_text(json.dumps({"format": "contrastseg-dataset/1", "entries": [
        {"id": "u", "image": str(TS / "example_ct_sm.nii.gz"), "labels": None}]}))
    proc = subprocess.run([sys.executable, "-m", "contrastseg.cli", "train-coarse", str(tmp_path), "--run",
                           str(tmp_path / "run"), "--steps", "1"], capture_output=True, text=True)
    assert proc.returncode == 2 and "no labelled entries" in proc.stderr
