"""scripts/train_default_model.py's own parts that run in seconds: the training manifest and a model made of a
new coarse network with a kept refined one (the full training is measured, not tested: docs/default-model.md)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import torch

from realdata import REPO, needs_default_model


def _script():
    spec = importlib.util.spec_from_file_location("train_default_model", REPO / "scripts" / "train_default_model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_manifest_trains_only_redistributable_cts():
    script = _script()
    entries = script.manifest()["entries"]
    assert {e["license"] for e in entries} <= {"Apache-2.0", "CC-BY-4.0"}
    assert not any("ircad" in e["image"].lower() or "chaos" in e["image"].lower() for e in entries)
    assert [e["id"] for e in script.manifest("ts-s0009")["entries"]] == ["ts-example-ct", "ts-example-dicom"]


@needs_default_model()
def test_keep_refined_joins_a_new_coarse_network_to_the_old_refined_one(tmp_path: Path):
    from contrastseg.models.files import load_model, read_card, write_card
    from contrastseg.paths import default_model

    start = default_model()
    card = read_card(start)
    coarse = tmp_path / "coarse"
    coarse.mkdir()
    net = load_model(start, stages=("coarse",)).coarse
    with torch.no_grad():  # a coarse network that differs from the start's
        net.head.bias += 1.0
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(coarse / "coarse.safetensors"))
    write_card(coarse, {"name": "new", "organs": list(range(1, 14)), "coarse": dict(card["coarse"], weights="coarse.safetensors"),
                        "preprocessing": card["preprocessing"], "training": {"coarse": {"steps": 1}}})
    out = _script().keep_refined(coarse, start, tmp_path / "model")
    joined = load_model(out)
    assert joined.card["organs"] == card["organs"]  # what the start listed, not the 13 trained channels
    assert joined.card["training"]["refined"] == card["training"]["refined"]
    assert torch.equal(joined.coarse.head.bias, net.head.bias.to(joined.coarse.head.bias.dtype))
    old = load_model(start).refined.state_dict()
    assert all(torch.equal(v, old[k]) for k, v in joined.refined.state_dict().items())
    assert json.loads((out / "card.json").read_text())["refined"]["sha256"] == card["refined"]["sha256"]
