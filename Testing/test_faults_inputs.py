"""The same checks everywhere (issue 20, items 2 and 3), on real CT: every command that takes a CT refuses a
label map or a [0, 1] image as `segment` does; an organ the model does not cover is refused by every command;
a bare model name never resolves to a folder in the current directory; `models add` copies regular files only;
a named pipe is refused instead of read; no output lands on an input or inside a model, a dataset or a run; an
organ table never replaces a file ContrastSeg did not write.

The CLI runs in this process (`contrastseg.cli.main`) where a refusal comes before anything could block; a
named pipe, which would block a read for ever if it were opened, goes to a child process with a timeout.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from contrastseg import store
from contrastseg.cli import main
from contrastseg.errors import ContrastSegError
from contrastseg.paths import default_model
from realdata import TS, needs_data, needs_default_model
from tiny_model import build_tiny_model, home  # noqa: F401 - fixtures

pytestmark = [needs_data, needs_default_model()]
CT, SEG = TS / "example_ct_sm.nii.gz", TS / "example_seg.nii.gz"


def digest(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def refused(capsys, argv, pattern) -> str:
    """Exit code 2 and exactly one line on stderr, naming `pattern`."""
    rc = main(list(map(str, argv)))
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert rc == 2 and len(lines) == 1 and "Traceback" not in err, err
    assert pattern in lines[0], lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def not_ct(tmp_path_factory) -> dict[str, Path]:
    """A label map and a [0, 1] image, each on the CT's grid: files a careless user gives as the CT."""
    tmp_path = tmp_path_factory.mktemp("not-ct")
    ct = sitk.ReadImage(str(CT), sitk.sitkFloat32)
    arr = sitk.GetArrayFromImage(ct)
    unit = sitk.GetImageFromArray((arr - arr.min()) / (arr.max() - arr.min()))
    unit.CopyInformation(ct)
    sitk.WriteImage(unit, str(tmp_path / "unit.nii.gz"))
    btcv = tmp_path / "btcv.nii.gz"
    assert main(["segment", str(CT), "-o", str(btcv), "--model", str(default_model()), "--coarse-only", "--threads", "1",
                 "--progress", "none"]) == 0
    return {"label map": SEG, "btcv label map": btcv, "[0, 1] image": tmp_path / "unit.nii.gz"}


# --- item 2: the CT checks segment runs -------------------------------------------------------------------

def test_refine_organ_refuses_what_segment_refuses(not_ct, tmp_path, capsys):
    for what, image in not_ct.items():
        refused(capsys, ["refine-organ", image, "--labels", not_ct["btcv label map"], "--organ", "liver",
                         "--point-ijk", "60,50,15", "-o", tmp_path / "out.nii.gz", "--threads", "1", "--progress", "none"],
                "does not look like CT in Hounsfield units")
        assert not (tmp_path / "out.nii.gz").exists(), what


def test_dataset_add_refuses_a_label_map_as_the_ct(not_ct, tmp_path, capsys):
    ds = tmp_path / "ds"
    for image in not_ct.values():
        refused(capsys, ["dataset", "add", image, not_ct["btcv label map"], "--dataset", ds], "does not look like CT")
    assert not (ds / "manifest.json").exists() and not list(ds.rglob("*.nii.gz")) and not list(ds.rglob("*.nrrd"))


def test_refine_organ_refuses_an_organ_the_model_does_not_cover(not_ct, tmp_path, capsys):
    refused(capsys, ["refine-organ", CT, "--labels", not_ct["btcv label map"], "--organ", "esophagus",
                     "--point-ijk", "60,50,15", "-o", tmp_path / "out.nii.gz"], "does not cover organ ids [5]")


# --- model names and the store ----------------------------------------------------------------------------

