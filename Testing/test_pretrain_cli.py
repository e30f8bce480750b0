"""`contrastseg pretrain` end to end on real CT: a 2-step run of every strategy, what it writes, that the
weights load where they are meant to (finetune --init, train-coarse --init), coarse-model attention for
unlabelled CTs, and resume after a kill."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from contrastseg.cli import main
from contrastseg.pretrain.settings import STRATEGY_NAMES
from pretrain_data import SMALL, entries, shared_dataset, write_dataset
from realdata import needs_data

pytestmark = needs_data
EXTRA = {"separeg": ["--clusters", "2"]}  # polycl-o: its default target organ, chosen from the data (auto)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return shared_dataset(tmp_path_factory)


@pytest.mark.parametrize("strategy", STRATEGY_NAMES)
def test_two_step_run_of_every_strategy(strategy, dataset, tmp_path):
    run = tmp_path / strategy
    assert main(["pretrain", str(dataset), "--strategy", strategy, "--run", str(run), "--max-steps", "2", *SMALL,
                 *EXTRA.get(strategy, [])]) == 0
    for name in ("config.json", "log.txt", "curves.png", "embedding.png", "summary.json"):
        assert (run / name).exists(), name
    config = json.loads((run / "config.json").read_text())
    assert config["strategy"] == strategy and config["hardware"]["device"] == "cpu"
    summary = json.loads((run / "summary.json").read_text())
    assert all(p["steps"] == 2 for p in summary["phases"].values())
    if strategy == "polycl-o":  # these CTs' central slices all hold the liver: auto picks an organ that splits them
        log = (run / "log.txt").read_text()
        assert "polycl-o: target organ" in log and "target organ liver" not in log, log
    if strategy == "voxel-simsiam":
        from contrastseg.train.coarse import load_coarse_init
        from contrastseg.train.settings import CoarseSettings

        load_coarse_init(run / "coarse.safetensors", CoarseSettings())
        return
    from contrastseg.models.files import build_refined
    from contrastseg.train.refined import load_encoder
    from contrastseg.train.settings import RefinedSettings

    weights = load_file(str(run / "encoder.safetensors"))
    assert all(k.startswith("encoder.") for k in weights)
    net = build_refined(RefinedSettings().card())  # the refined network `finetune --init` builds by default
    assert load_encoder(net, run / "encoder.safetensors") == len(net.encoder.state_dict())
    assert torch.equal(net.encoder.state_dict()["net.conv1.weight"], weights["encoder.net.conv1.weight"])


def test_train_coarse_starts_from_voxel_simsiam(dataset, tmp_path):
    pre = tmp_path / "pre"
    assert main(["pretrain", str(dataset), "--strategy", "voxel-simsiam", "--run", str(pre), "--max-steps", "1", *SMALL]) == 0
    run = tmp_path / "coarse"
    assert main(["train-coarse", str(dataset), "--run", str(run), "--steps", "1", "--crop", "32,48,48", "--threads", "1",
                 "--progress", "none", "--init", str(pre / "coarse.safetensors")]) == 0
    assert (run / "model" / "card.json").exists()
    assert main(["train-coarse", str(dataset), "--run", str(tmp_path / "bad"), "--steps", "1", "--channels", "4,8,16,32",
                 "--progress", "none", "--init", str(pre / "coarse.safetensors")]) == 2


def test_unlabelled_cts_take_attention_from_a_coarse_model(tmp_path, capsys):
    from contrastseg.models.files import build_coarse, save_stage, write_card

    model = tmp_path / "model"
    model.mkdir()
    coarse = {"architecture": "CoarseUNet", "channels": [8, 16, 32, 64], "spacing": [3, 3, 3]}
    net = build_coarse(coarse)
    with torch.no_grad():
        net.head.bias[6] = 20.0  # a "coarse model" that calls everything liver: attention exists, wherever it is
    coarse["weights"] = save_stage(model, "coarse", net)
    write_card(model, {"name": "liver-everywhere", "organs": list(range(1, 14)), "coarse": coarse})
    data = write_dataset(tmp_path / "unlabelled", entries(labels=False)[:1])
    assert main(["pretrain", str(data), "--strategy", "simclr", "--run", str(tmp_path / "r"), "--max-steps", "1", *SMALL]) == 2
    assert "--attention" in capsys.readouterr().err
    assert main(["pretrain", str(data), "--strategy", "simclr", "--run", str(tmp_path / "r"), "--max-steps", "1",
                 "--attention", str(model), *SMALL]) == 0
    config = json.loads((tmp_path / "r" / "config.json").read_text())
    assert config["data"][0]["attention"] == f"coarse model {model.resolve()}"
    assert list((data / ".cache" / "attention").glob("*.nii.gz"))


STEPS = 30


def _argv(dataset: Path, run: Path) -> list[str]:
    return ["pretrain", str(dataset), "--strategy", "simclr", "--run", str(run), "--steps", str(STEPS), "--epoch-steps", "4",
            "--batch", "2", "--patch", "32", "--probe", "8", "--threads", "1", "--progress", "json"]


def _run(dataset: Path, run: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "contrastseg.cli", *_argv(dataset, run)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def test_resume_after_a_kill_matches_an_uninterrupted_run(dataset, tmp_path):
    killed = tmp_path / "killed"
    proc = _run(dataset, killed)
    state = killed / "checkpoint.json"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if state.exists() and json.loads(state.read_text())["step"] >= 8:
            break
        time.sleep(0.02)
    assert proc.poll() is None, "the run finished before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    at_kill = json.loads(state.read_text())["step"]
    assert 8 <= at_kill < STEPS
    resumed = _run(dataset, killed)
    out, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err
    assert f"resuming at step {at_kill}" in out
    assert main(_argv(dataset, tmp_path / "whole")) == 0  # uninterrupted, in this process (same thread count)
    for run in (killed, tmp_path / "whole"):
        assert json.loads((run / "checkpoint.json").read_text())["step"] == STEPS
        assert json.loads((run / "history.jsonl").read_text().splitlines()[-1])["step"] == STEPS
    a, b = load_file(str(killed / "encoder.safetensors")), load_file(str(tmp_path / "whole" / "encoder.safetensors"))
    assert all(torch.allclose(a[k], b[k], atol=1e-5) for k in a)  # step-seeded batches: the same training
