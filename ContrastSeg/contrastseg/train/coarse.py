"""Supervised training of the coarse 3D U-Net (Dice + cross-entropy on random crops of the low-res grid)."""

from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from monai.losses import DiceCELoss

from ..dataset import PreparedCase, entries, prepare_case
from ..errors import ContrastSegError
from ..models.files import build_coarse, save_stage, write_card
from ..progress import Progress
from .loop import cosine, train
from .provenance import dataset_provenance
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
    taken at a random scale (0.8-1.25, resized back, so organs appear larger or smaller), half the crops get
    a random per-organ intensity shift (other contrast phases: e.g. kidneys enhanced up to the window's top),
    and all get a random gamma (0.6-1.6), contrast, offset and noise.
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
        top = float(case.image.max())  # the window's upper end (250 HU) after scaling: enhancement saturates there
        if rng.random() < 0.5:  # contrast phases differ per organ: brighten or darken each organ on its own
            for organ in np.unique(lab[lab > 0]):
                mask = lab == organ
                img[mask] = np.clip(img[mask] + rng.uniform(-0.15, 0.35), 0, top)
        img = np.clip(img, 0, None) ** rng.uniform(0.6, 1.6)
        img = img * rng.uniform(0.85, 1.15) + rng.uniform(-0.08, 0.08) + rng.normal(0, 0.02, size=img.shape)
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


def train_coarse(dataset: Path, run_dir: Path, settings: CoarseSettings, device: torch.device,
                 progress: Progress | None = None, init: torch.nn.Module | None = None) -> Path:
    """Train the coarse network on a dataset's labelled entries; writes `run_dir/model` (card + weights)."""
    labelled = entries(dataset, labelled_only=True)
    if not labelled:
        raise ContrastSegError(f"dataset {dataset} has no labelled entries; the coarse stage needs at least 1")
    cache = Path(dataset if Path(dataset).is_dir() else Path(dataset).parent) / ".cache"
    cases = [prepare_case(e, settings.spacing, cache) for e in labelled]
    allowed = np.zeros(256, dtype=np.uint8)
    allowed[settings.organs] = settings.organs
    for c in cases:
        c.labels = allowed[c.labels]
    fg = [np.argwhere(c.labels > 0) for c in cases]
    torch.manual_seed(settings.seed)  # the same --seed gives the same starting weights
    net = init if init is not None else build_coarse({"channels": settings.channels})
    net = net.to(device)
    optimizer = torch.optim.AdamW(net.parameters(), lr=settings.lr, weight_decay=1e-5)
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True, include_background=False, batch=True)

    def step(rng: np.random.Generator) -> torch.Tensor:
        picks = rng.integers(len(cases), size=settings.batch)
        pairs = [sample_crop(cases[i], settings.crop, rng, settings.foreground_fraction, fg[i], settings.augment) for i in picks]
        x = torch.from_numpy(np.stack([p[0] for p in pairs])[:, None]).to(device)
        y = torch.from_numpy(np.stack([p[1] for p in pairs])[:, None].astype(np.int64)).to(device)
        return loss_fn(net(x), y)

    t0 = time.time()
    summary = train(run_dir, net, optimizer, step, settings.steps, settings.seed, progress=progress,
                    items_per_step=settings.batch, scheduler_fn=cosine(settings.steps, warmup=50))
    model_dir = run_dir / "model"
    model_dir.mkdir(parents=True, exist_ok=True)
    weights = save_stage(model_dir, "coarse", net)
    present = sorted({int(v) for c in cases for v in np.unique(c.labels)} - {0})
    write_card(model_dir, {
        "name": run_dir.name,
        "organs": present,
        "coarse": {"architecture": "CoarseUNet", "channels": list(settings.channels), "spacing": list(settings.spacing),
                   "weights": weights},
        "preprocessing": {"orientation": "RAS", "hu_window": [-175, 250], "scaling": "percentile 1-99 of the clipped volume"},
        "training": {"coarse": {"settings": asdict(settings), "summary": summary, "device": str(device),
                                "wall_seconds": round(time.time() - t0, 1),
                                "data": dataset_provenance(labelled)}},
    })
    return model_dir
