"""The loop on real CT: a corrected IRCAD case retrains both networks of the default model and registers the
result; an organ left out of a correction is not taught as background."""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk
from safetensors.torch import load_file

from contrastseg import store
from contrastseg.cli import main
from contrastseg.dataset_edit import add_entry
from contrastseg.runs.plan import RunRequest, make_plan
from realdata import IRCAD, TS, needs_data, needs_default_model, needs_ircad

# The left-out organ's Dice (coarse network alone, `--organs spleen`, example_ct_sm vs its TotalSegmentator
# labels) after 40 coarse steps on example_ct with its label removed, no replay. Measured 2026-12-01 with the
# stomach and default model v0.2: the default model 0.515; the organ left out of the annotated organs (marginal
# loss + distillation) 0.474; the organ kept "annotated" with no voxels (a loss without partial labels: the organ
# taught as background) 0.000. Default model v0.3 does not list the stomach (no unseen CT shows it found), so the
# test now leaves out the spleen, which it lists.
LEFT_OUT = 1  # spleen
LEFT_OUT_FLOOR = 0.6


@pytest.fixture(autouse=True)
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("CONTRASTSEG_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def ircad_correction(tmp_path):
    """IRCAD patient 1's manual masks as a BTCV label map (the clinician's correction), and an "initial"
    segmentation that missed the right kidney. Written to tmp only: the licence forbids keeping conversions."""
    from contrastseg.io import read_image
    from contrastseg.metrics import load_truth

    image = read_image(IRCAD / "PATIENT_DICOM")
    masks = load_truth(IRCAD / "MASKS_DICOM.zip", image)
    labels = np.zeros(tuple(reversed(image.GetSize())), dtype=np.uint8)
    for oid in sorted(masks):
        labels[masks[oid]] = oid
    paths = {}
    for name, arr in (("correction", labels), ("initial", np.where(labels == 2, 0, labels).astype(np.uint8))):
        out = sitk.GetImageFromArray(arr)
        out.CopyInformation(image)
        paths[name] = tmp_path / f"{name}.nii.gz"
        sitk.WriteImage(out, str(paths[name]), useCompression=True)
    return paths


@needs_ircad
@needs_data
@needs_default_model()
def test_a_corrected_ircad_case_retrains_both_networks_and_registers(tmp_path):
    from contrastseg.paths import default_model

    paths = ircad_correction(tmp_path)
    ds = tmp_path / "ds"
    rec = add_entry(ds, IRCAD / "PATIENT_DICOM", paths["correction"], initial=paths["initial"], model="default", case="ircad")
    assert rec["provenance"]["initial_dice"]["right_kidney"] == 0.0 and rec["provenance"]["initial_dice"]["liver"] == 1.0
    run_dir, plan = make_plan(RunRequest(ds, steps=3, coarse_steps=3, batch=4, device="cpu", threads=2, name="ircad-run"))
    assert [d["id"] for d in plan["data"]["train"]] == ["ircad-v1"] and plan["data"]["validation"] == []  # it trains
    assert [s["name"] for s in plan["steps"]] == ["coarse", "refined", "validate", "register"]
    assert main(["run", "start", str(run_dir), "--progress", "none"]) == 0
    card = store.show("ircad-run")["card"]
    folder = store.resolve("ircad-run")
    base = default_model()
    for stage in ("coarse", "refined"):
        new, old = load_file(str(folder / card[stage]["weights"])), load_file(str(base / f"{stage}.safetensors"))
        assert set(new) == set(old)
        assert any(not np.allclose(new[k].float().numpy(), old[k].float().numpy()) for k in new), f"{stage} did not learn"
    assert card["training"]["coarse"]["organs_annotated"] == [1, 2, 3, 6, 8, 9, 10]
    assert card["training"]["coarse"]["replay"]["used"] == ["ts-example-ct"]  # the shipped replay case
    assert card["training"]["refined"]["coarse_attention_from"].endswith("steps/coarse/model")
    assert card["replay"] and card["validation"]["held_out"] is False and "no case was held out" in card["validation"]["note"]
    corrected = json.loads((run_dir / "validation.json").read_text())["corrected"]["ircad-v1"]
    assert corrected["before"]["right_kidney"] == 0.0 and set(corrected["after"]) >= {"liver", "right_kidney"}
    assert corrected["after"]["liver"] > 0.8  # a few steps from the default model keep the liver


def _left_out_run(tmp_path, name: str, organs: list[int] | None) -> float:
    """Train the coarse network 40 steps on example_ct without the LEFT_OUT organ's label; that organ's coarse
    Dice on example_ct_sm afterwards."""
    from contrastseg.dataset import NAMED_ID_MAPS
    from contrastseg.io import read_image, read_labels

    ct = read_image(TS / "example_ct.nii.gz")
    labels = sitk.GetArrayFromImage(read_labels(TS / "example_seg_fast_force_split.nii.gz", ct, NAMED_ID_MAPS["totalsegmentator"]))
    labels[labels == LEFT_OUT] = 0
    out = sitk.GetImageFromArray(labels)
    out.CopyInformation(ct)
    path = tmp_path / f"{name}.nii.gz"
    sitk.WriteImage(out, str(path))
    ds = tmp_path / f"ds-{name}"
    add_entry(ds, TS / "example_ct.nii.gz", path, organs=organs)
    run = tmp_path / f"run-{name}"
    assert main(["train-coarse", str(ds), "--run", str(run), "--base", "default", "--steps", "40", "--lr", "5e-4",
                 "--replay", "0", "--threads", "2", "--progress", "none"]) == 0
    pred = tmp_path / f"{name}-sm.nii.gz"
    assert main(["segment", str(TS / "example_ct_sm.nii.gz"), "-o", str(pred), "--model", str(run / "model"),
                 "--coarse-only", "--organs", str(LEFT_OUT), "--threads", "2", "--progress", "none"]) == 0
    ref = read_image(TS / "example_ct_sm.nii.gz")
    truth = sitk.GetArrayFromImage(read_labels(TS / "example_seg.nii.gz", ref, NAMED_ID_MAPS["totalsegmentator"])) == LEFT_OUT
    got = sitk.GetArrayFromImage(sitk.ReadImage(str(pred))) == LEFT_OUT
    return 2 * float((got & truth).sum()) / max(1, int(got.sum() + truth.sum()))


@needs_data
@needs_default_model()
def test_an_organ_left_out_of_the_correction_is_not_taught_as_background(tmp_path):
    annotated = [o for o in range(1, 14) if o != LEFT_OUT]  # every organ but the left-out one
    assert _left_out_run(tmp_path, "partial", annotated) >= LEFT_OUT_FLOOR
