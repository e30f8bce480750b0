"""Fine-tuning of the refined organ-attention network on organ patches (METHODS.md §1.3, §1.6).

Loss: binary soft Dice on the foreground channel, 2 sum(p g) / (sum p^2 + sum g^2), over the batch.
The encoder can start from a pretrained file (`init`) and be frozen (AGCL) or trained (DCC-CL).
"""

from __future__ import annotations

import copy
import os
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file

from ..dataset import Entry, PreparedCase, entries, prepare_case
from ..errors import ContrastSegError
from ..models.files import Model, build_refined, load_model, read_card, save_stage, write_card
from ..hints import PROMPT_VALUE
from ..patches import OrganIndex, sample_patch
from ..preprocess import intensity_of
from ..progress import Progress
from .loop import cosine, train
from .provenance import dataset_provenance
from .replay import find_replay, replay_cases
from .settings import RefinedSettings


def soft_dice_loss(logits: torch.Tensor, target: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """1 - 2 sum(p g) / (sum p^2 + sum g^2) with p the foreground softmax probability (METHODS §1.6)."""
    p = torch.softmax(logits.float(), dim=1)[:, 1]
    return 1 - (2 * (p * target).sum() + eps) / ((p * p).sum() + (target * target).sum() + eps)


def keep_loss(logits: torch.Tensor, teacher: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Mean squared difference of the foreground probability from the frozen `teacher`'s on the same input
    (learning without forgetting): 0 where the network still answers as it started."""
    with torch.no_grad():
        target = torch.softmax(teacher(x).float(), dim=1)[:, 1]
    return ((torch.softmax(logits.float(), dim=1)[:, 1] - target) ** 2).mean()


def load_encoder(net: torch.nn.Module, path: Path) -> int:
    """Copy a pretrained encoder's weights (safetensors, keys `encoder.*` or bare) into `net.encoder`.

    A whole refined network of the same architecture (a model's refined.safetensors) is loaded whole, so
    fine-tuning a chosen model continues from its decoder too.
    """
    if not path.exists():
        raise ContrastSegError(f"pretrained encoder not found: {path}")
    state = load_file(str(path))
    whole = net.state_dict()
    if set(state) == set(whole) and all(state[k].shape == v.shape for k, v in whole.items()):
        net.load_state_dict(state)
        return len(state)
    state = {k[len("encoder."):] if k.startswith("encoder.") else k: v for k, v in state.items()}
    expected = net.encoder.state_dict()
    fit = {k: v for k, v in state.items() if k in expected and v.shape == expected[k].shape}
    if len(fit) < len(expected):
        raise ContrastSegError(
            f"{path} does not fit this refined network's encoder ({len(fit)} of {len(expected)} tensors match); "
            "pretrain with the same depth, widths and stem"
        )
    net.encoder.load_state_dict(fit)
    return len(fit)


@dataclass
class _Source:
    """One training case on the refined grid: truth index, and (in the loop) the coarse network's attention."""

    case: PreparedCase
    truth: OrganIndex
    attention: np.ndarray | None = None
    attention_index: OrganIndex | None = None


def _coarse_attention(entry: Entry, case: PreparedCase, model: Model, organs: list[int], device: torch.device) -> np.ndarray:
    """The base model's coarse attention on the case's refined grid, cached beside the shared preprocessing."""
    import hashlib

    from ..checksum import sha256
    from ..dataset import shared_cache
    from ..infer import coarse_attention
    from ..io import read_image
    from ..preprocess import prepare

    weights = model.folder / model.card["coarse"]["weights"]
    key = hashlib.sha256(f"{sha256(entry.image)}|{sha256(weights)}|{organs}|{case.spacing}|att1".encode()).hexdigest()[:24]
    path = shared_cache() / "attention" / f"{key}.npz"
    if path.exists():
        try:
            with np.load(path, allow_pickle=False) as z:
                if z["attention"].shape == case.image.shape:
                    return z["attention"]
        except (OSError, ValueError, KeyError):
            pass
    image = read_image(entry.image)
    grid = prepare(image, case.spacing).grid
    att = coarse_attention(image, model, organs, grid, device)
    if att.shape != case.image.shape:  # the same grid by construction; refuse to train on a misaligned one
        raise ContrastSegError(f"coarse attention of {entry.id} is {att.shape}, its refined grid {case.image.shape}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{key}.{os.getpid()}.tmp.npz")
        np.savez_compressed(tmp, attention=att)
        os.replace(tmp, path)
    except OSError:
        pass
    return att


def finetune(dataset: Path, run_dir: Path, base_model: Path, settings: RefinedSettings, device: torch.device,
             progress: Progress | None = None, init: Path | None = None, encoder: Path | None = None) -> Path:
    """Train the refined network on the dataset's labelled entries; writes `run_dir/model` = base coarse + refined.

    `init` starts the network (a whole refined network, or an encoder); `encoder` then replaces its encoder
    (a pretraining run's, on top of the base model's decoder: the loop's `--stages pretrain,...`).

    Each entry teaches only the organs it annotates (an unannotated organ yields no patch). A share of the
    patches (`settings.prompts`) gets prompt-like attention (a click, a box, a stroke, the previous slice),
    so the network answers clicks (METHODS §10); of the rest, a share (`settings.coarse_attention`) gets as
    attention the base model's coarse output, as at inference (so the network learns to fix that coarse
    network's errors, false positives included), and the others the perturbed truth. A share of the patches (`settings.replay`) comes from the base model's own training
    cases, where found on this machine.
    """
    base_card = read_card(base_model)
    labelled = [e for e in entries(dataset, labelled_only=True) if not e.validation]
    if not labelled:
        raise ContrastSegError(f"dataset {dataset} has no labelled entries to train on; fine-tuning needs at least 1")
    organs = [o for o in settings.organs if o in base_card["organs"] or o in _annotated_in(labelled)]
    spacing = f"inplane:{settings.inplane_spacing}"
    intensity = intensity_of(base_card)  # the refined network sees the CT as the model's coarse one does
    replay_entries = []
    if settings.replay > 0:
        found, _ = find_replay(base_card)
        replay_entries = [e for e in found if e.id not in {x.id for x in labelled}]
    base = load_model(base_model, stages=("coarse",)) if settings.coarse_attention > 0 else None
    groups: list[list[_Source]] = []
    for group in (labelled, replay_entries):
        sources = []
        for e in group:
            case = prepare_case(e, spacing, intensity=intensity)
            allowed = [o for o in organs if o in (case.annotated or [])]
            src = _Source(case, OrganIndex.build(case.labels, allowed))
            if base is not None:
                src.attention = _coarse_attention(e, case, base, [o for o in organs if o in base.organs], device)
                src.attention_index = OrganIndex.build(src.attention, allowed)
            sources.append(src)
        groups.append(sources)
    user, replay = groups
    covered = sorted({o for s in user + replay for o in s.truth.coords})
    if not covered:
        raise ContrastSegError(f"no labelled organ of {organs} found in dataset {dataset}")
    torch.manual_seed(settings.seed)  # the same --seed gives the same starting weights
    net = build_refined(settings.card()).to(device)
    loaded = load_encoder(net, init) if init is not None else 0
    teacher = None
    if settings.keep > 0:  # the starting network, frozen: what a coarse mask should keep getting as an answer
        if loaded != len(net.state_dict()):
            raise ContrastSegError("--keep distils toward the starting network, so --init must be a whole refined "
                                   "network (a model's refined.safetensors), not an encoder")
        teacher = copy.deepcopy(net).eval()
        for p in teacher.parameters():
            p.requires_grad_(False)
    if encoder is not None:
        load_encoder(net, encoder)
    if settings.freeze_encoder:
        for p in net.encoder.parameters():
            p.requires_grad_(False)
    params = [p for p in net.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=settings.lr, weight_decay=1e-5)

    def patch(sources: list[_Source], rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, bool]:
        """(input, target, is it a prompt patch)."""
        organ_list = sorted({o for s in sources for o in s.truth.coords})
        organ = organ_list[rng.integers(len(organ_list))]  # organs drawn uniformly: small organs get their share
        options = [s for s in sources if organ in s.truth.coords]
        src = options[rng.integers(len(options))]
        look = {"intensity": intensity, "structures": src.case.structures, "spacing": src.case.spacing}
        if settings.prompts > 0 and rng.random() < settings.prompts:  # no draw at 0: the same stream as before
            return (*sample_patch(src.case.image, src.case.labels, src.truth, organ, rng, settings.patch,
                                  prompt_mm=settings.inplane_spacing, augment=settings.augment, **look), True)
        if src.attention_index is not None and organ in src.attention_index.coords and rng.random() < settings.coarse_attention:
            return (*sample_patch(src.case.image, src.case.labels, src.attention_index, organ, rng, settings.patch,
                                  attention_map=src.attention, augment=settings.augment, **look), False)
        return (*sample_patch(src.case.image, src.case.labels, src.truth, organ, rng, settings.patch,
                              augment=settings.augment, **look), False)

    user_ok = [s for s in user if s.truth.coords]
    replay_ok = [s for s in replay if s.truth.coords]

    def step(rng: np.random.Generator) -> torch.Tensor:
        xs, ys, prompted = [], [], []
        for _ in range(settings.batch):
            pool = replay_ok if replay_ok and (not user_ok or rng.random() < settings.replay) else user_ok
            x, y, is_prompt = patch(pool, rng)
            xs.append(x)
            ys.append(y)
            prompted.append(is_prompt)
        x = torch.from_numpy(np.stack(xs)).to(device)
        if settings.freeze_encoder:
            net.encoder.eval()  # frozen BatchNorm statistics too
        logits = net(x)
        loss = soft_dice_loss(logits, torch.from_numpy(np.stack(ys)).to(device))
        plain = [i for i, p in enumerate(prompted) if not p]
        if teacher is not None and plain:
            loss = loss + settings.keep * keep_loss(logits[plain], teacher, x[plain])
        return loss

    t0 = time.time()
    summary = train(run_dir, net, optimizer, step, settings.steps, settings.seed, progress=progress,
                    items_per_step=settings.batch, scheduler_fn=cosine(settings.steps, warmup=min(50, settings.steps // 5)))
    model_dir = run_dir / "model"
    model_dir.mkdir(parents=True, exist_ok=True)
    base_folder = Path(base_model) if Path(base_model).is_dir() else Path(base_model).parent
    shutil.copyfile(base_folder / base_card["coarse"]["weights"], model_dir / "coarse.safetensors")
    weights = save_stage(model_dir, "refined", net)
    card = dict(base_card)
    user_organs = sorted({o for s in user for o in s.truth.coords})
    card.update({
        "name": run_dir.name,
        "organs": sorted(set(base_card["organs"]) | set(user_organs)),
        "coarse": dict(base_card["coarse"], weights="coarse.safetensors"),
        # trained for prompts: clicks go in at PROMPT_VALUE (a base's value is kept by a run without prompts)
        "refined": dict(settings.card(), weights=weights, **({"prompt_value": PROMPT_VALUE} if settings.prompts > 0 else {
            k: v for k, v in (base_card.get("refined") or {}).items() if k == "prompt_value"})),
        "replay": replay_cases(base_card),
        "training": dict(base_card.get("training", {}), refined={
            "settings": asdict(settings), "summary": summary, "device": str(device), "init": str(init) if init else None,
            "encoder": str(encoder) if encoder else None,
            "wall_seconds": round(time.time() - t0, 1), "organs_trained": user_organs, "organs_replayed": sorted(
                {o for s in replay for o in s.truth.coords}), "replay": [s.case.id for s in replay],
            "coarse_attention_from": str(base_model) if base is not None else None,
            "data": dataset_provenance(labelled)}),
    })
    write_card(model_dir, card)
    return model_dir


def _annotated_in(items: list[Entry]) -> set[int]:
    return {o for e in items for o in (e.organs or [])}
