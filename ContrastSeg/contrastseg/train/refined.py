"""Fine-tuning of the refined organ-attention network on organ patches (METHODS.md §1.3, §1.6).

Loss: binary soft Dice on the foreground channel, 2 sum(p g) / (sum p^2 + sum g^2), over the batch.
The encoder can start from a pretrained file (`init`) and be frozen (AGCL) or trained (DCC-CL).
"""

from __future__ import annotations

import shutil
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file

from ..dataset import entries, prepare_case
from ..errors import ContrastSegError
from ..models.files import build_refined, read_card, save_stage, write_card
from ..patches import OrganIndex, sample_patch
from ..progress import Progress
from .loop import cosine, train
from .provenance import dataset_provenance
from .settings import RefinedSettings


def soft_dice_loss(logits: torch.Tensor, target: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """1 - 2 sum(p g) / (sum p^2 + sum g^2) with p the foreground softmax probability (METHODS §1.6)."""
    p = torch.softmax(logits.float(), dim=1)[:, 1]
    return 1 - (2 * (p * target).sum() + eps) / ((p * p).sum() + (target * target).sum() + eps)


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


def finetune(dataset: Path, run_dir: Path, base_model: Path, settings: RefinedSettings, device: torch.device,
             progress: Progress | None = None, init: Path | None = None) -> Path:
    """Train the refined network on the dataset's labelled entries; writes `run_dir/model` = base coarse + refined."""
    base_card = read_card(base_model)
    labelled = entries(dataset, labelled_only=True)
    if not labelled:
        raise ContrastSegError(f"dataset {dataset} has no labelled entries; fine-tuning needs at least 1")
    cache = Path(dataset if Path(dataset).is_dir() else Path(dataset).parent) / ".cache"
    organs = [o for o in settings.organs if o in base_card["organs"]]
    cases = [prepare_case(e, f"inplane:{settings.inplane_spacing}", cache) for e in labelled]
    indexes = [OrganIndex.build(c.labels, organs) for c in cases]
    pairs = [(ci, organ) for ci, idx in enumerate(indexes) for organ in idx.coords]
    if not pairs:
        raise ContrastSegError(f"no labelled organ of {organs} found in dataset {dataset}")
    torch.manual_seed(settings.seed)  # the same --seed gives the same starting weights
    net = build_refined(settings.card()).to(device)
    if init is not None:
        load_encoder(net, init)
    if settings.freeze_encoder:
        for p in net.encoder.parameters():
            p.requires_grad_(False)
    params = [p for p in net.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=settings.lr, weight_decay=1e-5)
    covered = sorted({o for _, o in pairs})

    def step(rng: np.random.Generator) -> torch.Tensor:
        xs, ys = [], []
        for _ in range(settings.batch):
            organ = covered[rng.integers(len(covered))]  # organs drawn uniformly: small organs get their share
            options = [ci for ci, o in pairs if o == organ]
            ci = options[rng.integers(len(options))]
            x, y = sample_patch(cases[ci].image, cases[ci].labels, indexes[ci], organ, rng, settings.patch)
            xs.append(x)
            ys.append(y)
        x = torch.from_numpy(np.stack(xs)).to(device)
        if settings.freeze_encoder:
            net.encoder.eval()  # frozen BatchNorm statistics too
        return soft_dice_loss(net(x), torch.from_numpy(np.stack(ys)).to(device))

    t0 = time.time()
    summary = train(run_dir, net, optimizer, step, settings.steps, settings.seed, progress=progress,
                    items_per_step=settings.batch, scheduler_fn=cosine(settings.steps, warmup=50))
    model_dir = run_dir / "model"
    model_dir.mkdir(parents=True, exist_ok=True)
    base_folder = Path(base_model) if Path(base_model).is_dir() else Path(base_model).parent
    shutil.copyfile(base_folder / base_card["coarse"]["weights"], model_dir / "coarse.safetensors")
    weights = save_stage(model_dir, "refined", net)
    card = dict(base_card)
    card.update({
        "name": run_dir.name,
        "organs": sorted(set(base_card["organs"])),
        "coarse": dict(base_card["coarse"], weights="coarse.safetensors"),
        "refined": dict(settings.card(), weights=weights),
        "training": dict(base_card.get("training", {}), refined={
            "settings": asdict(settings), "summary": summary, "device": str(device), "init": str(init) if init else None,
            "wall_seconds": round(time.time() - t0, 1), "organs_trained": covered, "data": dataset_provenance(labelled)}),
    })
    write_card(model_dir, card)
    return model_dir
