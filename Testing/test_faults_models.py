"""Model integrity (issue 8, item 3): the card records each weights file's SHA-256 and the coarse weights
name the organs they were trained for; `models add` and every load refuse a tampered or broken model in one
sentence; a broken or dangling default.json is reported; a removed model's name is never registered again.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from safetensors import safe_open
from safetensors.torch import save_file

from contrastseg import store
from contrastseg.checksum import sha256
from contrastseg.cli import main
from contrastseg.errors import ContrastSegError
from contrastseg.models.files import load_model
from contrastseg.organs import ORGANS
from contrastseg.paths import default_model
from realdata import TS, needs_data, needs_default_model
from tiny_model import build_tiny_model

pytestmark = needs_default_model()
SMALL = TS / "example_ct_sm.nii.gz"


@pytest.fixture(autouse=True)
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("CONTRASTSEG_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


@pytest.fixture()
def model(tmp_path) -> Path:
    """A copy of the bundled default model."""
    folder = tmp_path / "model"
    shutil.copytree(default_model(), folder)
    return folder


def card(folder: Path) -> dict:
    return json.loads((folder / "card.json").read_text())


def edit_card(folder: Path, edit) -> None:
    c = card(folder)
    edit(c)
    (folder / "card.json").write_text(json.dumps(c))


def rewrite_weights(folder: Path, stage: str, edit, reseal: bool = True) -> None:
    """Change tensors of a stage's weights file (metadata kept); `reseal` records the new SHA-256 in the card,
    so only the later checks can catch the change."""
    path = folder / f"{stage}.safetensors"
    with safe_open(str(path), "pt") as f:
        meta, state = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    edit(state)
    save_file(state, str(path), metadata=meta)
    if reseal:
        edit_card(folder, lambda c: c[stage].update(sha256=sha256(path)))


def one_sentence(capsys, argv, pattern) -> None:
    assert main(list(map(str, argv))) == 2
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and pattern in lines[0] and "Traceback" not in err, err


def test_cards_record_hashes_and_trained_organs(tmp_path):
    from contrastseg.models.files import trained_organs

    c = card(default_model())
    assert c["coarse"]["sha256"] == sha256(default_model() / "coarse.safetensors")
    assert c["refined"]["sha256"] == sha256(default_model() / "refined.safetensors")
    trained = trained_organs(default_model() / "coarse.safetensors")  # every channel trained; the card lists
    assert set(c["organs"]) < set(trained) and 5 not in c["organs"]   # those an unseen CT shows found
    assert set(c["not_listed"]) == {o.key for o in ORGANS if o.id in set(trained) - set(c["organs"])}
    tiny = build_tiny_model(tmp_path / "tiny")  # write_card fills both in for a freshly trained model
    assert card(tiny)["coarse"]["sha256"] == sha256(tiny / "coarse.safetensors")
    assert trained_organs(tiny / "coarse.safetensors") == list(range(1, 14))


def test_tampered_weights_are_refused_by_their_hash(model):
    raw = bytearray((model / "coarse.safetensors").read_bytes())
    raw[-5] ^= 0x40  # one bit of one weight
    (model / "coarse.safetensors").write_bytes(bytes(raw))
    with pytest.raises(ContrastSegError, match="does not match the SHA-256 its card records"):
        load_model(model)


def test_nan_weights_are_refused(model):
    rewrite_weights(model, "refined", lambda s: next(v for v in s.values() if v.is_floating_point()).fill_(float("nan")))
    with pytest.raises(ContrastSegError, match="NaN or infinite weights in 1 tensors"):
        load_model(model)


def test_random_bytes_are_refused_even_without_a_recorded_hash(model):
    (model / "refined.safetensors").write_bytes(bytes(range(256)) * 64)
    edit_card(model, lambda c: c["refined"].pop("sha256"))  # a card from before hashes were recorded
    with pytest.raises(ContrastSegError, match="is not a whole safetensors file"):
        load_model(model)


@pytest.mark.parametrize("breakage, pattern", [
    ("wrong_shapes", "for another architecture"),
    ("truncated", "is not a whole safetensors file"),
    ("renamed_png", "is not a whole safetensors file"),
    ("tampered", "does not match the SHA-256"),
    ("weights_outside", "must be the name of a .safetensors file in the model folder"),
])
def test_models_add_refuses_broken_folders(model, home, capsys, breakage, pattern):
    weights = model / "refined.safetensors"
    if breakage == "wrong_shapes":
        edit_card(model, lambda c: c["refined"].update(depth=34))
    elif breakage == "truncated":
        weights.write_bytes(weights.read_bytes()[:100_000])
        edit_card(model, lambda c: c["refined"].pop("sha256"))
    elif breakage == "renamed_png":
        import matplotlib.pyplot as plt

        from contrastseg.plots import save_figure

        save_figure(plt.figure(), model / "picture.png")
        shutil.move(model / "picture.png", weights)
        edit_card(model, lambda c: c["refined"].pop("sha256"))
    elif breakage == "tampered":
        rewrite_weights(model, "coarse", lambda s: s["head.bias"].add_(0.5), reseal=False)
    else:
        edit_card(model, lambda c: c["refined"].update(weights="../refined.safetensors"))
    one_sentence(capsys, ["models", "add", model, "--name", "broken"], pattern)
    assert not (home / "models" / "broken").exists()


def test_card_organs_must_match_the_trained_channels(model, capsys):
    """A card may list fewer organs than the coarse weights were trained for (the default model lists only the
    organs an unseen CT shows found), never more: with the weights recording 12 trained channels, a card listing
    the 13th is refused. The genuine card refuses `--organs esophagus` instead of labelling its voxels."""
    path = model / "coarse.safetensors"
    with safe_open(str(path), "pt") as f:
        meta, state = dict(f.metadata()), {k: f.get_tensor(k) for k in f.keys()}
    meta["organs"] = json.dumps([o for o in range(1, 14) if o != 5])  # the esophagus channel never trained
    save_file(state, str(path), metadata=meta)
    edit_card(model, lambda c: c.update(organs=list(range(1, 14)), coarse=dict(c["coarse"], sha256=sha256(path))))
    with pytest.raises(ContrastSegError, match=r"lists 13 organs, but .* trained for 12: not for esophagus \(5\)"):
        load_model(model)
    one_sentence(capsys, ["models", "add", model, "--name", "thirteen"], "not for esophagus (5)")
    edit_card(model, lambda c: c.update(organs=[1, 2, 3]))  # a card may cover fewer organs than were trained
    loaded = load_model(model, ("coarse",))
    assert loaded.organs == [1, 2, 3] and loaded.competing == [o for o in range(1, 14) if o != 5]


@needs_data
def test_segment_refuses_an_organ_the_card_does_not_list(tmp_path, capsys):
    one_sentence(capsys, ["segment", SMALL, "-o", tmp_path / "out.nii.gz", "--organs", "esophagus", "--progress", "none"],
                 "does not cover organ ids [5]")


@needs_data
def test_broken_and_dangling_default_json_are_reported(home, tmp_path, capsys):
    root = home / "models"
    root.mkdir(parents=True)
    (root / "default.json").write_text('{"name": ')
    with pytest.raises(ContrastSegError, match="default-model file .* is broken"):
        store.resolve(None)
    one_sentence(capsys, ["segment", SMALL, "-o", tmp_path / "out.nii.gz", "--progress", "none"], "is broken")
    (root / "default.json").write_text('{"name": "gone"}')
    with pytest.raises(ContrastSegError, match="names the model 'gone', which is not in the store"):
        store.default_name()
    assert main(["models", "list"]) == 0
    assert "warning: the store's default-model file" in capsys.readouterr().err
    assert main(["models", "set-default", "default"]) == 0 and store.default_name() == "default"


def test_a_removed_models_name_is_never_reused(home, tmp_path, capsys):
    tiny = build_tiny_model(tmp_path / "tiny")
    assert main(["models", "add", str(tiny), "--name", "mine"]) == 0
    assert main(["models", "remove", "mine"]) == 0
    capsys.readouterr()
    with pytest.raises(ContrastSegError, match="names are never reused: choose another, e.g. 'mine-2'"):
        store.register(tiny, "mine")
    one_sentence(capsys, ["models", "add", tiny, "--name", "mine"], "belonged to a removed model")
    assert main(["models", "add", str(tiny), "--name", "mine-2"]) == 0
