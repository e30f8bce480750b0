"""The shared machinery every strategy runs through: device, precision, DDP, phases, checkpoints, progress.

A strategy builds its networks and a step function; `Context.train_phase` does the rest with the project's
training loop (train/loop.py: step-seeded batches, checkpoint + resume, NaN guard, history.jsonl, log.txt).
A phase is one call of that loop with its own folder (a strategy with several stages, SepaReg, has several
phases), so a killed run resumes inside the phase it was in and skips the finished ones.
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ..progress import Progress
from ..train.loop import cosine, log_line, train
from . import distributed as D
from .settings import PretrainSettings


class PretrainProgress(Progress):
    """Progress whose training-loop stage is named after the current phase, with epoch and patches/s added."""

    def __init__(self, mode: str = "bar", stages: dict[str, float] | None = None, stream=None):
        super().__init__(mode, stages, stream)
        self.phase: str | None = None
        self.epoch_steps = 1

    def begin(self, stage: str, message: str = "") -> None:
        super().begin(self.phase if stage == "train" and self.phase else stage, message)

    def update(self, fraction: float, message: str = "", force: bool = False, **extra) -> None:
        if "step" in extra:
            extra["epoch"] = (int(extra["step"]) - 1) // max(1, self.epoch_steps) + 1
            if "items_per_s" in extra:
                extra["patches_per_s"] = extra["items_per_s"]
                message = f"{message} ep {extra['epoch']} {extra['items_per_s']:.1f}/s"
        super().update(fraction, message, force, **extra)


@dataclass
class Context:
    settings: PretrainSettings
    dataset: Path
    run_dir: Path
    device: torch.device
    dist: D.Dist = field(default_factory=D.Dist)
    progress: Progress = field(default_factory=lambda: Progress("none"))
    attention_model: Path | None = None
    summaries: dict = field(default_factory=dict)

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    def autocast(self):
        """bf16 autocast on CUDA (tensor cores, half the activation memory); full precision on CPU."""
        if self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def tensor(self, x: np.ndarray) -> torch.Tensor:
        """A batch on the device; 4D batches in channels-last layout on CUDA (faster convolutions there)."""
        t = torch.from_numpy(np.ascontiguousarray(x)).to(self.device, non_blocking=True)
        if self.cuda and t.dim() in (4, 5):
            t = t.contiguous(memory_format=torch.channels_last if t.dim() == 4 else torch.channels_last_3d)
        return t

    def log(self, text: str) -> None:
        if self.dist.main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            log_line(self.run_dir, text)

    def stage(self, name: str, message: str = "") -> None:
        self.progress.begin(name, message)

    def train_phase(self, phase: str, module: torch.nn.Module, step_fn: Callable[[torch.nn.Module, np.random.Generator], torch.Tensor],
                    steps: int, items_per_step: int, epoch_steps: int, params=None, lr: float | None = None) -> dict:
        """Train `module` for `steps` steps of `step_fn(forward_module, rng)`; resumable; returns the loop's summary.

        `forward_module` is the DDP wrapper when distributed (call it exactly once per step), else `module`.
        `phase` "" keeps the loop's files in the run folder itself; otherwise in RUN/phase.
        """
        s, d = self.settings, self.dist
        module.to(self.device)
        if self.cuda:
            is_3d = any(isinstance(m, torch.nn.Conv3d) for m in module.modules())
            module.to(memory_format=torch.channels_last_3d if is_3d else torch.channels_last)
        forward = D.wrap(module, d)
        params = [p for p in (params if params is not None else module.parameters()) if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=lr or s.lr, weight_decay=s.weight_decay)
        folder = D.phase_dir(self.run_dir, phase, d)
        D.sync_resume(self.run_dir, phase, d)

        def step(rng: np.random.Generator) -> torch.Tensor:
            if d.active:  # each rank its own batch, still a pure function of (seed, step, rank)
                rng = np.random.default_rng([int(rng.integers(2 ** 32)), d.rank])
            return step_fn(forward, rng)

        if isinstance(self.progress, PretrainProgress):
            self.progress.phase = phase or "train"
            self.progress.epoch_steps = epoch_steps
        t0 = time.perf_counter()
        summary = train(folder, module, optimizer, step, steps, s.seed, checkpoint_every=max(1, epoch_steps),
                        progress=self.progress if d.main else None, items_per_step=items_per_step * d.world,
                        scheduler_fn=cosine(steps, warmup=min(50, steps // 10)))
        D.broadcast_state(module, d)
        D.barrier(d)
        summary.update(phase=phase or "train", epoch_steps=epoch_steps, items_per_step=items_per_step * d.world,
                       wall_seconds=round(time.perf_counter() - t0, 1))
        if summary["steps"] > summary["resumed_from"] and summary["seconds"] > 0:
            summary["items_per_s"] = round((summary["steps"] - summary["resumed_from"]) * items_per_step * d.world / summary["seconds"], 2)
        self.summaries[phase or "train"] = summary
        self.log(f"phase {phase or 'train'}: {summary}")
        return summary


def epochs_to_steps(items: int, batch: int, world: int, override: int | None) -> int:
    """Steps per epoch (one pass over `items` sampled items with the global batch), or the user's override."""
    return override if override else max(1, math.ceil(items / max(1, batch * world)))
