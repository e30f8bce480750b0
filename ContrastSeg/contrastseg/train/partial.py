"""Losses for partially labelled cases (METHODS.md §9): a clinician corrects some organs and ignores others.

An entry annotates a set A of organs. For the coarse network's softmax over background + 13 organs:

- **marginal Dice + CE** (Shi et al., MedIA 2021): the probabilities of background and of every organ not
  in A are merged into one class M before the loss. A voxel outside A's labels only says "not an organ of
  A"; how the network splits M between background and the unannotated organs gets no gradient, so a case
  with seven corrected organs never teaches "the stomach is background".
- **distillation inside M** (learning without forgetting): on the voxels whose target is M, the KL
  divergence from the frozen base model's split of M to the network's, both conditioned on M. It keeps
  what the base knew about the organs nobody corrected, and adds nothing where the user's labels speak.

Both take `annotated` as a (batch, classes) boolean tensor; column 0 (background) is ignored.
"""

from __future__ import annotations

import torch


def merged_mask(annotated: torch.Tensor) -> torch.Tensor:
    """(B, C) bool: the classes merged into M for each sample (background and every unannotated organ)."""
    m = ~annotated.clone()
    m[:, 0] = True
    return m


def _log_m(logp: torch.Tensor, merged: torch.Tensor) -> torch.Tensor:
    """log P(M) per voxel: logsumexp of the merged classes' log-probabilities; (B, 1, ...)."""
    shape = merged.shape + (1,) * (logp.dim() - 2)
    masked = logp.masked_fill(~merged.view(shape), float("-inf"))
    return torch.logsumexp(masked, dim=1, keepdim=True)


def marginal_dice_ce(logits: torch.Tensor, target: torch.Tensor, annotated: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Marginal cross-entropy + soft Dice over the annotated organs.

    logits (B, C, ...); target (B, ...) integer labels in which only annotated organs are non-zero (0 means
    "background or an organ this entry does not annotate"); annotated (B, C) bool. Dice is computed per
    organ over the samples of the batch that annotate it (sum p + sum g, as MONAI's DiceLoss with
    batch=True); CE is the mean over voxels of -log P(target), with P(0) read as P(M).
    """
    logp = torch.log_softmax(logits.float(), dim=1)
    merged = merged_mask(annotated)
    log_m = _log_m(logp, merged)[:, 0]
    t = target.long()
    ce_organ = torch.gather(logp, 1, t.unsqueeze(1))[:, 0]
    ce = -torch.where(t > 0, ce_organ, log_m).mean()
    p = logp.exp()
    dice_terms = []
    for c in range(1, logits.shape[1]):
        rows = annotated[:, c]
        if not bool(rows.any()):
            continue
        pc, gc = p[rows, c], (t[rows] == c).float()
        dice_terms.append(1 - (2 * (pc * gc).sum() + eps) / (pc.sum() + gc.sum() + eps))
    dice = torch.stack(dice_terms).mean() if dice_terms else logits.sum() * 0
    return dice + ce


def merged_distillation(logits: torch.Tensor, teacher_logits: torch.Tensor, target: torch.Tensor,
                        annotated: torch.Tensor) -> torch.Tensor:
    """KL(teacher(.|M) || student(.|M)) averaged over the voxels whose target is M (0); 0 if M has one class.

    Conditioning on M leaves the user's labels in charge of "organ of A or not"; only the split of M
    between background and the unannotated organs is pulled toward the base model.
    """
    merged = merged_mask(annotated)
    if int(merged.sum(1).max()) < 2:
        return logits.sum() * 0
    shape = merged.shape + (1,) * (logits.dim() - 2)
    keep = merged.view(shape)
    # -1e4, not -inf: the excluded classes then get exactly 0 probability and no NaN reaches the gradient
    s = torch.log_softmax(logits.float().masked_fill(~keep, -1e4), dim=1)
    q = torch.log_softmax(teacher_logits.float().masked_fill(~keep, -1e4), dim=1)
    kl = torch.where(keep, q.exp() * (q - s), torch.zeros_like(s)).sum(1)  # (B, ...)
    voxels = (target == 0) & (merged.sum(1) > 1).view((-1,) + (1,) * (target.dim() - 1))
    if not bool(voxels.any()):
        return logits.sum() * 0
    return kl[voxels].mean()
