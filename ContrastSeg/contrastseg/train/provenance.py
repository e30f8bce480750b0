"""What a model was trained on, for its model card: entry ids, file names and checksums."""

from __future__ import annotations

from ..checksum import sha256
from ..dataset import Entry


def dataset_provenance(items: list[Entry]) -> list[dict]:
    return [{"id": e.id, "image": e.image.name, "image_sha256": sha256(e.image),
             "labels": e.labels.name if e.labels else None, "labels_sha256": sha256(e.labels) if e.labels else None,
             "source": e.record.get("source"), "license": e.record.get("license")} for e in items]
