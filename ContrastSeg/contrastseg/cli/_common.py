"""Options shared by several subcommands (device, threads, progress)."""

from __future__ import annotations

import argparse

from ..progress import Progress


def add_runtime_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="where the networks run (default: auto = CUDA if present)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: torch's choice)")
    p.add_argument("--progress", default="bar", choices=["bar", "json", "none"],
                   help="bar: a terminal progress bar; json: one JSON object per line on stdout (for programs)")


def runtime(args: argparse.Namespace, stages: dict[str, float]):
    """(torch device, Progress) for a command; torch is imported here, not when the CLI starts."""
    import torch

    from ..infer import pick_device

    if args.threads:
        torch.set_num_threads(args.threads)
    return pick_device(args.device), Progress(args.progress, stages)
