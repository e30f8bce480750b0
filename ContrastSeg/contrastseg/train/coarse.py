"""Supervised training of the coarse 3D U-Net (Dice + cross-entropy on random crops of the low-res grid), from
scratch or, in the loop, fine-tuned from a base model on partially labelled corrected cases."""

from __future__ import annotations

import shutil
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..augment import jitter_intensity
from ..dataset import PreparedCase, entries, prepare_case
from ..errors import ContrastSegError
from ..models.files import build_coarse, load_model, read_card, save_stage, write_card
from ..organs import NUM_CLASSES
from ..progress import Progress
from .loop import cosine, train
from .partial import marginal_dice_ce, merged_distillation
from .provenance import dataset_provenance
from .replay import find_replay, replay_cases
from .settings import CoarseSettings


def _crop3d(arr: np.ndarray, start: np.ndarray, size: tuple[int, int, int]) -> np.ndarray:
    out = np.zeros(size, dtype=arr.dtype)
    src = [slice(max(0, s), min(n, s + c)) for s, c, n in zip(start, size, arr.shape)]
    dst = [slice(sl.start - s, sl.stop - s) for sl, s in zip(src, start)]
    out[tuple(dst)] = arr[tuple(src)]
    return out


def sample_crop(case: PreparedCase, size, rng: np.random.Generator, fg_fraction: float, fg_coords: np.ndarray,
                augment: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """A random crop, centred on a random organ voxel with probability `fg_fraction`.

    With only a few training CTs the model must not learn one scanner's sizes and contrast: the crop is
    taken at a random scale (0.8-1.25, resized back, so organs appear larger or smaller) and its intensities
    jittered (`augment.jitter_intensity`).
    """
    shape = np.array(case.image.shape)
    if len(fg_coords) and rng.random() < fg_fraction:
        centre = fg_coords[rng.integers(len(fg_coords))]
    else:
        centre = rng.integers(0, shape)
    scale = rng.uniform(0.8, 1.25) if augment else 1.0
    src_size = tuple(max(4, int(round(c * scale))) for c in size)
    start = np.asarray(centre) - np.asarray(src_size) // 2 + rng.integers(-8, 9, size=3)
    img = _crop3d(case.image, start, src_size)
    lab = _crop3d(case.labels, start, src_size)
    if src_size != tuple(size):
        img = F.interpolate(torch.from_numpy(img)[None, None], size=tuple(size), mode="trilinear", align_corners=False)[0, 0].numpy()
        lab = F.interpolate(torch.from_numpy(lab)[None, None].float(), size=tuple(size), mode="nearest")[0, 0].numpy().astype(np.uint8)
    if augment:
        img = jitter_intensity(img, lab, float(case.image.max()), rng)
    return img.astype(np.float32), lab


def load_coarse_init(path: Path, settings: CoarseSettings) -> torch.nn.Module:
    """A CoarseUNet with `settings.channels` started from a pretrained state dict (e.g. `pretrain --strategy
    voxel-simsiam`'s coarse.safetensors); refused with a sentence if the file is for another network."""
    from safetensors.torch import load_file

    if not Path(path).exists():
        raise ContrastSegError(f"pretrained coarse network not found: {path}")
    net = build_coarse({"channels": settings.channels})
    state = load_file(str(path))
    expected = net.state_dict()
    if set(state) != set(expected) or any(state[k].shape != v.shape for k, v in expected.items()):
        raise ContrastSegError(f"{path} does not fit a coarse U-Net with channels {tuple(settings.channels)}; "
                               "pretrain with the same --channels")
    net.load_state_dict(state)
    return net


def _annotated_row(case: PreparedCase, organs: list[int]) -> np.ndarray:
    row = np.zeros(NUM_CLASSES, dtype=bool)
    row[[o for o in (case.annotated or []) if o in organs]] = True
    return row


def train_coarse(dataset: Path, run_dir: Path, settings: CoarseSettings, device: torch.device,
                 progress: Progress | None = None, init: torch.nn.Module | None = None,
                 base_model: Path | None = None) -> Path:
    """Train the coarse network on a dataset's labelled entries; writes `run_dir/model` (card + weights).

    With `base_model` this is the loop's fine-tuning (METHODS §9): the network starts from the base's coarse
    weights (unless `init` is given), each entry teaches only the organs it annotates (marginal Dice + CE),
    the frozen base network is distilled on the rest (`settings.distill`), and a share of each batch
    (`settings.replay`) comes from the base's own training cases where they are found on this machine. The
    model written then is complete: the new coarse network with the base's refined one.
    """
    labelled = [e for e in entries(dataset, labelled_only=True) if not e.validation]
    if not labelled:
        raise ContrastSegError(f"dataset {dataset} has no labelled entries to train on; the coarse stage needs at least 1")
    base_card = read_card(base_model) if base_model is not None else None
    replay_entries, replay_missing = find_replay(base_card) if base_card is not None and settings.replay > 0 else ([], [])
    user_ids = {e.id for e in labelled}
    replay_entries = [e for e in replay_entries if e.id not in user_ids]
    cases = [prepare_case(e, settings.spacing) for e in labelled]
    replay = [prepare_case(e, settings.spacing) for e in replay_entries]
    allowed = np.zeros(256, dtype=np.uint8)
    allowed[settings.organs] = settings.organs
    for c in cases + replay:
        c.labels = allowed[c.labels]
    rows = [_annotated_row(c, settings.organs) for c in cases + replay]
    fg = [np.argwhere(c.labels > 0) for c in cases + replay]
    torch.manual_seed(settings.seed)  # the same --seed gives the same starting weights
    if init is None and base_card is not None:
        init = load_model(base_model, stages=("coarse",)).coarse
    net = init if init is not None else build_coarse({"channels": settings.channels})
    net = net.to(device)
    teacher = None
    if base_card is not None and settings.distill > 0:
        teacher = load_model(base_model, stages=("coarse",)).coarse.to(device).eval()
        for p in teacher.parameters():
            p.requires_grad_(False)
    optimizer = torch.optim.AdamW(net.parameters(), lr=settings.lr, weight_decay=1e-5)
    pool = cases + replay
    n_user = len(cases)

    def step(rng: np.random.Generator) -> torch.Tensor:
        picks = [int(rng.integers(n_user, len(pool))) if replay and rng.random() < settings.replay
                 else int(rng.integers(n_user)) for _ in range(settings.batch)]
        pairs = [sample_crop(pool[i], settings.crop, rng, settings.foreground_fraction, fg[i], settings.augment) for i in picks]
        x = torch.from_numpy(np.stack([p[0] for p in pairs])[:, None]).to(device)
        y = torch.from_numpy(np.stack([p[1] for p in pairs]).astype(np.int64)).to(device)
        annotated = torch.from_numpy(np.stack([rows[i] for i in picks])).to(device)
        logits = net(x)
        loss = marginal_dice_ce(logits, y, annotated)
        if teacher is not None:
            with torch.no_grad():
                target_logits = teacher(x)
            loss = loss + settings.distill * merged_distillation(logits, target_logits, y, annotated)
        return loss

    t0 = time.time()
    summary = train(run_dir, net, optimizer, step, settings.steps, settings.seed, progress=progress,
                    items_per_step=settings.batch, scheduler_fn=cosine(settings.steps, warmup=min(50, settings.steps // 5)))
    model_dir = run_dir / "model"
    model_dir.mkdir(parents=True, exist_ok=True)
    weights = save_stage(model_dir, "coarse", net)
    present = sorted({int(v) for c in cases + replay for v in np.unique(c.labels)} - {0})
    record = {"settings": asdict(settings), "summary": summary, "device": str(device),
              "wall_seconds": round(time.time() - t0, 1), "data": dataset_provenance(labelled),
              "organs_annotated": sorted({o for r in rows[:n_user] for o in np.nonzero(r)[0].tolist()}),
              "replay": {"used": [e.id for e in replay_entries], "not_found": [c.get("id") for c in replay_missing]}}
    coarse = {"architecture": "CoarseUNet", "channels": list(settings.channels), "spacing": list(settings.spacing),
              "weights": weights}
    if base_card is None:
        write_card(model_dir, {
            "name": run_dir.name, "organs": present, "coarse": coarse,
            "preprocessing": {"orientation": "RAS", "hu_window": [-175, 250], "scaling": "percentile 1-99 of the clipped volume"},
            "training": {"coarse": record}})
        return model_dir
    card = dict(base_card, name=run_dir.name, coarse=coarse, replay=replay_cases(base_card),
                organs=sorted(set(base_card["organs"]) | {o for o in record["organs_annotated"] if o in present}))
    if base_card.get("refined"):
        base_folder = Path(base_model) if Path(base_model).is_dir() else Path(base_model).parent
        shutil.copyfile(base_folder / base_card["refined"]["weights"], model_dir / "refined.safetensors")
        card["refined"] = dict(base_card["refined"], weights="refined.safetensors")
    record["base"] = str(base_model)
    card["training"] = dict(base_card.get("training", {}), coarse=record)
    write_card(model_dir, card)
    return model_dir