def test_a_bare_name_never_resolves_to_a_folder_here(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    build_tiny_model(tmp_path / "default", name="impostor")
    build_tiny_model(tmp_path / "mine", name="mine")
    assert store.resolve("default") == default_model()  # the bundled model, not ./default
    assert store.resolve("./default") == Path("./default")
    with pytest.raises(ContrastSegError, match=r"no model named 'mine' in the store; to use the folder 'mine' here, "
                                               r"give it as a path: \./mine"):
        store.resolve("mine")
    assert main(["models", "add", "mine", "--name", "mine"]) == 0  # `models add` takes a folder, as before
    assert store.resolve("mine") == store.models_root() / "mine"
    capsys.readouterr()


def test_models_add_copies_regular_files_only(tmp_path, capsys):
    folder = build_tiny_model(tmp_path / "tiny")
    big = tmp_path / "big"
    big.mkdir()
    (big / "blob.bin").write_bytes(b"\0" * (4 << 20))
    os.symlink(big, folder / "docs")  # a link to a folder: once 169 MB of /usr/share/doc in the store
    os.symlink(big / "blob.bin", folder / "notes.bin")
    os.mkfifo(folder / "pipe")
    (folder / "history").mkdir()
    (folder / "history" / "loss.json").write_text("[1, 2]")
    assert main(["models", "add", str(folder), "--name", "linked"]) == 0
    copy = store.models_root() / "linked"
    assert sorted(str(p.relative_to(copy)) for p in copy.rglob("*")) == [
        "card.json", "coarse.safetensors", "history", "history/loss.json", "refined.safetensors"]
    capsys.readouterr()
    card = tmp_path / "card-link"
    build_tiny_model(card)
    os.replace(card / "card.json", tmp_path / "real-card.json")
    os.symlink(tmp_path / "real-card.json", card / "card.json")  # the card itself a link: not copied, refused
    refused(capsys, ["models", "add", card, "--name", "cardlink"], "no symbolic links")
    assert not (store.models_root() / "cardlink").exists()


# --- named pipes ------------------------------------------------------------------------------------------

def run_cli(*argv, timeout=600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "contrastseg.cli", *map(str, argv)], capture_output=True, text=True,
                          timeout=timeout, env=dict(os.environ))


@pytest.mark.parametrize("argv, pattern", [
    (["dataset", "add", "{pipe}", "--dataset", "{tmp}/ds"], "input {pipe} is a named pipe"),
    (["dataset", "add", CT, "{pipe}", "--dataset", "{tmp}/ds"], "label map {pipe} is a named pipe"),
    (["segment", "{pipe}", "-o", "{tmp}/out.nii.gz", "--progress", "none"], "input {pipe} is a named pipe"),
    (["refine-organ", CT, "--labels", "{pipe}", "--organ", "liver", "--point-ijk", "60,50,15", "-o", "{tmp}/out.nii.gz"],
     "label map {pipe} is a named pipe"),
    (["evaluate", "{pipe}", SEG], "label map {pipe} is a named pipe"),
], ids=["dataset-image", "dataset-labels", "segment", "refine-labels", "evaluate"])
def test_a_named_pipe_is_refused_not_read(tmp_path, argv, pattern):
    pipe = tmp_path / "pipe.nii.gz"
    os.mkfifo(pipe)
    fill = lambda a: str(a).replace("{pipe}", str(pipe)).replace("{tmp}", str(tmp_path))  # noqa: E731
    proc = run_cli(*map(fill, argv))  # a read of the pipe would block until the timeout (imports take a while)
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert proc.returncode == 2 and len(lines) == 1 and fill(pattern) in lines[0], proc.stderr
    assert not (tmp_path / "ds" / "manifest.json").exists() and not (tmp_path / "out.nii.gz").exists()


def test_a_model_card_that_is_a_pipe_is_refused(tmp_path, capsys):
    folder = build_tiny_model(tmp_path / "tiny")
    (folder / "card.json").unlink()
    os.mkfifo(folder / "card.json")
    refused(capsys, ["models", "add", folder, "--name", "piped"], "is not a regular file")


# --- item 3: nothing written over what the project keeps ---------------------------------------------------

@pytest.fixture()
def kept(tmp_path, capsys) -> dict[str, Path]:
    """A store model, a dataset with one entry and a planned run, as a user has them."""
    from contrastseg.dataset_edit import add_entry
    from contrastseg.runs.plan import RunRequest, make_plan

    assert main(["models", "add", str(build_tiny_model(tmp_path / "tiny")), "--name", "mine"]) == 0
    ds = tmp_path / "ds"
    add_entry(ds, CT, SEG, id_map="totalsegmentator", case="c")
    run_dir, _ = make_plan(RunRequest(ds, base="mine", steps=2, coarse_steps=2, batch=2, device="cpu"), tmp_path / "run")
    capsys.readouterr()
    return {"model": store.models_root() / "mine", "dataset": ds, "run": run_dir}


