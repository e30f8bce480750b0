"""Dataset folders: CT images, optional BTCV label maps, and a JSON manifest that says what each entry is.

One format serves supervised training, pretraining and the local dataset of corrected labels that the
ContrastSegTraining module writes. `manifest.json`:

    {"format": "contrastseg-dataset/1",
     "entries": [{"id": "case-0001", "image": "images/case-0001.nii.gz", "labels": "labels/case-0001.nii.gz",
                  "id_map": "totalsegmentator" | {"5": 6, ...} | null, "phase": "portal" | null, ...}]}

Paths are relative to the manifest's folder (absolute paths are allowed, so a manifest can point at data
it must not copy, such as ../shared/data). `labels` is null for unlabelled CTs (pretraining only).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from .errors import ContrastSegError
from .io import read_image, read_labels
from .organs import TOTALSEGMENTATOR_TO_BTCV
from .preprocess import inplane_spacing, prepare, resample_like

DATASET_FORMAT = "contrastseg-dataset/1"
MANIFEST = "manifest.json"
NAMED_ID_MAPS = {"totalsegmentator": TOTALSEGMENTATOR_TO_BTCV, "btcv": None}


@dataclass
class Entry:
    """One dataset entry, paths resolved."""

    id: str
    image: Path
    labels: Path | None
    id_map: dict[int, int] | None
    phase: str | None
    record: dict

    @property
    def organs(self) -> list[int] | None:
        """The organs this entry annotates (METHODS §9), as recorded; None: whatever its label map holds.

        `dataset add` records them (the segments exported from Slicer, `--organs`, or the ids in the file);
        an annotated organ with no voxels says "this organ is absent here", an unannotated one says nothing.
        """
        organs = self.record.get("organs")
        return None if organs is None else sorted(int(o) for o in organs)

    @property
    def validation(self) -> bool:
        """Marked by the user as a validation case (`dataset add --validation`): held out of training."""
        return bool(self.record.get("validation"))


def manifest_path(path: str | os.PathLike) -> Path:
    path = Path(path)
    return path / MANIFEST if path.is_dir() else path


def read_manifest(path: str | os.PathLike) -> dict:
    mpath = manifest_path(path)
    if not mpath.exists():
        raise ContrastSegError(f"no dataset at {path} (expected a folder holding {MANIFEST})")
    try:
        data = json.loads(mpath.read_text())
    except json.JSONDecodeError as err:
        raise ContrastSegError(f"dataset manifest {mpath} is not valid JSON ({err})") from None
    if data.get("format") != DATASET_FORMAT:
        raise ContrastSegError(f"{mpath} is not a ContrastSeg dataset manifest (format must be '{DATASET_FORMAT}')")
    return data


def _id_map(value) -> dict[int, int] | None:
    if value is None or isinstance(value, str):
        if value is not None and value not in NAMED_ID_MAPS:
            raise ContrastSegError(f"unknown id map '{value}'; named maps: {sorted(NAMED_ID_MAPS)}")
        return None if value is None else NAMED_ID_MAPS[value]
    return {int(k): int(v) for k, v in value.items()}


def entries(path: str | os.PathLike, labelled_only: bool = False) -> list[Entry]:
    """The manifest's entries with absolute paths; `labelled_only` drops unlabelled CTs."""
    mpath = manifest_path(path)
    data = read_manifest(mpath)
    base = mpath.parent
    out = []
    for rec in data.get("entries", []):
        if rec.get("removed"):
            continue
        labels = rec.get("labels")
        if labelled_only and not labels:
            continue
        out.append(Entry(rec["id"], (base / rec["image"]).resolve(), (base / labels).resolve() if labels else None,
                         _id_map(rec.get("id_map")), rec.get("phase"), rec))
    return out


@dataclass
class PreparedCase:
    """A case on a working grid: normalised image and labels (z, y, x), ready for patch sampling."""

    id: str
    image: np.ndarray
    labels: np.ndarray | None
    spacing: tuple[float, float, float]
    phase: str | None
    annotated: list[int] | None = None  # organs the labels speak for (Entry.organs, else the ids present)
    structures: np.ndarray | None = None  # every labelled structure in TotalSegmentator ids, where the labels
    #                                        came as such (what contrast-phase augmentation shifts; tissues.py)


