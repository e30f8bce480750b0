"""Supervised training of the coarse 3D U-Net (Dice + cross-entropy on random crops of the low-res grid), from
scratch or, in the loop, fine-tuned from a base model on partially labelled corrected cases."""

from __future__ import annotations

import shutil
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from ..dataset import PreparedCase, entries, prepare_case
from ..inputs import InputSpec
from ..errors import ContrastSegError
from ..models.files import build_coarse, load_model, read_card, save_stage, trained_organs, write_card
from ..organs import NUM_CLASSES
from ..progress import Progress
from .loop import cosine, train
from .partial import marginal_dice_ce, merged_distillation
from .provenance import dataset_provenance
from .replay import find_replay, replay_cases
from .crops import NO_AUGMENT, CropAugment, from_case, painted_source, sample
from .settings import CoarseSettings


def crop_augment(settings: CoarseSettings) -> CropAugment:
    """The crop augmentation `settings` ask for (crops.CropAugment; off with `augment` False)."""
    if not settings.augment:
        return NO_AUGMENT
    return CropAugment(phase=settings.phase, fov=settings.fov, fov_plane=settings.fov_plane, ends=settings.ends)


def load_coarse_init(path: Path, settings: CoarseSettings) -> torch.nn.Module:
    """A CoarseUNet with `settings.channels` started from a pretrained state dict (e.g. `pretrain --strategy
    voxel-simsiam`'s coarse.safetensors); refused with a sentence if the file is for another network."""
    from safetensors.torch import load_file

    if not Path(path).exists():
        raise ContrastSegError(f"pretrained coarse network not found: {path}")
    net = build_coarse({"channels": settings.channels, "inputs": list(settings.inputs)})
    state = load_file(str(path))
    expected = net.state_dict()
    if set(state) != set(expected) or any(state[k].shape != v.shape for k, v in expected.items()):
        raise ContrastSegError(f"{path} does not fit a coarse U-Net with channels {tuple(settings.channels)}; "
                               "pretrain with the same --channels")
    net.load_state_dict(state)
    return net


