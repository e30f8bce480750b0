"""Multi-GPU / multi-node pretraining through `torchrun` (torch.distributed, DDP).

`torchrun --nproc_per_node G [--nnodes N ...] -m contrastseg.cli pretrain ...` sets RANK, WORLD_SIZE and
LOCAL_RANK; `setup` then joins the process group (NCCL on GPUs, gloo on CPU). Each rank draws its own
batches; DDP averages gradients. Contrastive losses see every rank's embeddings through `gather_with_grad`,
so the negatives of an anchor come from the global batch and the gradient flows back to the rank that
computed each embedding.

Gradient bookkeeping: every rank computes the same global loss L on the gathered embeddings. The backward of
the gather sums the gradients of all ranks' (identical) losses for the local slice, i.e. W dL/dz_local, and
DDP divides by W when it averages: the result is exactly the single-process gradient of L over the global
batch.

Only rank 0 writes the run folder; other ranks keep their checkpoints under RUN/.ranks/R (what
`train/loop.py` writes), and start from rank 0's checkpoint when resuming, so all ranks resume in step.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist

from ..train.checkpoint import CHECKPOINT, STATE


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1


def setup(device: torch.device) -> Dist:
    """Join the process group when started by torchrun (WORLD_SIZE > 1); a no-op for a single process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist(device=device)
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        torch.cuda.set_device(local)
        device = torch.device("cuda", local)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Dist(rank, world, local, device)


def teardown(d: Dist) -> None:
    if d.active and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


class _GatherWithGrad(torch.autograd.Function):
    """all_gather whose backward sums the gradient over ranks and returns this rank's slice.

    Written out (rather than torch.distributed.nn's) because it needs only all_reduce, which every backend
    has (gloo lacks reduce_scatter).
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        x = x.contiguous()
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, x)
        ctx.n, ctx.rank = x.shape[0], dist.get_rank()
        return torch.cat(parts, 0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad)
        return grad[ctx.rank * ctx.n:(ctx.rank + 1) * ctx.n]


class _AllReduceWithGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        x = x.clone().contiguous()
        dist.all_reduce(x)
        return x

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad)
        return grad


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Concatenate `x` (same shape on every rank) over ranks, rank order, differentiably."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x
    return _GatherWithGrad.apply(x)


def gather(x: torch.Tensor) -> torch.Tensor:
    """Concatenate over ranks without gradient (labels, intensities)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x
    parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts, 0)


def all_reduce_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Sum over ranks, differentiably (voxel-level Siamese learning's per-class sums)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x
    return _AllReduceWithGrad.apply(x)


def all_reduce(x: torch.Tensor) -> torch.Tensor:
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x
    x = x.clone()
    dist.all_reduce(x)
    return x


def wrap(module: torch.nn.Module, d: Dist) -> torch.nn.Module:
    """DDP around `module` when distributed; the module itself otherwise."""
    if not d.active:
        return module
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(module, device_ids=[d.local_rank] if d.device.type == "cuda" else None)


def broadcast_state(module: torch.nn.Module, d: Dist) -> None:
    """Copy rank 0's parameters and buffers to every rank (BatchNorm statistics drift apart per rank)."""
    if d.active:
        for t in module.state_dict().values():
            dist.broadcast(t, 0)


def phase_dir(run_dir: Path, phase: str, d: Dist) -> Path:
    """Where this rank's train() loop keeps its checkpoint, history and log for `phase`."""
    base = run_dir if d.main else run_dir / ".ranks" / str(d.rank)
    return base / phase if phase else base


def sync_resume(run_dir: Path, phase: str, d: Dist) -> None:
    """Before a phase starts, give every rank rank 0's checkpoint, so that all resume from the same step."""
    if not d.active:
        return
    dist.barrier()
    if not d.main:
        src, dst = phase_dir(run_dir, phase, Dist()), phase_dir(run_dir, phase, d)
        dst.mkdir(parents=True, exist_ok=True)
        for name in (CHECKPOINT, STATE):
            if (src / name).exists():
                shutil.copyfile(src / name, dst / name)
            elif (dst / name).exists():
                (dst / name).unlink()
    dist.barrier()


def barrier(d: Dist) -> None:
    if d.active:
        dist.barrier()
