"""The refined network trained for prompts (METHODS §10, issue 9 item 3): the prompt-like attention masks
drawn on real CT, what a training patch with one holds, and `finetune --prompts` recording it on the card."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage

from contrastseg.hints import PROMPT_VALUE, PROPAGATION_DILATION, click_radius_px, prompt_attention
from contrastseg.io import read_image, read_labels
from contrastseg.organs import TOTALSEGMENTATOR_TO_BTCV
from contrastseg.patches import OrganIndex, sample_patch
from contrastseg.preprocess import inplane_spacing, labels_to_grid, prepare
from realdata import TS, needs_data

pytestmark = needs_data
PIXEL_MM = 1.5


@pytest.fixture(scope="module")
def grid():
    image = read_image(TS / "example_ct.nii.gz")
    labels = read_labels(TS / "example_seg_fast_force_split.nii.gz", image, TOTALSEGMENTATOR_TO_BTCV)
    fine = prepare(image, inplane_spacing(image, PIXEL_MM))
    return fine.array, labels_to_grid(sitk.GetArrayFromImage(labels), labels, fine.grid)


def test_prompt_masks_are_each_kind_of_hint(grid):
    _, labels = grid
    rng = np.random.default_rng(0)
    for organ in (2, 6, 11):  # right kidney, liver, pancreas
        zs = np.nonzero((labels == organ).any(axis=(1, 2)))[0]
        z = int(zs[len(zs) // 2])
        truth, neighbour = labels[z] == organ, labels[z - 1] == organ
        previous = ndimage.binary_dilation(neighbour, iterations=PROPAGATION_DILATION)
        near = ndimage.distance_transform_edt(~truth) <= 1.3 * click_radius_px(organ, PIXEL_MM) + 1
        ys, xs = np.nonzero(truth)
        box = np.zeros_like(truth)
        h, w = ys.max() - ys.min() + 1, xs.max() - xs.min() + 1
        box[max(0, ys.min() - h // 10 - 1): ys.max() + h // 10 + 2, max(0, xs.min() - w // 10 - 1): xs.max() + w // 10 + 2] = True
        kinds = set()
        for _ in range(80):
            att = prompt_attention(truth, neighbour, organ, PIXEL_MM, rng)
            assert att.dtype == np.float32 and att.shape == truth.shape and att.any()
            assert set(np.unique(att)) <= {0.0, PROMPT_VALUE, 1.0}
            mask = att > 0
            if np.array_equal(att, previous.astype(np.float32)):
                kinds.add("previous")  # a mask, at 1: what propagation gives
            elif (att == 1).any():
                raise AssertionError("a user's hint at 1, the value of a coarse mask")
            elif (mask & truth).any() and not (mask & ~near).any() and (mask & ~box).any():
                kinds.add("click")  # balls around organ pixels, reaching out of the organ's box
            elif not (mask & ~box).any():
                kinds.add("box or stroke")  # inside the organ's (jittered) box
        assert kinds == {"previous", "click", "box or stroke"}, (organ, kinds)


def test_a_prompt_patch_keeps_the_organ_as_target(grid):
    image, labels = grid
    index = OrganIndex.build(labels, [2, 6])
    rng = np.random.default_rng(1)
    for _ in range(20):
        x, y = sample_patch(image, labels, index, 2, rng, 128, prompt_mm=PIXEL_MM)
        assert x.shape == (2, 128, 128) and y.shape == (128, 128)
        assert y.sum() > 0 and x[1].sum() > 0  # the patch is centred on the organ; the hint is somewhere on it
        assert set(np.unique(x[1])) <= {0.0, PROMPT_VALUE, 1.0}


def test_an_augmented_patch_rescales_organ_and_hint_together(grid):
    """`augment`: the window at a random scale, resized back, so the organ and its hint stay aligned, and the
    image jittered in intensity; the same draw without it is the plain patch."""
    image, labels = grid
    index = OrganIndex.build(labels, [2])
    ratios, jittered = [], 0
    for seed in range(30):
        rng = np.random.default_rng(seed)
        x, y = sample_patch(image, labels, index, 2, rng, 128, augment=True)
        assert x.shape == (2, 128, 128) and y.shape == (128, 128) and x.dtype == np.float32
        assert set(np.unique(y)) <= {0.0, 1.0} and y.sum() > 0
        attention = x[1] > 0
        assert (attention & (y > 0)).sum() > 0.5 * y.sum()  # a perturbed truth: still on the organ after resizing
        plain_x, plain_y = sample_patch(image, labels, index, 2, np.random.default_rng(seed), 128)  # same centre
        ratios.append(y.sum() / plain_y.sum())  # (128 / window)^2: a kidney fits the window at every scale
        jittered += not np.allclose(plain_x[0], x[0], atol=1e-3)
    assert 0.55 < min(ratios) < 0.9 and 1.15 < max(ratios) < 1.7, ratios  # organs appear smaller and larger
    assert jittered == 30
    rng = np.random.default_rng(3)
    x, y = sample_patch(image, labels, index, 2, rng, 128, prompt_mm=PIXEL_MM, augment=True)
    assert set(np.unique(x[1])) <= {0.0, PROMPT_VALUE, 1.0} and x[1].any()  # hints keep their value


def test_finetune_with_prompts_records_them(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "manifest.json").write_text(json.dumps({"format": "contrastseg-dataset/1", "entries": [
        {"id": "sm", "image": str(TS / "example_ct_sm.nii.gz"), "labels": str(TS / "example_seg.nii.gz"),
         "id_map": "totalsegmentator"}]}))
    from contrastseg.paths import default_model

    run = tmp_path / "ft"
    proc = subprocess.run([sys.executable, "-m", "contrastseg.cli", "finetune", str(data), "--run", str(run),
                           "--base", str(default_model()), "--init", str(default_model() / "refined.safetensors"),
                           "--steps", "2", "--batch", "2", "--prompts", "0.5", "--keep", "1", "--coarse-attention", "0",
                           "--threads", "1", "--progress", "none"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    card = json.loads((run / "model" / "card.json").read_text())
    assert card["training"]["refined"]["settings"]["prompts"] == 0.5
    assert card["training"]["refined"]["settings"]["keep"] == 1.0
    assert card["refined"]["prompt_value"] == PROMPT_VALUE  # how clicks must be given to this network

    bad = subprocess.run([sys.executable, "-m", "contrastseg.cli", "finetune", str(data), "--run", str(tmp_path / "bad"),
                          "--base", str(default_model()), "--steps", "2", "--keep", "1", "--progress", "none"],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "give it with --init" in bad.stderr and not (tmp_path / "bad" / "model").exists()


def test_keep_loss_is_the_squared_gap_to_the_starting_network():
    import torch

    from contrastseg.train.refined import keep_loss

    torch.manual_seed(0)
    teacher = torch.nn.Conv2d(2, 2, 3, padding=1).eval()
    x = torch.randn(3, 2, 8, 8)
    same = teacher(x).detach().requires_grad_(True)
    assert keep_loss(same, teacher, x).item() == pytest.approx(0.0, abs=1e-12)
    moved = (teacher(x) + torch.randn(3, 2, 8, 8)).detach().requires_grad_(True)
    loss = keep_loss(moved, teacher, x)
    direct = ((torch.softmax(moved, 1)[:, 1] - torch.softmax(teacher(x), 1)[:, 1]) ** 2).mean()
    assert loss.item() == pytest.approx(direct.item(), rel=1e-6) and loss.item() > 0
    loss.backward()
    assert moved.grad.abs().sum() > 0 and all(p.grad is None for p in teacher.parameters())  # the teacher stays
