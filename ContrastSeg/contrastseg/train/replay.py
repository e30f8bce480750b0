"""Replay: the base model's own training cases, mixed into a retraining run so nothing is forgotten (METHODS §9).

A model card names its training cases with their SHA-256 (`replay`, or for the bundled model the
`training.*.data` records). The files are looked up, never trusted by name: in the shipped `Resources/Replay`
dataset and in every dataset folder listed in `CONTRASTSEG_REPLAY` (os.pathsep-separated); an entry is used
only if both its image and label files hash to what the card says. A retrained model's card keeps its base's
list, so replay follows the model from one run to the next.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..checksum import sha256
from ..dataset import Entry, entries
from ..errors import ContrastSegError
from ..paths import resources

ENV = "CONTRASTSEG_REPLAY"


def replay_cases(card: dict) -> list[dict]:
    """The training cases a model card names: [{"id", "image_sha256", "labels_sha256"}], without duplicates."""
    if card.get("replay") is not None:
        return list(card["replay"])
    found: dict[str, dict] = {}
    for stage in (card.get("training") or {}).values():
        for rec in stage.get("data", []) if isinstance(stage, dict) else []:
            if rec.get("image_sha256") and rec.get("labels_sha256"):
                found.setdefault(rec["image_sha256"], {k: rec.get(k) for k in ("id", "image_sha256", "labels_sha256", "source")})
    return list(found.values())


def replay_sources() -> list[Path]:
    extra = [Path(p) for p in os.environ.get(ENV, "").split(os.pathsep) if p.strip()]
    return [resources() / "Replay", *extra]


def find_replay(card: dict) -> tuple[list[Entry], list[dict]]:
    """The base model's training cases found on this machine, and those the card names but none holds."""
    wanted = {(c["image_sha256"], c["labels_sha256"]): c for c in replay_cases(card)}
    hits: dict[tuple[str, str], Entry] = {}
    for source in replay_sources():
        try:
            candidates = entries(source, labelled_only=True)
        except ContrastSegError:
            continue
        for e in candidates:
            if not (e.image.exists() and e.labels.exists()):
                continue
            key = (sha256(e.image), sha256(e.labels))
            if key in wanted and key not in hits:
                hits[key] = e
    return list(hits.values()), [c for k, c in wanted.items() if k not in hits]