def start_from_model(model_dir: Path, inputs: tuple[str, ...]) -> torch.nn.Module:
    """A model's coarse network as the start of a new one that takes `inputs` (inputs.COARSE_INPUTS): the
    weights of inputs the old network did not take start at zero, so it first answers as it did and learns
    what the new channels add. (The default model v0.3 started from v0.2's coarse network so.)"""
    old = load_model(model_dir, stages=("coarse",))
    had = list(old.card["coarse"].get("inputs", ["image"]))
    if had != list(inputs[: len(had)]):
        raise ContrastSegError(f"the coarse network of {model_dir} takes {had}; it can only start a network whose "
                               f"inputs begin with those (asked: {list(inputs)})")
    net = build_coarse({"channels": old.card["coarse"]["channels"], "inputs": list(inputs)})
    state = net.state_dict()
    for key, value in old.coarse.state_dict().items():
        if state[key].shape == value.shape:
            state[key] = value
        else:  # the first layer's input channels: the old ones copied, the new ones zero
            grown = torch.zeros_like(state[key])
            grown[:, : value.shape[1]] = value
            state[key] = grown
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
    spec = InputSpec.of(base_card) if base_card is not None else InputSpec(settings.intensity, tuple(settings.inputs),
                                                                           settings.scan_top)
    cases = [prepare_case(e, settings.spacing, intensity=spec.intensity) for e in labelled]
    replay = [prepare_case(e, settings.spacing, intensity=spec.intensity) for e in replay_entries]
    allowed = np.zeros(256, dtype=np.uint8)
    allowed[settings.organs] = settings.organs
    for c in cases + replay:
        c.labels = allowed[c.labels]
    rows = [_annotated_row(c, settings.organs) for c in cases + replay]
    sources = [from_case(c, spec) for c in cases + replay]
    painted = [painted_source(Path(f), float(settings.spacing[0]), _painted_cache()) for f in settings.painted]
    for p in painted:
        p.labels = allowed[p.labels]
    torch.manual_seed(settings.seed)  # the same --seed gives the same starting weights
    if init is None and base_card is not None:
        init = load_model(base_model, stages=("coarse",)).coarse
    net = init if init is not None else build_coarse({"channels": settings.channels, "inputs": list(spec.coarse_inputs)})
    net = net.to(device)
    teacher = None
    if base_card is not None and settings.distill > 0:
        teacher = load_model(base_model, stages=("coarse",)).coarse.to(device).eval()
        for p in teacher.parameters():
            p.requires_grad_(False)
    optimizer = torch.optim.AdamW(net.parameters(), lr=settings.lr, weight_decay=1e-5)
    n_user, n_pool = len(cases), len(cases) + len(replay)
    aug = crop_augment(settings)
    all_organs = np.zeros(NUM_CLASSES, dtype=bool)
    all_organs[settings.organs] = True

    contexts = [(src, row, voxels) for src, row in [*zip(sources, rows), *((p, all_organs) for p in painted)]
                for voxels in [src.context_voxels(settings.context)] if len(voxels)]

    def pick(rng: np.random.Generator) -> tuple[object, np.ndarray, np.ndarray | None]:
        if contexts and rng.random() < settings.context_share:
            return contexts[int(rng.integers(len(contexts)))]
        if painted and rng.random() < settings.painted_share:
            return painted[int(rng.integers(len(painted)))], all_organs, None  # a whole subject's reference labels
        i = int(rng.integers(n_user, n_pool)) if replay and rng.random() < settings.replay else int(rng.integers(n_user))
        return sources[i], rows[i], None

    def step(rng: np.random.Generator) -> torch.Tensor:
        picks = [pick(rng) for _ in range(settings.batch)]
        pairs = [sample(src, settings.crop, rng, spec, settings.foreground_fraction, aug, around)
                 for src, _, around in picks]
        x = torch.from_numpy(np.stack([p[0] for p in pairs])).to(device)
        y = torch.from_numpy(np.stack([p[1] for p in pairs]).astype(np.int64)).to(device)
        annotated = torch.from_numpy(np.stack([row for _, row, _ in picks])).to(device)
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
    present = sorted({int(v) for c in [*cases, *replay, *painted] for v in np.unique(c.labels)} - {0})
    trained = None  # from scratch: the card's organs (write_card records them)
    if base_card is not None:  # the base's trained channels stay trained (distilled), listed or not
        base_folder = Path(base_model) if Path(base_model).is_dir() else Path(base_model).parent
        trained = sorted(set(trained_organs(base_folder / base_card["coarse"]["weights"]) or base_card["organs"])
                         | set(base_card["organs"]) | {o for r in rows[:n_user] for o in np.nonzero(r)[0].tolist() if o in present})
    weights = save_stage(model_dir, "coarse", net, organs=trained)
    record = {"settings": asdict(settings), "summary": summary, "device": str(device),
              "wall_seconds": round(time.time() - t0, 1), "data": dataset_provenance(labelled),
              "organs_annotated": sorted({o for r in rows[:n_user] for o in np.nonzero(r)[0].tolist()}),
              "replay": {"used": [e.id for e in replay_entries], "not_found": [c.get("id") for c in replay_missing]}}
    coarse = {"architecture": "CoarseUNet", "channels": list(settings.channels), "spacing": list(settings.spacing),
              "inputs": list(spec.coarse_inputs), "weights": weights}
    if spec.scan_top != "as-is":
        coarse["scan_top"] = spec.scan_top
    record["painted"] = [str(f) for f in settings.painted]
    if base_card is None:
        write_card(model_dir, {
            "name": run_dir.name, "organs": present, "coarse": coarse,
            "preprocessing": preprocessing_record(spec.intensity),
            "training": {"coarse": record}})
        return model_dir
    coarse["channels"] = base_card["coarse"]["channels"]
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


def _painted_cache() -> Path:
    from ..dataset import shared_cache

    return shared_cache().parent / "painted"


def preprocessing_record(intensity: str) -> dict:
    """The card's `preprocessing` table: what inference must do to a CT before the networks see it."""
    from ..preprocess import HU_WINDOW, SOFT_TOP_MAX, SOFT_TOP_SLOPE

    scaling = ("percentile 1-99 of the clipped volume" if intensity == "percentile" else
               f"fixed: the window onto [0, 1], HU above it at slope {SOFT_TOP_SLOPE} up to {SOFT_TOP_MAX}")
    return {"orientation": "RAS", "hu_window": list(HU_WINDOW), "intensity": intensity, "scaling": scaling}
