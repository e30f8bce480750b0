"""The loop's building blocks on small data: partial-label losses, the validation rule, the shared cache."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from contrastseg.train.partial import marginal_dice_ce, merged_distillation
from contrastseg.runs.plan import RunRequest
from contrastseg.runs.snapshot import AUTO_VALIDATION_FROM, split_validation
from realdata import TS, needs_data


def _direct(logits: np.ndarray, target: np.ndarray, annotated: np.ndarray, eps: float = 1e-5) -> float:
    """The marginal loss written out voxel by voxel in numpy, from its definition (METHODS §9)."""
    e = np.exp(logits - logits.max(1, keepdims=True))
    p = e / e.sum(1, keepdims=True)
    ce = []
    for b in range(p.shape[0]):
        merged = [0] + [c for c in range(1, p.shape[1]) if not annotated[b, c]]
        for v in np.ndindex(target.shape[1:]):
            t = target[(b, *v)]
            ce.append(-np.log(p[(b, t, *v)] if t > 0 else sum(p[(b, j, *v)] for j in merged)))
    dice = []
    for c in range(1, p.shape[1]):
        rows = annotated[:, c]
        if rows.any():
            pc, gc = p[rows, c], (target[rows] == c).astype(float)
            dice.append(1 - (2 * (pc * gc).sum() + eps) / (pc.sum() + gc.sum() + eps))
    return float(np.mean(dice) + np.mean(ce))


def _batch(seed: int = 0):
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 2, size=(2, 5, 3, 4, 4)).astype(np.float32)
    annotated = np.array([[True, True, False, True, False], [True, True, True, True, True]])
    target = rng.integers(0, 5, size=(2, 3, 4, 4))
    target[0][np.isin(target[0], [2, 4])] = 0  # sample 0 does not annotate organs 2 and 4: they read as 0
    return logits, target, annotated


def test_marginal_loss_matches_a_direct_computation():
    logits, target, annotated = _batch()
    got = marginal_dice_ce(torch.from_numpy(logits), torch.from_numpy(target), torch.from_numpy(annotated))
    assert float(got) == pytest.approx(_direct(logits, target, annotated), rel=1e-4)


def test_marginal_loss_cannot_tell_an_unannotated_organ_from_background():
    """Swapping the logits of background and an unannotated organ changes nothing (no gradient between them);
    swapping them with an annotated organ does."""
    logits, target, annotated = _batch(1)
    t, a = torch.from_numpy(target), torch.from_numpy(annotated)
    base = float(marginal_dice_ce(torch.from_numpy(logits), t, a))
    swapped = logits.copy()
    swapped[0, [0, 2]] = logits[0, [2, 0]]  # sample 0: background <-> organ 2 (not annotated)
    assert float(marginal_dice_ce(torch.from_numpy(swapped), t, a)) == pytest.approx(base, rel=1e-6)
    swapped = logits.copy()
    swapped[0, [0, 1]] = logits[0, [1, 0]]  # background <-> organ 1 (annotated)
    assert abs(float(marginal_dice_ce(torch.from_numpy(swapped), t, a)) - base) > 1e-3
    # the gradient on the merged classes is split exactly as their softmax: nothing pushes organ 2 down
    x = torch.from_numpy(logits).requires_grad_(True)
    marginal_dice_ce(x, t, a).backward()
    g = x.grad[0, [0, 2, 4]]
    share = torch.softmax(x.detach()[0, [0, 2, 4]], dim=0)
    assert torch.allclose(g / g.sum(0, keepdim=True), share, atol=1e-4)


def test_distillation_only_splits_the_merged_class():
    logits, target, annotated = _batch(2)
    t, a = torch.from_numpy(target), torch.from_numpy(annotated)
    student = torch.from_numpy(logits).requires_grad_(True)
    assert float(merged_distillation(student, student.detach().clone(), t, a).detach()) == pytest.approx(0.0, abs=1e-6)
    teacher = torch.from_numpy(np.random.default_rng(3).normal(0, 2, logits.shape).astype(np.float32))
    loss = merged_distillation(student, teacher, t, a)
    assert float(loss.detach()) > 0.01
    loss.backward()
    assert float(student.grad[1].abs().max()) == 0.0  # sample 1 annotates every organ: nothing to distil
    assert float(student.grad[0, [1, 3]].abs().max()) == 0.0  # annotated organs of sample 0: the user decides
    assert float(student.grad[0, [0, 2, 4]].abs().max()) > 0.0


def _rec(i: int, corrected: bool, validation: bool = False) -> dict:
    rec = {"id": f"case{i}-v1", "labels": f"labels/case{i}.seg.nrrd", "provenance": {}}
    if corrected:
        rec["provenance"] = {"edited": {}, "initial_dice": {"liver": 0.9}, "model": "default"}
    if validation:
        rec["validation"] = True
    return rec


def test_validation_rule_never_takes_a_correction_unless_marked():
    train, held, why = split_validation([_rec(1, True)])
    assert [r["id"] for r in train] == ["case1-v1"] and not held and "no case was held out" in why
    train, held, _ = split_validation([_rec(i, True) for i in range(6)])  # many corrections: all train
    assert len(train) == 6 and not held
    few = [_rec(1, True), _rec(2, False), _rec(3, False)]
    assert not split_validation(few)[1]  # fewer than AUTO_VALIDATION_FROM labelled cases: nothing held out
    many = [_rec(1, True)] + [_rec(i, False) for i in range(2, AUTO_VALIDATION_FROM + 1)]
    train, held, _ = split_validation(many)
    assert len(held) == 1 and held[0]["id"] != "case1-v1" and len(train) == len(many) - 1
    train, held, why = split_validation([_rec(1, True, validation=True), _rec(2, True)])
    assert [r["id"] for r in held] == ["case1-v1"] and [r["id"] for r in train] == ["case2-v1"] and "marked" in why


def test_finetune_alias_means_both_stages():
    assert RunRequest(dataset=".", stages=("pretrain", "finetune")).stage_set() == ("pretrain", "coarse", "refined")
    assert RunRequest(dataset=".").stage_set() == ("coarse", "refined")
    assert RunRequest(dataset=".", stages=("refined",)).stage_set() == ("refined",)


@needs_data
def test_preprocessing_is_shared_and_keyed_by_content(tmp_path, monkeypatch):
    """A second run (another dataset folder, same files) does not preprocess again; a changed file is redone."""
    import contrastseg.dataset as ds

    monkeypatch.setenv("CONTRASTSEG_HOME", str(tmp_path / "home"))
    image = tmp_path / "ct.nii.gz"
    shutil.copyfile(TS / "example_ct_sm.nii.gz", image)
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "manifest.json").write_text(json.dumps({"format": ds.DATASET_FORMAT, "entries": [
            {"id": f"case-{name}", "image": str(image), "labels": str(TS / "example_seg.nii.gz"), "id_map": "totalsegmentator"}]}))
    calls = []
    real = ds.prepare
    monkeypatch.setattr(ds, "prepare", lambda *a, **k: calls.append(1) or real(*a, **k))
    first = ds.prepare_case(ds.entries(tmp_path / "a")[0], (3.0, 3.0, 3.0))
    again = ds.prepare_case(ds.entries(tmp_path / "b")[0], (3.0, 3.0, 3.0))
    assert len(calls) == 1 and np.array_equal(first.image, again.image) and np.array_equal(first.labels, again.labels)
    assert list((tmp_path / "home" / "cache" / "prepared").glob("*.npz"))
    import SimpleITK as sitk

    ct = sitk.ReadImage(str(image))
    arr = sitk.GetArrayFromImage(ct)
    arr[:, :10] = -1000  # the same name, other content
    changed = sitk.GetImageFromArray(arr)
    changed.CopyInformation(ct)
    sitk.WriteImage(changed, str(image))
    redone = ds.prepare_case(ds.entries(tmp_path / "a")[0], (3.0, 3.0, 3.0))
    assert len(calls) == 2 and not np.array_equal(redone.image, first.image)


@needs_data
def test_unannotated_organs_are_blanked_in_prepared_labels(tmp_path, monkeypatch):
    import contrastseg.dataset as ds

    monkeypatch.setenv("CONTRASTSEG_HOME", str(tmp_path / "home"))
    (tmp_path / "manifest.json").write_text(json.dumps({"format": ds.DATASET_FORMAT, "entries": [
        {"id": "c", "image": str(TS / "example_ct_sm.nii.gz"), "labels": str(TS / "example_seg.nii.gz"),
         "id_map": "totalsegmentator", "organs": [1, 6]}]}))
    case = ds.prepare_case(ds.entries(tmp_path)[0], (3.0, 3.0, 3.0))
    assert set(np.unique(case.labels).tolist()) == {0, 1, 6} and case.annotated == [1, 6]


@needs_data
def test_dataset_add_records_the_organs_annotated_and_the_validation_mark(tmp_path, capsys):
    from contrastseg.cli import main
    from contrastseg.dataset import entries, read_manifest

    ds = str(tmp_path / "ds")
    ct, seg = str(TS / "example_ct_sm.nii.gz"), str(TS / "example_seg.nii.gz")
    assert main(["dataset", "add", ct, seg, "--id-map", "totalsegmentator", "--organs", "liver,spleen", "--dataset", ds]) == 2
    assert "which --organs does not list" in capsys.readouterr().err and not (tmp_path / "ds" / "manifest.json").exists()
    present = "spleen,right_kidney,left_kidney,gallbladder,liver,stomach,aorta,inferior_vena_cava,portal_splenic_vein," \
              "pancreas,right_adrenal_gland,left_adrenal_gland,esophagus"
    assert main(["dataset", "add", ct, seg, "--id-map", "totalsegmentator", "--organs", present, "--validation",
                 "--initial", seg, "--initial-id-map", "totalsegmentator", "--dataset", ds]) == 0
    out = capsys.readouterr().out
    assert "held out for validation" in out and "initial segmentation vs the correction" in out
    (entry,) = entries(ds)
    assert entry.validation and 5 in entry.organs  # esophagus: annotated, no voxels ("absent here")
    rec = read_manifest(ds)["entries"][0]
    assert rec["initial"].endswith("-initial.seg.nrrd") and (tmp_path / "ds" / rec["initial"]).exists()
    assert set(rec["provenance"]["initial_dice"].values()) == {1.0}  # nothing was changed
