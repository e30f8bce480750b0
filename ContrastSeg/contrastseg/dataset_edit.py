"""Writing the local dataset of corrected labels: add, remove (to a trash folder) and check entries.

The read side (manifest format, `entries`, `prepare_case`) is `dataset.py`, which every training run uses;
this module only ever appends to it, in the same format. Layout of a dataset folder:

    manifest.json              the entries (format contrastseg-dataset/1), rewritten atomically
    images/<case>-<sha12>.*    the CTs, one file per distinct image (versions of a case share it)
    labels/<id>.seg.nrrd       the BTCV label maps, one per entry (Slicer opens them as Segmentations)
    trash/<id>/                the files of removed entries: nothing is ever deleted
    .lock                      serialises writers (the CLI and Slicer may write at the same time)

Entries are immutable: exporting the same case again makes a new version (`<case>-v2`), the old one stays.
Files are written under temporary names and renamed, then the manifest is replaced atomically, so a crash
at any point leaves a valid manifest (at worst an unreferenced file, which `check` reports).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from .checksum import sha256
from .dataset import DATASET_FORMAT, MANIFEST, _id_map, read_manifest
from .errors import ContrastSegError
from .guards import check_home_of
from .io import (_read_dicom_series, _same_grid, atomic_path, read_ct, read_image, read_labels, split_suffix, write_json,
                 write_labels)
from .outputs import WriteError, os_error_message
from .corrections import changes, initial_dice
from .organs import BY_ID

TRASH = "trash"
LABEL_SUFFIX = ".seg.nrrd"
DICOM_TAGS = {"study_uid": "0020|000d", "series_uid": "0020|000e", "frame_of_reference_uid": "0020|0052"}


@contextlib.contextmanager
def locked(folder: Path):
    """Hold the dataset's writer lock (an OS file lock, released even if the process dies). A dataset path that
    is a file, or a folder that cannot be written, is one sentence."""
    if folder.exists() and not folder.is_dir():
        raise ContrastSegError(f"dataset {folder} is a file, not a dataset folder; give a folder with --dataset")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fh = open(folder / ".lock", "a+")
    except OSError as err:
        raise ContrastSegError(os_error_message(err, folder / ".lock")) from None
    with fh:
        try:
            import fcntl

            fcntl.flock(fh, fcntl.LOCK_EX)
        except ImportError:  # Windows
            import msvcrt

            msvcrt.locking(fh.fileno(), msvcrt.LK_LOCK, 1)
        yield


def _load(folder: Path) -> dict:
    return read_manifest(folder) if (folder / MANIFEST).exists() else {"format": DATASET_FORMAT, "entries": []}


def _save(folder: Path, data: dict) -> None:
    write_json(data, folder / MANIFEST)


def slug(text: str) -> str:
    """A case name usable in file names: lower case letters, digits and dashes."""
    text = re.sub(r"[^a-z0-9]+", "-", split_suffix(Path(str(text)).name)[0].lower()).strip("-")
    return text[:48] or "case"


def geometry(image: sitk.Image) -> dict:
    return {"size": list(image.GetSize()), "spacing": [round(v, 6) for v in image.GetSpacing()],
            "origin": [round(v, 4) for v in image.GetOrigin()], "direction": [round(v, 6) for v in image.GetDirection()]}


def dicom_uids(path: Path) -> dict | None:
    """Study/series UIDs of a DICOM folder (from its first file), or None for other inputs or blank tags."""
    if not path.is_dir():
        return None
    files = sorted(p for p in path.iterdir() if p.is_file())
    for f in files:
        reader = sitk.ImageFileReader()
        reader.SetFileName(str(f))
        try:
            reader.ReadImageInformation()
        except RuntimeError:
            continue
        uids = {k: reader.GetMetaData(t).strip() for k, t in DICOM_TAGS.items() if reader.HasMetaDataKey(t)}
        uids = {k: v for k, v in uids.items() if v}
        return uids or None
    return None


def _image_rel(source: Path, case: str, source_sha: str) -> str:
    suffix = ".nii.gz" if source.is_file() and source.name.lower().endswith(".nii.gz") else ".nrrd"
    return f"images/{case}-{source_sha[:12]}{suffix}"


def _store_image(folder: Path, source: Path, case: str, source_sha: str) -> tuple[str, sitk.Image]:
    """Put the CT in images/ once per distinct file: NIfTI is copied byte for byte, others become NRRD."""
    (folder / "images").mkdir(exist_ok=True)
    rel = _image_rel(source, case, source_sha)
    suffix = ".nii.gz" if rel.endswith(".nii.gz") else ".nrrd"
    target = folder / rel
    if not target.exists():
        with atomic_path(target) as tmp:
            if suffix == ".nii.gz":
                shutil.copyfile(source, tmp)
            else:  # keep the original voxel type (read_image casts to float32)
                raw = _read_dicom_series(source) if source.is_dir() else sitk.ReadImage(str(source))
                sitk.WriteImage(raw, str(tmp), useCompression=True)
    return rel, read_image(target)


def _case_for(data: dict, case: str | None, name: str, source_sha: str, uids: dict | None) -> str:
    """The case an export belongs to: given, or the one with the same source image or series, else a new one."""
    records = data["entries"]
    if case:
        return slug(case)
    for rec in reversed(records):
        prov = rec.get("provenance", {})
        same_series = uids and uids.get("series_uid") and (prov.get("dicom") or {}).get("series_uid") == uids["series_uid"]
        if prov.get("source_image_sha256") == source_sha or same_series:
            return rec.get("case", rec["id"])
    base, taken = slug(name), {r.get("case", r["id"]) for r in records}
    new, n = base, 2
    while new in taken:
        new, n = f"{base}-{n}", n + 1
    return new


def add_entry(dataset: str | os.PathLike, image: str | os.PathLike, labels: str | os.PathLike | None = None, *,
              case: str | None = None, entry_id: str | None = None, phase: str | None = None, source: str | None = None,
              id_map: str | dict | None = None, initial: str | os.PathLike | None = None, initial_id_map=None,
              model: str | None = None, volume_name: str | None = None, dicom: dict | None = None,
              note: str | None = None, extra: dict | None = None, organs: list[int] | None = None,
              validation: bool = False) -> dict:
    """Add one CT (and its corrected BTCV label map, if any) as a new, immutable entry; returns its record.

    `labels` may use another id scheme (`id_map`, e.g. "totalsegmentator"); it is stored with BTCV ids on the
    image's grid. `initial` is the segmentation before correction (the model's output, by `model`): the record
    then says which organs were edited and how many voxels changed. `dicom` holds the UIDs when the image
    came from DICOM (read from the files for a DICOM folder). `extra` adds fields to the provenance.

    `organs` are the organs the labels annotate (METHODS §9; default: the ids the label map holds). Training
    reads only those: an organ left out says nothing (it is not taught as background), an organ listed
    with no voxels says "absent here". `validation` marks the case as held out of training, for
    before/after numbers only.
    """
    folder, image = Path(dataset), Path(image)
    check_home_of(folder, "dataset")
    # the checks `segment` runs (a label map or a [0, 1] image is no CT), before anything is written
    ct = read_ct(image)
    lab = read_labels(labels, ct, _id_map(id_map)) if labels is not None else None
    if organs is not None:
        if lab is None:
            raise ContrastSegError("--organs says which organs a label map annotates; this entry has no label map")
        unknown = sorted(set(organs) - set(BY_ID))
        outside = sorted({int(v) for v in np.unique(sitk.GetArrayViewFromImage(lab)) if v} - set(organs))
        if unknown or outside:
            raise ContrastSegError(
                f"the label map holds {', '.join(BY_ID[o].key for o in outside)}, which --organs does not list"
                if outside else f"unknown organ ids {unknown} in --organs")
    if validation and lab is None:
        raise ContrastSegError("only a labelled case can be held out for validation")
    first = read_labels(initial, ct, _id_map(initial_id_map)) if (initial is not None and lab is not None) else None
    source_sha = sha256(image)
    uids = dicom or dicom_uids(image)
    with locked(folder):
        data = _load(folder)
        case = _case_for(data, case, volume_name or image.name, source_sha, uids)
        versions = [r.get("version", 1) for r in data["entries"] if r.get("case", r["id"]) == case]
        version = max(versions, default=0) + 1
        entry_id = entry_id or f"{case}-v{version}"
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,79}", entry_id):
            raise ContrastSegError(f"entry id '{entry_id}' is not allowed (letters, digits, _ . -)")
        if any(r["id"] == entry_id for r in data["entries"]):
            raise ContrastSegError(f"dataset {folder} already has an entry '{entry_id}'; entries are never overwritten")
        created: list[Path] = []  # removed again if this add fails: a failed add leaves nothing behind
        try:
            record = _write_entry(folder, data, created, image, ct, lab, first, entry_id, case, version, labels,
                                  source_sha, uids, organs, validation, phase, source, model, volume_name, note, extra)
            data["entries"].append(record)
            _save(folder, data)
        except BaseException as err:
            for path in reversed(created):
                path.unlink(missing_ok=True)
            if isinstance(err, OSError) and not isinstance(err, ContrastSegError):  # a mkdir, a copy: a sentence
                raise WriteError(os_error_message(err, Path(err.filename or folder))) from None
            raise
    return record


def _set_aside_orphan(folder: Path, rel: str, data: dict) -> None:
    """A label file under an entry's name that no entry references was left by an add that was killed
    mid-write: move it to trash/orphans/ (never deleted) so the retry can use the name."""
    referenced = {r.get(k) for r in data["entries"] for k in ("labels", "initial")}
    path = folder / rel
    if not path.exists() or rel in referenced:
        if path.exists():
            raise ContrastSegError(f"{path} exists; a corrected label map is never overwritten")
        return
    target = folder / TRASH / "orphans" / f"{time.strftime('%Y%m%d-%H%M%S')}-{path.name}"
    target.parent.mkdir(parents=True, exist_ok=True)
    os.replace(path, target)
    side = Path(split_suffix(str(path))[0] + ".json")
    if side.exists():
        os.replace(side, target.with_name(target.name + ".json"))


def _write_entry(folder, data, created, image, ct, lab, first, entry_id, case, version, labels, source_sha, uids,
                 organs, validation, phase, source, model, volume_name, note, extra) -> dict:
    """The files of one new entry (recorded in `created` as they appear) and its manifest record."""
    image_target = folder / _image_rel(image, case, source_sha)
    if not image_target.exists():
        created.append(image_target)
    image_rel, stored = _store_image(folder, image, case, source_sha)
    record = {"id": entry_id, "case": case, "version": version, "image": image_rel, "labels": None,
              "id_map": None, "phase": phase, "source": source or f"{image.name}",
              "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "image_sha256": sha256(folder / image_rel),
              "geometry": geometry(stored)}
    prov = {"volume_name": volume_name or image.name, "source_path": str(image.resolve()),
            "source_image_sha256": source_sha, "dicom": uids, "model": model}
    if lab is not None:
        labels_rel = f"labels/{entry_id}{LABEL_SUFFIX}"
        (folder / "labels").mkdir(exist_ok=True)
        arr = sitk.GetArrayFromImage(lab)
        present = sorted(int(v) for v in np.unique(arr) if v)
        _set_aside_orphan(folder, labels_rel, data)
        created += [folder / labels_rel, Path(split_suffix(str(folder / labels_rel))[0] + ".json")]
        write_labels(lab, folder / labels_rel, present or [])
        annotated = sorted(organs) if organs is not None else present
        record.update(labels=labels_rel, labels_sha256=sha256(folder / labels_rel), organs=annotated,
                      organ_voxels={BY_ID[o].key: int(np.count_nonzero(arr == o)) for o in annotated})
        if validation:
            record["validation"] = True
        prov["labels_source"] = str(Path(labels).resolve())
        if first is not None:
            before = sitk.GetArrayFromImage(first)
            initial_rel = f"labels/{entry_id}-initial{LABEL_SUFFIX}"
            _set_aside_orphan(folder, initial_rel, data)
            created += [folder / initial_rel, Path(split_suffix(str(folder / initial_rel))[0] + ".json")]
            write_labels(first, folder / initial_rel, sorted(int(v) for v in np.unique(before) if v))
            record.update(initial=initial_rel, initial_sha256=sha256(folder / initial_rel))
            prov.update(changes(before, arr))
            prov["initial_dice"] = initial_dice(before, arr, annotated)
    if note:
        prov["note"] = note
    prov.update(extra or {})
    record["provenance"] = prov
    return record


def summary_row(rec: dict) -> dict:
    """The columns shown for an entry by `contrastseg dataset list` and the Slicer module's dataset table."""
    edited = rec.get("provenance", {}).get("edited")
    return {"id": rec["id"], "case": rec.get("case", rec["id"]), "version": rec.get("version", 1),
            "labelled": bool(rec.get("labels")), "organs": [BY_ID[o].key for o in rec.get("organs", [])],
            "phase": rec.get("phase") or "", "created": (rec.get("created") or "")[:16].replace("T", " "),
            "edited": sorted(edited) if edited else [], "removed": bool(rec.get("removed")),
            "validation": bool(rec.get("validation")), "initial_dice": rec.get("provenance", {}).get("initial_dice") or {}}


