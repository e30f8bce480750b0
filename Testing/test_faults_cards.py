"""Cards are data, checked before use (issue 20, item 4): every field a network or a list reads is validated
before any network is built; a card whose sizes do not fit its weights is refused without allocating the
network it describes; `models list` reports a broken model folder and lists the others.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from contrastseg import store
from contrastseg.cli import main
from contrastseg.errors import ContrastSegError
from contrastseg.models.card import REFINED_DEPTHS, REFINED_STEMS, check_card
from contrastseg.models.files import load_model
from contrastseg.paths import default_model
from contrastseg.runs.base import read_card as read_card_without_torch
from tiny_model import build_tiny_model, home  # noqa: F401 - fixtures

pytestmark = pytest.mark.skipif(not (default_model() / "card.json").exists(), reason="the default model is missing")


def edit_card(folder: Path, edit) -> Path:
    card = json.loads((folder / "card.json").read_text())
    edit(card)
    (folder / "card.json").write_text(json.dumps(card))
    return folder


def put(path: str, value):
    """An edit that sets one field, e.g. put("refined.widths", [-8, 16, 32, 64])."""
    def edit(card):
        *parents, last = path.split(".")
        for p in parents:
            card = card[p]
        card[last] = value
    return edit


BAD_CARDS = [
    ("refined.widths", [-8, 16, 32, 64], "refined.widths must be 4 whole numbers from 1 to 2048 (got [-8, 16, 32, 64])"),
    ("refined.widths", [8, 16, 32], "refined.widths must be 4 whole numbers"),
    ("refined.widths", [8, 16, 32, 100000], "refined.widths must be 4 whole numbers"),
    ("refined.widths", "8,16,32,64", "refined.widths must be"),
    ("refined.depth", 19, "refined.depth must be one of [10, 18, 34, 50, 101]"),
    ("refined.depth", True, "refined.depth must be one of"),
    ("refined.stem", "huge", "refined.stem must be one of"),
    ("refined.aspp_width", 0, "refined.aspp_width must be a whole number from 1 to 2048"),
    ("refined.skip", "yes", "refined.skip must be true or false"),
    ("refined.inplane_spacing", -1.5, "refined.inplane_spacing must be a voxel size"),
    ("refined.patch", 1e9, "refined.patch must be a whole number"),
    ("coarse.channels", [8, -16, 32, 64], "coarse.channels must be 2 to 6 whole numbers from 1 to 2048"),
    ("coarse.channels", [8] * 9, "coarse.channels must be 2 to 6"),
    ("coarse.channels", [8.5, 16, 32, 64], "coarse.channels must be"),
    ("coarse.spacing", [0, 3, 3], "coarse.spacing must be 3 voxel sizes from 0.1 to 20 mm"),
    ("coarse.spacing", ["3", 3, 3], "coarse.spacing must be 3 voxel sizes"),
    ("coarse.architecture", "UNETR", "coarse.architecture must be 'CoarseUNet'"),
    ("coarse.sha256", "abc", "coarse.sha256 must be 64 hexadecimal digits"),
    ("coarse", "big", "coarse must be a table"),
    ("coarse", None, "has no coarse network"),
    ("organs", [True, 2], "which are not BTCV organ ids 1-13"),
    ("organs", ["1", 2], "which are not BTCV organ ids 1-13"),
    ("organs", [0, 2], "which are not BTCV organ ids 1-13"),
    ("organs", [2, 2], "which are not BTCV organ ids 1-13"),
    ("organs", "liver", "which are not BTCV organ ids 1-13"),
    ("name", ["a"], "name must be text"),
    ("validation", "good", "validation must be a table"),
    ("validation", {"model": {"mean_dice": "0.9"}}, "validation.model.mean_dice must be a number from 0 to 1"),
    ("format", "contrastseg-model/2", "is not a ContrastSeg model card"),
]


@pytest.mark.parametrize("field, value, message", BAD_CARDS, ids=[f"{f}={json.dumps(v)[:20]}" for f, v, _ in BAD_CARDS])
def test_a_bad_card_is_one_sentence_before_any_network(tmp_path, capsys, field, value, message):
    folder = edit_card(build_tiny_model(tmp_path / "tiny"), put(field, value))
    with pytest.raises(ContrastSegError) as err:
        read_card_without_torch(folder)  # Slicer's run plan: the same checks, no torch
    assert message in str(err.value)
    assert main(["models", "add", str(folder), "--name", "bad"]) == 2
    out = capsys.readouterr().err.strip().splitlines()
    assert len(out) == 1 and message in out[0] and "Traceback" not in out[0], out
    assert not (store.models_root() / "bad").exists()


def test_the_card_checks_know_the_networks_choices():
    from contrastseg.models.refined import DEPTHS, STEMS

    assert tuple(sorted(DEPTHS)) == REFINED_DEPTHS and tuple(sorted(STEMS)) == REFINED_STEMS
    card = json.loads((default_model() / "card.json").read_text())
    assert check_card(card, "default") is card  # the shipped card passes as it is


def test_a_huge_card_is_refused_without_allocating_it(tmp_path):
    """Widths within the bounds but far from the weights (a 3-billion-parameter ResNet-101): refused from the
    weights file's header after a build on the meta device. The child's peak memory shows nothing was allocated
    (the real network would take 12 GB)."""
    folder = edit_card(build_tiny_model(tmp_path / "tiny"),
                       put("refined", {**json.loads((tmp_path / "tiny" / "card.json").read_text())["refined"],
                                       "depth": 101, "widths": [2048] * 4, "aspp_width": 2048}))
    child = subprocess.Popen([sys.executable, "-c", "import sys\nfrom contrastseg.models.files import load_model\n"
                              "from contrastseg.errors import ContrastSegError\ntry:\n    load_model(sys.argv[1])\n"
                              "except ContrastSegError as err:\n    print(err)\n", str(folder)],
                             stdout=subprocess.PIPE, text=True)
    said = child.stdout.read()
    _, status, usage = os.wait4(child.pid, 0)
    assert status == 0 and "does not fit the RefinedNet described by its card" in said, said
    assert usage.ru_maxrss * 1024 < 2 * 2 ** 30, f"peak memory {usage.ru_maxrss / 2 ** 20:.1f} GB"  # KiB on Linux


def test_models_list_reports_a_broken_folder_and_lists_the_others(tmp_path, home, capsys):
    build_tiny_model(tmp_path / "good")
    assert main(["models", "add", str(tmp_path / "good"), "--name", "good"]) == 0
    root = store.models_root()
    shutil.copytree(root / "good", root / "negative")
    edit_card(root / "negative", put("refined.widths", [-8, 16, 32, 64]))
    shutil.copytree(root / "good", root / "a-list")
    (root / "a-list" / "card.json").write_text("[1, 2, 3]")
    shutil.copytree(root / "good", root / "not-json")
    (root / "not-json" / "card.json").write_text('{"format": ')
    (root / "empty").mkdir()
    (root / "zz-good").mkdir()
    for f in (root / "good").iterdir():
        shutil.copy(f, root / "zz-good" / f.name)
    capsys.readouterr()
    assert main(["models", "list"]) == 0
    out, err = capsys.readouterr()
    listed = [ln.split()[0].strip("*") or ln.split()[1] for ln in out.splitlines()[1:]]
    assert "good" in out and "zz-good" in out and "default" in out, out
    assert not any(b in listed for b in ("negative", "a-list", "not-json", "empty")), out
    warnings = [ln for ln in err.splitlines() if "skipped the broken model folder" in ln]
    assert len(warnings) == 4 and any("refined.widths must be" in w for w in warnings), err
    assert main(["models", "list", "--json"]) == 0
    assert {m["name"] for m in json.loads(capsys.readouterr().out)} == {"default", "good", "zz-good"}
    with pytest.raises(ContrastSegError, match="the model 'negative' in the store is broken: .*refined.widths"):
        store.resolve("negative")
    assert main(["models", "show", "not-json"]) == 2
    assert "is broken: its card.json is not valid JSON" in capsys.readouterr().err
    assert load_model(store.resolve("zz-good")).organs == list(range(1, 14))
