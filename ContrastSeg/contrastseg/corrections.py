"""What a correction changed: the initial segmentation against the user's corrected labels (recorded at export)."""

from __future__ import annotations

import numpy as np

from .organs import BY_ID


def changes(initial: np.ndarray, final: np.ndarray) -> dict:
    """What the user's correction changed: voxels changed in all, per organ voxels added and removed, and
    `relabelled`: for each organ, how many voxels it took from which other organ ({"right_kidney": {"spleen":
    n}}): a click that says "this is the kidney, not the spleen" (issue 23) is the model confusing two organs,
    which added and removed counts alone do not tell apart from a miss and a leak."""
    edited = {}
    for oid in sorted((set(np.unique(initial).tolist()) | set(np.unique(final).tolist())) - {0}):
        before, after = initial == oid, final == oid
        added, removed = int(np.count_nonzero(after & ~before)), int(np.count_nonzero(before & ~after))
        if added or removed:
            edited[BY_ID[oid].key] = {"id": oid, "added": added, "removed": removed}
    moved = (initial != final) & (initial != 0) & (final != 0)
    relabelled: dict = {}
    if moved.any():
        pairs, counts = np.unique(np.stack([final[moved], initial[moved]]).astype(np.int64), axis=1, return_counts=True)
        for (to, frm), n in zip(pairs.T.tolist(), counts.tolist()):
            relabelled.setdefault(BY_ID[to].key, {})[BY_ID[frm].key] = int(n)
    return {"changed_voxels": int(np.count_nonzero(initial != final)), "edited": edited, "relabelled": relabelled}


def initial_dice(initial: np.ndarray, final: np.ndarray, organs: list[int]) -> dict:
    """Dice of the initial segmentation against the correction, per annotated organ: how much the user had to
    fix (the "before" of a corrected case; 1.0 = nothing changed). An organ absent from both is skipped."""
    out = {}
    for oid in organs:
        a, b = initial == oid, final == oid
        total = int(np.count_nonzero(a)) + int(np.count_nonzero(b))
        if total:
            out[BY_ID[oid].key] = round(2 * int(np.count_nonzero(a & b)) / total, 4)
    return out
