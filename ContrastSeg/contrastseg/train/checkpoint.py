"""Checkpoints as safetensors (+ JSON for counters and optimizer hyper-parameters): resumable, never pickled.

A checkpoint holds the network, the optimizer's tensors and the step counter. Both files go through
`outputs.atomic_path` (temporary name, fsync, read back, rename), so a run killed mid-write, or a full disk,
leaves the previous complete checkpoint; a write error is one sentence.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors.torch import load_file

from ..errors import ContrastSegError
from ..outputs import atomic_path, write_safetensors

CHECKPOINT = "checkpoint.safetensors"
STATE = "checkpoint.json"


def save_checkpoint(run_dir: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, step: int, extra: dict | None = None) -> None:
    tensors = {f"model.{k}": v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    opt = optimizer.state_dict()
    for idx, state in opt["state"].items():
        for name, value in state.items():
            t = value if torch.is_tensor(value) else torch.tensor(value)
            tensors[f"optim.{idx}.{name}"] = t.detach().contiguous().cpu()
    meta = {"step": step, "param_groups": opt["param_groups"], **(extra or {})}
    # the JSON names the step of the tensors beside it: both are written and read back before either is
    # renamed; then the tensors take their name first, the JSON second
    with atomic_path(run_dir / STATE) as tmp_json:
        with open(tmp_json, "w") as f:
            json.dump(meta, f, indent=2)
            f.flush()
            os.fsync(f.fileno())
        write_safetensors(tensors, run_dir / CHECKPOINT)


def load_checkpoint(run_dir: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None = None) -> dict | None:
    """Restore model (and optimizer) from `run_dir`; returns the checkpoint's JSON, or None if there is none."""
    if not (run_dir / CHECKPOINT).exists() or not (run_dir / STATE).exists():
        return None
    try:
        tensors = load_file(str(run_dir / CHECKPOINT))
        meta = json.loads((run_dir / STATE).read_text())
        model.load_state_dict({k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")})
        if optimizer is not None:
            state: dict = {}
            for k, v in tensors.items():
                if k.startswith("optim."):
                    _, idx, name = k.split(".", 2)
                    state.setdefault(int(idx), {})[name] = v
            optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
    except Exception as err:  # safetensors, JSON and torch each raise their own kinds for a damaged file
        raise ContrastSegError(
            f"the checkpoint in {run_dir} ({CHECKPOINT} + {STATE}) is damaged and cannot be resumed from "
            f"({type(err).__name__}: {str(err).splitlines()[0][:120] if str(err) else 'unreadable'}); to restart this "
            f"step from scratch, delete those two files and start the run again") from None
    return meta
