"""The training loop every run uses: steps, checkpoints, resume, NaN guard, log, history and progress.

Batches come from `batch_fn(rng)` with a generator seeded by (seed, step), so a resumed run draws exactly
the batches the uninterrupted run would have drawn from that step on.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ..errors import ContrastSegError
from ..progress import Progress
from .checkpoint import load_checkpoint, save_checkpoint

HISTORY = "history.jsonl"
LOG = "log.txt"


def log_line(run_dir: Path, text: str) -> None:
    """A line of the log for people; dropped if it cannot be written (a full disk is reported, in one sentence,
    by the history and checkpoint writes that matter)."""
    try:
        with open(run_dir / LOG, "a") as f:
            f.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {text}\n")
    except OSError:
        pass


def _append_history(run_dir: Path, record: dict) -> None:
    """One step's line of history.jsonl; a full disk is one sentence (the checkpoint on disk stays whole)."""
    from ..outputs import WriteError, os_error_message

    try:
        with open(run_dir / HISTORY, "a") as f:
            f.write(json.dumps(record) + "\n")
    except OSError as err:
        raise WriteError(os_error_message(err, run_dir / HISTORY)) from None


def train(run_dir: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
          step_fn: Callable[[np.random.Generator], torch.Tensor], steps: int, seed: int = 0,
          checkpoint_every: int = 50, progress: Progress | None = None, items_per_step: int = 1,
          scheduler_fn: Callable[[int], float] | None = None) -> dict:
    """Run `steps` optimisation steps (resuming from `run_dir`'s checkpoint); returns a summary.

    `step_fn(rng)` builds a batch, runs the model and returns the scalar loss; this loop does backward,
    the optimizer step, the learning-rate schedule (`scheduler_fn(step)` multiplies the base lr), logging
    and checkpoints. A non-finite loss stops the run with a clear error and keeps the last good checkpoint.
    """
    from ..outputs import WriteError, os_error_message

    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise WriteError(os_error_message(err, run_dir)) from None
    meta = load_checkpoint(run_dir, model, optimizer)
    start = meta["step"] if meta else 0
    _truncate_history(run_dir, start)  # the steps after the checkpoint are trained again: no duplicate lines
    base_lrs = [g.get("initial_lr", g["lr"]) for g in optimizer.param_groups]
    for g, lr in zip(optimizer.param_groups, base_lrs):
        g["initial_lr"] = lr
    prog = progress or Progress("none")
    prog.begin("train", f"resuming at step {start}" if start else "starting")
    log_line(run_dir, f"{'resume' if start else 'start'} at step {start} of {steps}")
    t0 = time.perf_counter()
    losses = []
    saved = start  # the step of the checkpoint on disk: what a resume after a failure starts from
    model.train()
    for step in range(start, steps):
        if scheduler_fn is not None:
            for g, lr in zip(optimizer.param_groups, base_lrs):
                g["lr"] = lr * scheduler_fn(step)
        rng = np.random.default_rng([seed, step])
        torch.manual_seed(seed * 1_000_003 + step)
        loss = step_fn(rng)
        value = float(loss.detach())
        if not math.isfinite(value):
            msg = f"training stopped: the loss became {value} at step {step + 1}; the last good checkpoint (step {saved}) is kept in {run_dir}"
            log_line(run_dir, msg)
            raise ContrastSegError(msg)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(value)
        done = step + 1
        rate = (done - start) * items_per_step / max(1e-9, time.perf_counter() - t0)
        record = {"step": done, "loss": round(value, 6), "lr": optimizer.param_groups[0]["lr"],
                  "items_per_s": round(rate, 2), "time": round(time.perf_counter() - t0, 2)}
        _append_history(run_dir, record)
        prog.update((done) / steps, f"step {done}/{steps} loss {value:.4f}", force=done == steps,
                    step=done, loss=round(value, 6), lr=record["lr"], items_per_s=record["items_per_s"])
        if done % checkpoint_every == 0 or done == steps:
            if not all(bool(torch.isfinite(p).all()) for p in model.parameters()):  # never save broken weights
                msg = f"training stopped: the weights became non-finite at step {done}; the last good checkpoint (step {saved}) is kept in {run_dir}"
                log_line(run_dir, msg)
                raise ContrastSegError(msg)
            save_checkpoint(run_dir, model, optimizer, done)
            saved = done
            log_line(run_dir, f"step {done} loss {value:.4f} ({rate:.1f} items/s) checkpoint saved")
    model.eval()
    return {"steps": steps, "resumed_from": start, "final_loss": float(np.mean(losses[-20:])) if losses else None,
            "seconds": round(time.perf_counter() - t0, 1)}


def _truncate_history(run_dir: Path, start: int) -> None:
    """Keep the history lines of steps 1..start (what the checkpoint holds); later ones are redone."""
    path = run_dir / HISTORY
    if not path.exists():
        return
    kept = [line for line in path.read_text().splitlines() if line.strip() and _step_of(line) <= start]
    tmp = path.with_name(f".{HISTORY}.tmp")
    try:
        tmp.write_text("".join(f"{line}\n" for line in kept))
        tmp.replace(path)
    except OSError as err:
        from ..outputs import WriteError, os_error_message

        tmp.unlink(missing_ok=True)
        raise WriteError(os_error_message(err, path)) from None


def _step_of(line: str) -> int:
    try:
        return int(json.loads(line).get("step", 0))
    except (json.JSONDecodeError, AttributeError, TypeError, ValueError):
        return 1 << 62  # a torn last line (killed mid-write) is dropped


def read_history(run_dir: Path) -> list[dict]:
    path = run_dir / HISTORY
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def cosine(total: int, warmup: int = 0) -> Callable[[int], float]:
    """Learning-rate multiplier: linear warm-up, then cosine decay to 5% of the base rate."""
    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        t = (step - warmup) / max(1, total - warmup)
        return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(1.0, t)))
    return f
