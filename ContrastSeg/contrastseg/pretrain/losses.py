"""The pretraining losses of METHODS.md §2-§5, as plain functions of embeddings.

Every function takes already-computed embeddings and returns a scalar. Cross-rank gathering (distributed.py)
happens before these are called, so the same code serves one process and many. Losses run in float32
whatever the autocast dtype, since exp(cos/T) with T = 0.07 loses too much in bf16.

Conventions: `z` holds the L2-normalised embeddings of 2N views, the first N being view 1 of each patch and
the next N view 2 of the same patches, so view k's positive is k + N (mod 2N).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _pair_positives(n2: int, device) -> torch.Tensor:
    """(2N, 2N) mask with ones at (k, k+N) and (k+N, k): each view's one positive is its other view."""
    n = n2 // 2
    idx = torch.arange(n2, device=device)
    return (idx[:, None] == (idx[None, :] + n) % n2).float()


def contrastive_from_logits(logits: torch.Tensor, positives: torch.Tensor) -> torch.Tensor:
    """Mean over anchors k of  -1/sum_p a_kp * sum_p a_kp * log( exp(l_kp) / sum_{j != k} exp(l_kj) ).

    `logits` (M, M) are similarities already divided by T (and weighted, for DCC); the diagonal is excluded
    from every denominator. `positives` (M, M) holds the weight a_kp of each positive (1 for SupCon and
    SimCLR; a smaller weight for optional partial positives); anchors with no positive are left out.
    """
    m = logits.shape[0]
    eye = torch.eye(m, dtype=torch.bool, device=logits.device)
    logits = logits.float().masked_fill(eye, float("-inf"))
    log_prob = (logits - torch.logsumexp(logits, dim=1, keepdim=True)).masked_fill(eye, 0.0)
    pos = positives.float().masked_fill(eye, 0.0)
    count = pos.sum(1)
    per_anchor = -(pos * log_prob).sum(1) / count.clamp_min(1e-12)
    has = count > 0
    return per_anchor[has].mean() if bool(has.any()) else logits.new_zeros(())


def cosine_matrix(z: torch.Tensor) -> torch.Tensor:
    z = F.normalize(z.float(), dim=1)
    return z @ z.T


def nt_xent(z: torch.Tensor, temperature: float = 0.1) -> torch.Tensor:
    """SimCLR / SSCL NT-Xent (METHODS §2): one positive (the other view), the other 2N-2 views as negatives."""
    return contrastive_from_logits(cosine_matrix(z) / temperature, _pair_positives(z.shape[0], z.device))


def supcon(z: torch.Tensor, labels: torch.Tensor, temperature: float = 0.1, groups: torch.Tensor | None = None,
           partial_weight: float = 0.0) -> torch.Tensor:
    """AGCL's modal-target supervised contrastive loss (Eq. 3): positives share the joint (organ, phase) label.

    `labels` (M,) are joint label ids. The optional extension from AGCL's prose: views with the same `groups`
    value (the phase) but another label (another organ) count as "partial positives" with `partial_weight`.
    """
    same = (labels[:, None] == labels[None, :]).float()
    if groups is not None and partial_weight > 0:
        partial = (groups[:, None] == groups[None, :]).float() * (1 - same)
        same = same + partial_weight * partial
    return contrastive_from_logits(cosine_matrix(z) / temperature, same)


def intensity_gaps(d: torch.Tensor) -> torch.Tensor:
    """v_ij = |d_i - d_j| of DCC-CL Eq. 2; a view with no mask (d = NaN) gets no weight: v = 0 on its row/column."""
    v = (d[:, None] - d[None, :]).abs()
    return torch.nan_to_num(v, nan=0.0)


def dcc(z: torch.Tensor, d: torch.Tensor, temperature: float = 0.07) -> torch.Tensor:
    """DCC-CL Eq. 4 as written: every similarity (numerator and denominator) becomes (1 - v_ij) cos / T.

    `d` (2N,) is each view's mean [0, 1] image intensity inside its attention mask (NaN for an empty mask).
    With every gap 0 this is exactly NT-Xent.
    """
    weights = 1.0 - intensity_gaps(d.float())
    return contrastive_from_logits(weights * cosine_matrix(z) / temperature, _pair_positives(z.shape[0], z.device))


