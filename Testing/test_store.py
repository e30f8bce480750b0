"""The model store: register, list, show, set-default, remove (to a trash folder), from Python and the CLI."""

from __future__ import annotations

import json

import pytest

from contrastseg import store
from contrastseg.cli import main
from contrastseg.errors import ContrastSegError
from tiny_model import build_tiny_model


@pytest.fixture(autouse=True)
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("CONTRASTSEG_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp("models") / "tiny")


def names():
    return [m["name"] for m in store.list_models() if not m["bundled"]]


def test_register_list_default_remove(home, tiny):
    assert store.default_name() == store.BUNDLED
    path = store.register(tiny, "mine")
    assert path == home / "models" / "mine" and (path / "card.json").exists()
    with pytest.raises(ContrastSegError, match="never overwritten"):
        store.register(tiny, "mine")
    with pytest.raises(ContrastSegError, match="not allowed"):
        store.register(tiny, "../evil")
    assert store.unused_name("mine") == "mine-2"
    store.set_default("mine")
    assert json.loads((home / "models" / "default.json").read_text())["name"] == "mine"
    assert store.default_name() == "mine" and store.resolve(None) == path
    assert [m["name"] for m in store.list_models() if m["default"]] == ["mine"]
    assert store.show("mine")["card"]["name"] == "random"
    with pytest.raises(ContrastSegError, match="no model named"):
        store.set_default("nope")
    moved = store.remove("mine")
    assert moved.parent == home / "models" / ".trash" and (moved / "card.json").exists()
    assert names() == [] and store.default_name() == store.BUNDLED
    assert store.unused_name("mine") == "mine-2"  # a trashed name is not reused
    with pytest.raises(ContrastSegError, match="no model named"):
        store.remove("mine")


def test_bundled_model_cannot_be_removed(home, monkeypatch, tiny):
    monkeypatch.setenv("CONTRASTSEG_RESOURCES", str(tiny.parent / "resources"))
    bundled = tiny.parent / "resources" / "Models" / "default"
    if not bundled.exists():
        bundled.parent.mkdir(parents=True)
        import shutil

        shutil.copytree(tiny, bundled)
    assert store.list_models()[0]["bundled"]
    with pytest.raises(ContrastSegError, match="cannot be removed"):
        store.remove(store.BUNDLED)


def test_models_cli(home, tiny, capsys):
    assert main(["models", "add", str(tiny), "--name", "cli-model"]) == 0
    assert main(["models", "add", str(home), "--name", "not-a-model"]) == 2
    assert "no model at" in capsys.readouterr().err
    assert main(["models", "list", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert "cli-model" in [m["name"] for m in listed]
    assert main(["models", "set-default", "cli-model"]) == 0
    assert main(["models", "list"]) == 0
    assert "* cli-model" in capsys.readouterr().out
    assert main(["models", "show", "cli-model"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["default"] and shown["card"]["refined"]["depth"] == 10
    assert main(["models", "remove", "cli-model"]) == 0
    assert ".trash" in capsys.readouterr().out
    assert main(["models", "show", "cli-model"]) == 2
