"""`pretrain()`: one pretraining run from dataset to exported weights, curves and embedding plot.

Run folder (written by rank 0):
  config.json         settings, data (entries, attention source, phase and where it came from), hardware
  log.txt             readable log; history.jsonl / checkpoint.* of the training loop (per phase for SepaReg)
  curves.png          loss and learning rate against step (phases one after another)
  embedding.png       PCA of encoder features of organ patches, coloured by organ and by phase
  encoder.safetensors the refined encoder, keys `encoder.*` (RefinedNet.encoder): `finetune --init`
  coarse.safetensors  voxel-simsiam only: the CoarseUNet state dict: `train-coarse --init`
  summary.json        per-phase steps, losses, throughput, wall time
"""

from __future__ import annotations

import json
import os
import platform
import time
from dataclasses import asdict
from pathlib import Path

import torch

from ..errors import ContrastSegError
from ..io import write_json
from ..outputs import write_safetensors
from ..plots import training_curves
from ..progress import Progress
from ..train.loop import read_history
from . import distributed as D
from .context import Context, PretrainProgress
from .data import load_entries
from .embedding import coarse_embedding, encoder_embedding
from .settings import PretrainSettings
from .strategies import get

ENCODER_FILE = "encoder.safetensors"
COARSE_FILE = "coarse.safetensors"
ENCODER_FORMAT = "contrastseg-pretrained-encoder/1"


def save_weights(module: torch.nn.Module, path: Path, prefix: str, metadata: dict) -> Path:
    """A state dict as safetensors (atomically), keys prefixed, settings in the header's metadata."""
    tensors = {f"{prefix}{k}": v.detach().float().contiguous().cpu() if v.is_floating_point() else v.detach().contiguous().cpu()
               for k, v in module.state_dict().items()}
    write_safetensors(tensors, path, metadata={k: json.dumps(v) if not isinstance(v, str) else v for k, v in metadata.items()})
    return path


def hardware(device: torch.device, d: D.Dist) -> dict:
    info = {"device": str(device), "world_size": d.world, "torch": torch.__version__, "cpu": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), "python": platform.python_version()}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["precision"] = "bf16 autocast, channels-last"
    else:
        info["precision"] = "fp32"
    return info


def _curves(run_dir: Path, phases: list[str], title: str) -> None:
    """One curve through all phases: each phase's steps follow the previous phase's."""
    records, offset = [], 0
    for ph in phases:
        hist = read_history(run_dir / ph if ph else run_dir)
        last = {}
        for h in hist:  # a resumed run repeats the steps after its last checkpoint: keep the latest record
            last[h["step"]] = h
        for step in sorted(last):
            records.append(dict(last[step], step=step + offset))
        offset += max(last) if last else 0
    if records:
        training_curves(records, run_dir / "curves.png", title=title)


def pretrain(dataset: Path, run_dir: Path, settings: PretrainSettings, device: torch.device,
             progress: Progress | None = None, attention_model: Path | None = None) -> Path:
    """Run `settings.strategy` on `dataset` into `run_dir`; returns the exported weights file."""
    strategy = get(settings.strategy)
    d = D.setup(device)
    run_dir = Path(run_dir)
    if d.main:
        run_dir.mkdir(parents=True, exist_ok=True)
    D.barrier(d)
    ctx = Context(settings, Path(dataset), run_dir, d.device, d, attention_model=attention_model)
    if d.main:
        ctx.progress = progress if progress is not None else PretrainProgress("none", strategy.stages(settings))
    t0 = time.time()
    try:
        items = load_entries(Path(dataset), settings.strategy, strategy.needs, attention_model, d.device)
        config = {"strategy": settings.strategy, "method": strategy.summary, "dataset": str(Path(dataset).resolve()),
                  "attention_model": str(attention_model) if attention_model else None, "settings": asdict(settings),
                  "temperature": settings.tau() if settings.strategy in ("simclr", "supcon-mt", "dcc") else settings.temperature,
                  "needs": asdict(strategy.needs), "data": [it.provenance() for it in items], "hardware": hardware(d.device, d),
                  "started": time.strftime("%Y-%m-%d %H:%M:%S")}
        if d.main:
            write_json(config, run_dir / "config.json")
        ctx.log(f"pretrain {settings.strategy} on {dataset}: {len(items)} CTs, world size {d.world}, device {d.device}")
        torch.manual_seed(settings.seed)  # the networks' initial weights: the same run twice is the same run
        result = strategy.run(ctx, items)
        out = None
        summary = {"strategy": settings.strategy, "phases": ctx.summaries}
        if d.main:
            meta = {"format": ENCODER_FORMAT, "strategy": settings.strategy, "depth": settings.depth,
                    "widths": list(settings.widths), "stem": settings.stem}
            if result.kind == "encoder":
                out = save_weights(result.network, run_dir / ENCODER_FILE, "encoder.", meta)
            else:
                meta.update(format="contrastseg-pretrained-coarse/1", channels=list(settings.coarse_channels))
                out = save_weights(result.network, run_dir / COARSE_FILE, "", meta)
            ctx.progress.output("weights", str(out))
            phases = [p if p != "train" else "" for p in ctx.summaries]
            _curves(run_dir, phases, f"{settings.strategy} pretraining")
            ctx.stage("embedding", "PCA of encoder features")
            title = f"{settings.strategy}: PCA of encoder features"
            if result.kind == "encoder" and result.sampler is not None:
                summary["embedding"] = encoder_embedding(result.network, result.sampler, settings.probe, d.device,
                                                         run_dir / "embedding.png", title)
            elif result.coarse_cases:
                summary["embedding"] = coarse_embedding(result.network, result.coarse_cases, settings.coarse_crop,
                                                        settings.probe, d.device, run_dir / "embedding.png",
                                                        f"{settings.strategy}: PCA of coarse decoder features",
                                                        settings.input_spec())
            else:
                ctx.log("no embedding plot: the dataset has no labels or attention to colour organ patches by")
            summary["wall_seconds"] = round(time.time() - t0, 1)
            summary["output"] = str(out)
            write_json(summary, run_dir / "summary.json")
            ctx.log(f"done in {summary['wall_seconds']} s: {out}")
        D.barrier(d)
        return out if out is not None else run_dir / (ENCODER_FILE if result.kind == "encoder" else COARSE_FILE)
    except ContrastSegError as err:
        ctx.log(f"error: {err}")
        raise
    finally:
        D.teardown(d)
