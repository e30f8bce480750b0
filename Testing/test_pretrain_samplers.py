"""The pretraining samplers on real CT: organ patches and their paired augmentation, PolyCL triplets, SLIC
regions, phase labels, and the refusals of strategies whose data is missing."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from contrastseg.errors import ContrastSegError
from contrastseg.pretrain.augment import apply_affines, center, context_size, random_affines, two_views
from contrastseg.pretrain.data import Needs, load_entries
from contrastseg.pretrain.regions import build_bank, kmeans
from contrastseg.pretrain.samplers import PatchSampler, mean_in_mask, prepare_cases
from contrastseg.pretrain.slices import TripletSampler, prepare_slices
from pretrain_data import entries, shared_dataset, write_dataset
from realdata import needs_data

pytestmark = needs_data
LIVER, AORTA = 6, 8


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return shared_dataset(tmp_path_factory)


@pytest.fixture(scope="module")
def items(dataset):
    return load_entries(dataset, "simclr", Needs(attention=True))


@pytest.fixture(scope="module")
def sampler(dataset, items):
    cases = prepare_cases(items, dataset, 1.5, "soft-top")
    return PatchSampler(cases, list(range(1, 14)), 64, context_size(64), perturb=False)


def test_patch_centres_lie_in_the_organ_attention(sampler):
    b = sampler.sample(np.random.default_rng(0), 64)
    half = sampler.context // 2
    for organ, ci, (z, y, x), patch in zip(b.organ, b.case, b.centre, b.x):
        assert sampler.cases[ci].labels[z, y, x] == organ
        assert patch[1, half, half] == 1.0  # the attention channel is the organ's mask, centred on it
    assert len(set(b.organ.tolist())) > 3  # organs drawn uniformly, small ones included


def test_both_views_move_image_and_mask_together(sampler):
    rng = np.random.default_rng(1)
    b = sampler.sample(rng, 16)
    x = torch.from_numpy(b.x)
    theta = torch.from_numpy(random_affines(16, rng, context=64 / x.shape[-1]))
    joint = apply_affines(x, theta, 64)
    alone_img = apply_affines(x[:, :1], theta, 64, mask_channels=())
    alone_mask = apply_affines(x[:, 1:], theta, 64, mask_channels=(0,))
    assert torch.equal(joint[:, :1], alone_img) and torch.equal(joint[:, 1:], alone_mask)
    # geometry, not just bookkeeping: the organ's mean intensity inside the moved mask is the organ's intensity
    before = mean_in_mask(center(x, 64))
    after = mean_in_mask(joint)
    ok = ~torch.isnan(after)
    assert ok.sum() >= 12
    assert torch.allclose(after[ok], before[ok], atol=0.08)
    v1, v2 = two_views(x, rng, 64)
    assert v1.shape == v2.shape == (16, 2, 64, 64) and not torch.equal(v1, v2)
    assert set(torch.unique(v1[:, 1]).tolist()) <= {0.0, 1.0}


def test_phase_from_manifest_or_the_aorta(items):
    by_id = {it.id: it for it in items}
    assert by_id["ts-dicom"].phase == "contrast" and by_id["ts-dicom"].phase_source == "manifest"
    sm = by_id["ts-sm"]
    assert sm.phase in ("contrast", "non-contrast") and sm.phase_source.startswith("estimated: aorta median")


def test_polycl_triplet_rules(dataset, items):
    stacks = [prepare_slices(it, dataset, 64, 0.6) for it in items]
    assert all(s.slices.shape[1:] == (64, 64) and 0 <= s.slices.min() and s.slices.max() <= 1 for s in stacks)
    rng = np.random.default_rng(0)
    scan = TripletSampler(stacks, "scan")
    for a, p, n in scan.triplets(rng, 50):
        assert scan.items[a, 0] == scan.items[p, 0] and a != p
        assert scan.items[n, 0] != scan.items[a, 0]
    organ = TripletSampler(stacks, "organ", 3)  # left kidney: in some central slices, not all
    for a, p, n in organ.triplets(rng, 50):
        assert organ.label[a] == organ.label[p] and a != p and organ.label[n] != organ.label[a]
    with pytest.raises(ContrastSegError, match="with and without organ"):
        TripletSampler(stacks, "organ", LIVER)  # the liver is in every central slice here: no negatives
    x = scan.inputs(np.array([0, 1]))
    assert x.shape == (2, 2, 64, 64) and set(np.unique(x[:, 1]).tolist()) <= {0.0, 1.0}


def test_slic_regions_lie_inside_the_body(dataset, items):
    cases = prepare_cases(items, dataset, 1.5, "soft-top")
    bank = build_bank(items, cases, dataset, slices_per_case=3, max_regions=None)
    assert len(bank) > 20
    for ci, k, lab, y0, y1, x0, x1 in bank.regions:
        mask = bank.segments[ci][k] == lab
        assert mask.any() and not (mask & ~bank.bodies[ci][k]).any()
        ys, xs = np.nonzero(mask)
        assert (ys.min(), ys.max() + 1, xs.min(), xs.max() + 1) == (y0, y1, x0, x1)
    crops = bank.crops(np.arange(8), 64)
    assert crops.shape == (8, 2, 64, 64)
    assert np.all(crops[:, 0][crops[:, 1] == 0] == 0)  # image x mask: nothing outside the region
    assert kmeans(torch.randn(40, 8), 5).unique().numel() <= 5


def test_strategies_refuse_data_they_cannot_use(tmp_path):
    unlabelled = write_dataset(tmp_path / "unlabelled", entries(labels=False))
    with pytest.raises(ContrastSegError, match="--attention"):
        load_entries(unlabelled, "simclr", Needs(attention=True))
    with pytest.raises(ContrastSegError, match="ground-truth label maps"):
        load_entries(unlabelled, "voxel-simsiam", Needs(labels=True))
    with pytest.raises(ContrastSegError, match="organ-attention"):
        load_entries(unlabelled, "supcon-mt", Needs(attention=True, phase=True))
    # labels without an aorta and no manifest phase: the phase cannot be estimated
    no_aorta = entries(True)[:1]
    no_aorta[0]["id_map"] = {"5": LIVER}
    with pytest.raises(ContrastSegError, match="needs a phase label per CT.*aorta"):
        load_entries(write_dataset(tmp_path / "no-aorta", no_aorta), "supcon-mt", Needs(attention=True, phase=True))
    # strategies that need nothing take unlabelled CTs
    assert len(load_entries(unlabelled, "polycl-s", Needs(optional_attention=True))) == 2