def live_records(dataset: str | os.PathLike) -> list[dict]:
    """Manifest records not removed, in the order they were added."""
    return [r for r in read_manifest(dataset).get("entries", []) if not r.get("removed")]


def latest_per_case(records: list[dict]) -> list[dict]:
    """The newest version of each case: a re-exported correction supersedes the earlier one for training."""
    best: dict[str, dict] = {}
    for r in records:
        key = r.get("case", r["id"])
        if key not in best or r.get("version", 1) >= best[key].get("version", 1):
            best[key] = r
    return list(best.values())


def remove_entry(dataset: str | os.PathLike, entry_id: str) -> dict:
    """Mark an entry removed and move its files to trash/<id>/ (an image another entry uses stays in place).

    The manifest is updated first, so a crash before the move leaves the entry already excluded from
    training; running remove again finishes the move.
    """
    folder = Path(dataset)
    with locked(folder):
        data = read_manifest(folder)
        rec = next((r for r in data["entries"] if r["id"] == entry_id), None)
        if rec is None:
            raise ContrastSegError(f"dataset {folder} has no entry '{entry_id}'")
        in_use = {r["image"] for r in data["entries"] if not r.get("removed") and r is not rec}
        moves = {}
        for key in ("labels", "initial", "image"):
            rel = rec.get(key)
            if rel and not Path(rel).is_absolute() and not (key == "image" and rel in in_use):
                moves[key] = (rel, f"{TRASH}/{entry_id}/{Path(rel).name}")
                if key in ("labels", "initial"):
                    side = Path(split_suffix(rel)[0] + ".json")
                    if (folder / side).exists():
                        moves[f"{key}_sidecar"] = (str(side), f"{TRASH}/{entry_id}/{side.name}")
        rec.update(removed=True, removed_at=rec.get("removed_at") or time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                   trash={k: dst for k, (_, dst) in moves.items()})
        _save(folder, data)
        for src, dst in moves.values():
            if (folder / src).exists():
                (folder / dst).parent.mkdir(parents=True, exist_ok=True)
                os.replace(folder / src, folder / dst)
    return rec