CACHE_VERSION = "v3"


def shared_cache() -> Path:
    """The preprocessing cache every run shares: $CONTRASTSEG_HOME/cache/prepared."""
    from .store import home

    return home() / "cache" / "prepared"


def _cache_key(entry: Entry, spacing, intensity: str) -> str:
    """SHA-256 of the files' contents plus the settings: a changed file is never served from the cache,
    and the same CT in two datasets (or two runs' snapshots) is prepared once."""
    from .checksum import sha256

    parts = [sha256(entry.image), sha256(entry.labels) if entry.labels is not None else "-",
             json.dumps(entry.id_map, sort_keys=True), repr(spacing if isinstance(spacing, str) else tuple(spacing)),
             intensity, CACHE_VERSION]
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:24]


def _annotated(entry: Entry, labels: np.ndarray | None) -> list[int] | None:
    if labels is None:
        return None
    return entry.organs if entry.organs is not None else sorted(int(v) for v in np.unique(labels) if v)


def prepare_case(entry: Entry, spacing: tuple[float, float, float] | str, cache_dir: Path | None = None,
                 intensity: str = "percentile") -> PreparedCase:
    """Read, reorient, resample and normalise one entry (labels by nearest neighbour); cached as .npz.

    `spacing` is (x, y, z) mm, or "inplane:S" for S mm in-plane with the slice spacing kept (refined stage).
    The cache (default: the shared one) holds plain arrays (no pickle) keyed by the files' SHA-256 and the
    settings, so each volume is preprocessed once however many runs and datasets read it. Labels of organs
    the entry does not annotate are set to 0 ("says nothing"), so no loss can read them. `intensity` is the
    model's intensity mode (preprocess.INTENSITY_MODES). A label map in TotalSegmentator ids (a `segmentations/`
    folder, or id_map "totalsegmentator") also gives `structures`, every structure it names.
    """
    key = _cache_key(entry, spacing, intensity)
    cache_dir = shared_cache() if cache_dir is None else cache_dir
    cached = cache_dir / f"{key}.npz"
    if cached.exists():
        try:
            with np.load(cached, allow_pickle=False) as z:
                labels = z["labels"] if z["labels"].size else None
                structures = z["structures"] if z["structures"].size else None
                return PreparedCase(entry.id, z["image"], labels, tuple(z["spacing"].tolist()), entry.phase,
                                    _annotated(entry, labels), structures)
        except (OSError, ValueError, KeyError):
            pass  # a damaged cache file is rebuilt below
    image = read_image(entry.image)
    if isinstance(spacing, str):
        inplane = float(spacing.split(":")[1])
        spacing = inplane_spacing(image, inplane)
    prepared = prepare(image, spacing, intensity)
    labels = structures = None
    if entry.labels is not None:
        lab = read_labels(entry.labels, image, entry.id_map)
        labels = sitk.GetArrayFromImage(resample_like(lab, prepared.grid, sitk.sitkNearestNeighbor, 0))
        if _in_ts_ids(entry):
            raw = read_labels(entry.labels, image, _TS_IDENTITY)
            structures = sitk.GetArrayFromImage(resample_like(raw, prepared.grid, sitk.sitkNearestNeighbor, 0))
        if entry.organs is not None:  # voxels of organs the entry does not annotate say nothing
            keep = np.zeros(256, dtype=np.uint8)
            keep[entry.organs] = entry.organs
            labels = keep[labels]
    case = PreparedCase(entry.id, prepared.array, labels, tuple(spacing), entry.phase, _annotated(entry, labels), structures)
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        tmp = cache_dir / f".{key}.{os.getpid()}.tmp.npz"
        empty = np.zeros(0, np.uint8)
        np.savez(tmp, image=case.image, labels=labels if labels is not None else empty,
                 structures=structures if structures is not None else empty, spacing=np.asarray(spacing))
        os.replace(tmp, cached)
    except OSError:
        pass  # a cache that cannot be written (read-only home, full disk) only costs time
    return case


_TS_IDENTITY = {i: i for i in range(1, 118)}


def _in_ts_ids(entry: Entry) -> bool:
    from .maskfiles import is_structure_folder

    return entry.id_map == TOTALSEGMENTATOR_TO_BTCV or (entry.id_map is None and is_structure_folder(entry.labels))
