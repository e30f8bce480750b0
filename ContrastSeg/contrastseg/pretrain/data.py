"""What a pretraining strategy reads from a dataset, and the check that the dataset has it.

Strategies declare their needs (`Needs`): organ attention (patch strategies, PolyCL-O), ground-truth label
maps (voxel-level Siamese learning, which trains with Dice), a phase per CT (AGCL's SupCon and the CE
baseline). `load_cases` resolves each entry accordingly and refuses, naming the entries and the fix, when
the dataset cannot provide them.

Attention for a CT without a label map comes from a coarse model (`--attention MODEL`), as at inference
(METHODS §1.2). It is computed once per CT and model and cached as a label map file, so the rest of the
pipeline treats it exactly like a label map (prepare_case resamples and caches it).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from ..checksum import sha256
from ..dataset import Entry, entries
from ..errors import ContrastSegError
from ..io import atomic_path, read_image, read_labels, write_json

AORTA = 8
PHASE_HU_THRESHOLD = 150.0  # METHODS §2: contrast-enhanced when the aorta's median HU is well above ~150
CONTRAST, NON_CONTRAST = "contrast", "non-contrast"


@dataclass(frozen=True)
class Needs:
    """What a strategy reads: organ attention, ground-truth labels, and/or a phase label per CT."""

    attention: bool = False
    labels: bool = False
    phase: bool = False
    optional_attention: bool = False  # used when available (embedding plot), never required


@dataclass
class PretrainEntry:
    """A dataset entry as a strategy sees it: `entry.labels` is the ground truth or the coarse attention."""

    entry: Entry
    attention: str  # "labels" | "coarse model <name>" | "none"
    phase: str | None
    phase_source: str | None

    @property
    def id(self) -> str:
        return self.entry.id

    def provenance(self) -> dict:
        e = self.entry
        return {"id": e.id, "image": str(e.image), "image_sha256": sha256(e.image), "attention": self.attention,
                "labels": str(e.labels) if e.labels else None, "phase": self.phase, "phase_source": self.phase_source}


def cache_dir_of(dataset: Path) -> Path:
    """The dataset's cache folder (shared with supervised training, so volumes are preprocessed once)."""
    return Path(dataset if Path(dataset).is_dir() else Path(dataset).parent) / ".cache"


def _file_key(*paths: Path) -> str:
    parts = []
    for p in paths:
        st = Path(p).stat()
        parts.append(f"{p}:{st.st_size}:{st.st_mtime_ns}")
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]


def coarse_attention(entry: Entry, model_dir: Path, cache_dir: Path, device=None) -> Path:
    """The coarse model's label map of `entry`'s CT (on the CT's own grid), computed once and cached."""
    from ..infer import segment
    from ..models.files import card_path, load_model, read_card

    card = read_card(model_dir)
    weights = card_path(model_dir).parent / card["coarse"]["weights"]
    key = _file_key(entry.image, weights)
    out = cache_dir / "attention" / f"{entry.id}-{key}.nii.gz"
    if out.exists():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    model = load_model(model_dir, ("coarse",))
    result = segment(read_image(entry.image), model, refined=False, device=device)
    with atomic_path(out) as tmp:
        sitk.WriteImage(result.labels, str(tmp), True)
    return out


def estimate_phase(entry: Entry, cache_dir: Path) -> tuple[str | None, float | None]:
    """(phase, aorta median HU) from the aorta inside `entry.labels`; (None, None) without an aorta. Cached."""
    key = _file_key(entry.image, entry.labels)
    path = cache_dir / "phase" / f"{entry.id}-{key}.json"
    if path.exists():
        rec = json.loads(path.read_text())
        return rec["phase"], rec["aorta_median_hu"]
    image = read_image(entry.image)
    labels = sitk.GetArrayFromImage(read_labels(entry.labels, image, entry.id_map))
    aorta = labels == AORTA
    phase, median = None, None
    if aorta.sum() >= 20:
        median = float(np.median(sitk.GetArrayViewFromImage(image)[aorta]))
        phase = CONTRAST if median > PHASE_HU_THRESHOLD else NON_CONTRAST
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json({"phase": phase, "aorta_median_hu": median}, path)
    return phase, median


def load_entries(dataset: Path, strategy: str, needs: Needs, attention_model: Path | None = None, device=None) -> list[PretrainEntry]:
    """Resolve the dataset's entries for `strategy`, or raise ContrastSegError saying what is missing.

    Without `attention_model`, an entry's own label map is its attention; with it, every entry's attention
    comes from the coarse model (labels are then never read by strategies that do not need them).
    """
    items = entries(dataset)
    if not items:
        raise ContrastSegError(f"dataset {dataset} has no entries")
    cache = cache_dir_of(dataset)
    if needs.labels:
        labelled = [e for e in items if e.labels is not None]
        if not labelled:
            raise ContrastSegError(f"strategy {strategy} needs ground-truth label maps (it trains with Dice on them); "
                                   f"dataset {dataset} has no labelled entries")
        return [_with_phase(PretrainEntry(e, "labels", e.phase, "manifest" if e.phase else None), cache, needs, strategy)
                for e in labelled]
    out = []
    for e in items:
        if attention_model is not None and (needs.attention or needs.optional_attention or needs.phase):
            att = coarse_attention(e, attention_model, cache, device)
            pe = PretrainEntry(replace(e, labels=att, id_map=None), f"coarse model {Path(attention_model).resolve()}", e.phase, None)
        elif e.labels is not None:
            pe = PretrainEntry(e, "labels", e.phase, None)
        else:
            pe = PretrainEntry(e, "none", e.phase, None)
        if e.phase:
            pe.phase_source = "manifest"
        out.append(pe)
    missing = [p.id for p in out if p.attention == "none"]
    if needs.attention and missing:
        raise ContrastSegError(
            f"strategy {strategy} samples organ-attention patches, but entries {', '.join(missing[:5])}"
            f"{' ...' if len(missing) > 5 else ''} have no label map; pass --attention MODEL (a coarse model) "
            "to compute their attention, or give them labels")
    return [_with_phase(p, cache, needs, strategy) for p in out]


def _with_phase(pe: PretrainEntry, cache: Path, needs: Needs, strategy: str) -> PretrainEntry:
    if pe.phase or pe.attention == "none":
        if needs.phase and not pe.phase:
            raise ContrastSegError(f"strategy {strategy} needs a phase label per CT: entry {pe.id} has no 'phase' in the "
                                   "manifest and no labels or attention (--attention MODEL) to estimate it from the aorta")
        return pe
    phase, median = estimate_phase(pe.entry, cache)
    if phase is not None:
        pe.phase, pe.phase_source = phase, f"estimated: aorta median {median:.0f} HU"
    elif needs.phase:
        raise ContrastSegError(f"strategy {strategy} needs a phase label per CT: entry {pe.id} has no 'phase' in the "
                               "manifest and no aorta (label 8) in its labels/attention to estimate it from; add 'phase'")
    return pe