def negative_cosine(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """SimSiam's D(p, z) = -cos(p, sg(z)), averaged over the batch; the stop-gradient is inside."""
    return -F.cosine_similarity(p.float(), z.detach().float(), dim=-1).mean()


def simsiam(p1: torch.Tensor, p2: torch.Tensor, z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
    """Symmetric SimSiam loss (METHODS §5.3): 1/2 D(p1, sg z2) + 1/2 D(p2, sg z1)."""
    return 0.5 * negative_cosine(p1, z2) + 0.5 * negative_cosine(p2, z1)


def class_weights(counts: torch.Tensor) -> torch.Tensor:
    """w_c = (|P|/|P_c|) / sum_c' (|P|/|P_c'|) over the classes present (count > 0); absent classes get 0."""
    counts = counts.float()
    present = counts > 0
    inv = torch.where(present, counts.sum() / counts.clamp_min(1), torch.zeros_like(counts))
    return inv / inv.sum().clamp_min(1e-12)


def class_sums(p: torch.Tensor, z: torch.Tensor, labels: torch.Tensor, num_classes: int):
    """Per-class sums of the normalised p and (detached) z vectors and the class counts.

    Sums (not means) so that ranks can add them up with one all_reduce before the loss (voxel_pair_cosine).
    """
    pn = F.normalize(p.float(), dim=1)
    zn = F.normalize(z.detach().float(), dim=1)
    one_hot = F.one_hot(labels.long(), num_classes).float()  # (P, C)
    return one_hot.T @ pn, one_hot.T @ zn, one_hot.sum(0)


def voxel_pair_cosine_from_sums(sum_p: torch.Tensor, sum_z: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """-sum_c w_c mean_{i,j in c} cos(p_i, sg z_j) from per-class sums.

    The mean over all |P_c|^2 same-class pairs of p_i . z_j factorises into (mean_i p_i) . (mean_j z_j), so
    pairing every p with every same-class z costs O(|P|) instead of O(|P|^2).
    """
    w = class_weights(counts)
    n = counts.clamp_min(1)[:, None]
    mean_cos = ((sum_p / n) * (sum_z / n)).sum(1)
    return -(w * mean_cos).sum()


def voxel_pair_cosine(p: torch.Tensor, z: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """One layer's term of the voxel-level Siamese loss (METHODS §3); -1 when p and z are identical per class."""
    return voxel_pair_cosine_from_sums(*class_sums(p, z, labels, num_classes))


def voxel_simsiam(ps: list[torch.Tensor], zs: list[torch.Tensor], labels: list[torch.Tensor], num_classes: int) -> torch.Tensor:
    """L_feat = -sum_c w_c sum_layers mean cos(p, sg z): the per-layer terms summed over layers."""
    return sum(voxel_pair_cosine(p, z, y, num_classes) for p, z, y in zip(ps, zs, labels))


def polycl(anchor: torch.Tensor, positive: torch.Tensor, negative: torch.Tensor, tau: float) -> torch.Tensor:
    """PolyCL triplet loss: -log( e^{s+/tau} / (e^{s+/tau} + e^{s-/tau}) ) = softplus((s- - s+)/tau); log 2 when s+ = s-."""
    s_pos = F.cosine_similarity(anchor.float(), positive.float(), dim=-1)
    s_neg = F.cosine_similarity(anchor.float(), negative.float(), dim=-1)
    return F.softplus((s_neg - s_pos) / tau).mean()


def distill_kl(student: torch.Tensor, teacher: torch.Tensor, temperature: float = 0.1) -> torch.Tensor:
    """KL(student || teacher) of the temperature-softened pooled features (SepaReg §5.5, as written there).

    The teacher is detached: only the student learns.
    """
    log_s = F.log_softmax(student.float() / temperature, dim=1)
    log_t = F.log_softmax(teacher.detach().float() / temperature, dim=1)
    return (log_s.exp() * (log_s - log_t)).sum(1).mean()