def snapshot(folders) -> dict[str, str]:
    return {str(p): digest(p) for f in folders for p in sorted(Path(f).rglob("*")) if p.is_file() and p.name != ".lock"}


def test_no_output_lands_in_a_model_a_dataset_or_a_run(kept, not_ct, tmp_path, capsys):
    before = snapshot(kept.values())
    labels = not_ct["btcv label map"]
    model = kept["model"]
    # the case: the sidecar of card.nii.gz is the model's card.json
    refused(capsys, ["refine-organ", CT, "--labels", labels, "--organ", "liver", "--point-ijk", "60,50,15",
                     "--model", "mine", "-o", model / "card.nii.gz"], f"is inside the model store {store.models_root()}")
    for out, where in ((kept["dataset"] / "labels" / "c-v1.seg.nrrd", "dataset"), (kept["run"] / "seg.nii.gz", "run folder"),
                       (kept["dataset"] / "images" / "x.nii.gz", "dataset")):
        refused(capsys, ["segment", CT, "-o", out, "--coarse-only", "--progress", "none"], f"is inside the {where}")
    outside = tmp_path / "elsewhere"
    shutil.copytree(model, outside)  # a model folder outside the store is kept as well
    refused(capsys, ["segment", CT, "-o", tmp_path / "seg.nii.gz", "--overlay", outside / "card.png", "--progress", "none"],
            f"is inside the model folder {outside}")
    refused(capsys, ["evaluate", labels, SEG, "--truth-id-map", "totalsegmentator", "-o", labels], "is the input")
    assert snapshot(kept.values()) == before


def test_no_dataset_or_run_is_made_inside_a_model_a_dataset_or_a_run(kept, tmp_path, capsys):
    before = snapshot(kept.values())
    refused(capsys, ["dataset", "add", CT, "--dataset", kept["model"]], "would be inside the model store")
    refused(capsys, ["dataset", "add", CT, "--dataset", kept["run"] / "ds"], "would be inside the run folder")
    refused(capsys, ["dataset", "add", CT, "--dataset", kept["dataset"] / "labels"], "would be inside the dataset")
    refused(capsys, ["run", "plan", "--dataset", kept["dataset"], "--base", "mine", "--device", "cpu", "--run",
                     kept["dataset"] / "run"], "would be inside the dataset")
    assert snapshot(kept.values()) == before and not (kept["run"] / "ds").exists()


def test_a_bare_run_name_is_a_run_in_the_store_not_a_folder_here(kept, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "run").mkdir(exist_ok=True)  # ./run is the kept run folder itself, planned by path
    refused(capsys, ["run", "status", "run"], "holds no readable run plan")  # $CONTRASTSEG_HOME/runs/run
    assert main(["run", "status", "./run"]) == 0 and '"status": "planned"' in capsys.readouterr().out


def test_a_label_map_output_of_an_unknown_format_is_refused_first(not_ct, tmp_path, capsys):
    refused(capsys, ["refine-organ", CT, "--labels", not_ct["btcv label map"], "--organ", "liver", "--point-ijk",
                     "60,50,15", "-o", tmp_path / "fixed.png"], "unsupported extension")


def test_an_organ_table_never_replaces_a_file_it_did_not_write(tmp_path, capsys):
    foreign = tmp_path / "seg.json"
    foreign.write_text(json.dumps({"patient": "someone's notes"}))
    refused(capsys, ["segment", CT, "-o", tmp_path / "seg.nii.gz", "--coarse-only", "--progress", "none"],
            "is not an organ table ContrastSeg wrote")
    assert json.loads(foreign.read_text()) == {"patient": "someone's notes"} and not (tmp_path / "seg.nii.gz").exists()
    foreign.unlink()
    argv = ["segment", CT, "-o", tmp_path / "seg.nii.gz", "--coarse-only", "--threads", "1", "--progress", "none"]
    assert main(list(map(str, argv))) == 0
    table = json.loads(foreign.read_text())
    assert table["format"] == "contrastseg-labels/1" and {r["key"] for r in table["labels"]} >= {"liver"}
    legacy = {"labels": table["labels"]}  # written before the format marker: still recognised as ours
    foreign.write_text(json.dumps(legacy))
    assert main(list(map(str, argv))) == 0
    capsys.readouterr()
    seg = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "seg.nii.gz")))
    assert (seg == 6).sum() > 1000 and set(np.unique(seg)) <= set(range(14))