def check(dataset: str | os.PathLike, fix: bool = False) -> tuple[list[str], list[str]]:
    """Verify every live entry (files present, SHA-256, readable 3D CT, labels on its grid with BTCV ids).

    Returns (problems, warnings): problems make an entry unusable; warnings are files no entry uses (left
    by an interrupted write), hidden partial files (temporaries of a write that was killed) and entries
    without a recorded checksum (datasets written by hand). `fix` moves the files no entry uses, and only
    those, to trash/orphans/: a referenced file is never touched.
    """
    folder = Path(dataset)
    base = folder if folder.is_dir() else folder.parent
    data = read_manifest(folder)
    problems, warnings, used = [], [], set()
    for rec in data.get("entries", []):
        if rec.get("removed"):
            for dst in (rec.get("trash") or {}).values():
                used.add(str(Path(dst)))
                if not (base / dst).exists():
                    warnings.append(f"{rec['id']}: removed, but {dst} is not in the trash (run remove again)")
            continue
        pid = rec["id"]
        for key in ("image", "labels", "initial"):
            rel = rec.get(key)
            if not rel:
                continue
            used.add(str(Path(rel)))
            if key in ("labels", "initial"):
                used.add(split_suffix(rel)[0] + ".json")
            path = base / rel
            if not path.exists():
                problems.append(f"{pid}: {key} file {rel} is missing")
                continue
            want = rec.get(f"{key}_sha256")
            if want is None:
                warnings.append(f"{pid}: no SHA-256 recorded for its {key}")
            elif sha256(path) != want:
                problems.append(f"{pid}: {key} file {rel} has changed (SHA-256 differs from the manifest)")
        try:
            image = read_image(base / rec["image"])
            if rec.get("geometry") and rec["geometry"] != geometry(image):
                problems.append(f"{pid}: the image's geometry differs from the one recorded")
            if rec.get("labels"):
                lab = read_labels(base / rec["labels"], None, _id_map(rec.get("id_map")))
                if not _same_grid(lab, image):
                    warnings.append(f"{pid}: labels are not on the image's voxel grid (they are resampled when read)")
                read_labels(base / rec["labels"], image, _id_map(rec.get("id_map")))
        except ContrastSegError as err:
            problems.append(f"{pid}: {err}")
    strays = []
    for sub in ("", "images", "labels"):
        folder_ = base / sub if sub else base
        for p in sorted(folder_.glob("*")) if folder_.is_dir() else []:
            rel = f"{sub}/{p.name}" if sub else p.name
            if not p.is_file() or rel in used or rel in (MANIFEST, ".lock"):
                continue
            if p.name.startswith("."):
                strays.append(p)
                warnings.append(f"{rel} is a partial file of an interrupted write")
            elif sub:
                strays.append(p)
                warnings.append(f"{rel} belongs to no entry (left by an interrupted write)")
    if strays and fix:
        target = base / TRASH / "orphans" / time.strftime("%Y%m%d-%H%M%S")
        with locked(base):
            target.mkdir(parents=True, exist_ok=True)
            for p in strays:
                if p.exists():  # an add that held the lock meanwhile has renamed its temporaries
                    os.replace(p, target / p.name)
        warnings.append(f"moved {len(strays)} file(s) no entry uses to {target.relative_to(base)} (nothing deleted)")
    elif strays:
        warnings.append("`contrastseg dataset check --fix` moves them to the dataset's trash/orphans/")
    return problems, warnings


def default_dataset() -> Path:
    """The local dataset the Slicer module and the CLI use when none is given: $CONTRASTSEG_HOME/dataset."""
    from .store import home

    return home() / "dataset"
