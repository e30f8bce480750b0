"""Pretraining losses against direct computations on small tensors, and the identities between them."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from contrastseg.pretrain import losses

torch.manual_seed(0)


def _views(n=5, d=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(2 * n, d, generator=g), dim=1)


def _cos(a, b):
    return float(torch.dot(F.normalize(a, dim=0), F.normalize(b, dim=0)))


def direct_contrastive(z, positives, temperature, weight=None):
    """METHODS §2 written out anchor by anchor: -1/|P(k)| sum_p log(exp(s_kp/T) / sum_{j!=k} exp(s_kj/T))."""
    m = len(z)
    total, anchors = 0.0, 0
    for k in range(m):
        sim = [(weight[k][j] if weight is not None else 1.0) * _cos(z[k], z[j]) / temperature for j in range(m)]
        denom = sum(math.exp(sim[j]) for j in range(m) if j != k)
        pos = [p for p in range(m) if p != k and positives(k, p)]
        if pos:
            total += -sum(math.log(math.exp(sim[p]) / denom) for p in pos) / len(pos)
            anchors += 1
    return total / anchors


def test_nt_xent_matches_direct_computation():
    z = _views()
    n = len(z) // 2
    expected = direct_contrastive(z, lambda k, p: p == (k + n) % (2 * n), 0.1)
    assert float(losses.nt_xent(z, 0.1)) == pytest.approx(expected, rel=1e-5)


def test_supcon_matches_direct_computation():
    z = _views(6)
    labels = torch.tensor([0, 1, 0, 2, 1, 0] * 2)
    expected = direct_contrastive(z, lambda k, p: labels[k] == labels[p], 0.1)
    assert float(losses.supcon(z, labels, 0.1)) == pytest.approx(expected, rel=1e-5)


def test_supcon_with_all_distinct_labels_equals_simclr():
    z = _views(7)
    labels = torch.arange(7).repeat(2)  # each patch its own label: the positive is only its other view
    assert float(losses.supcon(z, labels, 0.1)) == pytest.approx(float(losses.nt_xent(z, 0.1)), rel=1e-6)


def test_supcon_partial_positives_change_the_loss_only_when_weighted():
    z = _views(6)
    labels = torch.tensor([0, 1, 2, 3, 4, 5] * 2)
    phase = torch.tensor([0, 0, 0, 1, 1, 1] * 2)
    plain = float(losses.supcon(z, labels, 0.1))
    assert float(losses.supcon(z, labels, 0.1, phase, 0.0)) == pytest.approx(plain)
    assert float(losses.supcon(z, labels, 0.1, phase, 0.5)) != pytest.approx(plain)


def test_dcc_matches_eq4_as_written():
    z = _views(5)
    d = torch.rand(10, generator=torch.Generator().manual_seed(3))
    d[4] = float("nan")  # an empty attention mask: no weight on its pairs, still counted
    n = 5
    v = [[0.0 if (math.isnan(d[i]) or math.isnan(d[j])) else abs(float(d[i] - d[j])) for j in range(10)] for i in range(10)]
    w = [[1 - v[i][j] for j in range(10)] for i in range(10)]
    expected = direct_contrastive(z, lambda k, p: p == (k + n) % (2 * n), 0.07, w)
    assert float(losses.dcc(z, d, 0.07)) == pytest.approx(expected, rel=1e-5)


def test_dcc_with_zero_intensity_gaps_equals_simclr():
    z = _views(6)
    same = torch.full((12,), 0.4)
    assert float(losses.dcc(z, same, 0.07)) == pytest.approx(float(losses.nt_xent(z, 0.07)), rel=1e-6)
    empty = torch.full((12,), float("nan"))  # all masks empty: v = 0 everywhere, plain NT-Xent
    assert float(losses.dcc(z, empty, 0.07)) == pytest.approx(float(losses.nt_xent(z, 0.07)), rel=1e-6)


def test_voxel_class_weights_sum_to_one_and_favour_rare_classes():
    counts = torch.tensor([100.0, 10.0, 0.0, 1.0])
    w = losses.class_weights(counts)
    assert float(w.sum()) == pytest.approx(1.0)
    assert float(w[2]) == 0.0 and w[3] > w[1] > w[0]
    total = counts.sum()
    expected = torch.tensor([total / 100, total / 10, 0, total / 1])
    assert torch.allclose(w, expected / expected.sum())


def test_voxel_pair_cosine_matches_all_pairs():
    g = torch.Generator().manual_seed(1)
    p, z = torch.randn(12, 6, generator=g), torch.randn(12, 6, generator=g)
    labels = torch.tensor([0, 0, 0, 0, 0, 0, 1, 1, 1, 3, 3, 3])
    counts = torch.bincount(labels, minlength=4).float()
    w = losses.class_weights(counts)
    expected = 0.0
    for c in (0, 1, 3):
        idx = (labels == c).nonzero().flatten().tolist()
        expected -= float(w[c]) * sum(_cos(p[i], z[j]) for i in idx for j in idx) / len(idx) ** 2
    assert float(losses.voxel_pair_cosine(p, z, labels, 4)) == pytest.approx(expected, rel=1e-5)


def test_voxel_loss_is_minus_one_for_identical_p_and_z():
    protos = torch.randn(3, 16)
    labels = torch.tensor([0] * 5 + [1] * 2 + [2] * 9)
    p = protos[labels] * torch.rand(len(labels), 1).add(0.5)  # same direction per class, any length
    assert float(losses.voxel_pair_cosine(p, p.clone(), labels, 3)) == pytest.approx(-1.0, abs=1e-6)
    # summed over layers (METHODS §3): three identical layers give -3
    assert float(losses.voxel_simsiam([p] * 3, [p] * 3, [labels] * 3, 3)) == pytest.approx(-3.0, abs=1e-5)


def test_polycl_equals_log2_when_positive_and_negative_are_equally_similar():
    a = F.normalize(torch.randn(4, 8), dim=1)
    assert float(losses.polycl(a, a, a, tau=0.25)) == pytest.approx(math.log(2), rel=1e-6)
    pos, neg = torch.randn(4, 8), torch.randn(4, 8)
    tau = 1 / 4
    expected = sum(-math.log(math.exp(_cos(a[i], pos[i]) / tau) / (math.exp(_cos(a[i], pos[i]) / tau) + math.exp(_cos(a[i], neg[i]) / tau)))
                   for i in range(4)) / 4
    assert float(losses.polycl(a, pos, neg, tau)) == pytest.approx(expected, rel=1e-5)


def test_simsiam_stops_the_gradient_through_the_target_branch():
    p1, p2 = torch.randn(4, 8, requires_grad=True), torch.randn(4, 8, requires_grad=True)
    z1, z2 = torch.randn(4, 8, requires_grad=True), torch.randn(4, 8, requires_grad=True)
    loss = losses.simsiam(p1, p2, z1, z2)
    loss.backward()
    assert z1.grad is None and z2.grad is None
    assert p1.grad is not None and p1.grad.abs().sum() > 0
    expected = -0.5 * F.cosine_similarity(p1, z2).mean() - 0.5 * F.cosine_similarity(p2, z1).mean()
    assert float(loss.detach()) == pytest.approx(float(expected.detach()), rel=1e-6)
    same = torch.randn(4, 8)
    assert float(losses.simsiam(same, same, same, same)) == pytest.approx(-1.0, abs=1e-6)


def test_voxel_loss_stops_the_gradient_through_z():
    p = torch.randn(6, 4, requires_grad=True)
    z = torch.randn(6, 4, requires_grad=True)
    losses.voxel_pair_cosine(p, z, torch.tensor([0, 0, 1, 1, 2, 2]), 3).backward()
    assert z.grad is None and p.grad.abs().sum() > 0


def test_distillation_kl_is_zero_for_equal_features_and_teacher_gets_no_gradient():
    s = torch.randn(3, 16, requires_grad=True)
    t = s.detach().clone().requires_grad_(True)
    assert float(losses.distill_kl(s, t, 0.1).detach()) == pytest.approx(0.0, abs=1e-6)
    loss = losses.distill_kl(s, torch.randn(3, 16).requires_grad_(True), 0.1)
    assert float(loss.detach()) > 0
    loss.backward()
    assert s.grad is not None


def test_losses_are_finite_in_float32_under_bf16_inputs():
    z = _views(4).bfloat16()
    assert torch.isfinite(losses.nt_xent(z, 0.07))
    assert losses.nt_xent(z, 0.07).dtype == torch.float32
