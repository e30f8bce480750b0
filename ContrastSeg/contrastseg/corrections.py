"""What a correction changed: the initial segmentation against the user's corrected labels (recorded at export)."""

from __future__ import annotations

import numpy as np

from .organs import BY_ID


def changes(initial: np.ndarray, final: np.ndarray) -> dict:
    """What the user's correction changed: voxels changed in all, and per organ voxels added and removed."""
    edited = {}
    for oid in sorted((set(np.unique(initial).tolist()) | set(np.unique(final).tolist())) - {0}):
        before, after = initial == oid, final == oid
        added, removed = int(np.count_nonzero(after & ~before)), int(np.count_nonzero(before & ~after))
        if added or removed:
            edited[BY_ID[oid].key] = {"id": oid, "added": added, "removed": removed}
    return {"changed_voxels": int(np.count_nonzero(initial != final)), "edited": edited}


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
