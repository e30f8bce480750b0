"""`contrastseg serve --stdio`: the warm engine worker (JSON lines in and out; protocol in contrastseg.serve)."""

from __future__ import annotations

import argparse


def register(sub) -> None:
    p = sub.add_parser("serve", help="the warm worker: JSON lines on stdin/stdout (open, segment, refine, cancel, close)",
                       description="Keep the model and the open CTs in memory and answer requests as JSON lines "
                                   "(protocol contrastseg-serve/1, docs/worker.md).")
    p.add_argument("--stdio", action="store_true", required=True, help="talk over stdin and stdout (the only transport)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--threads", type=int, default=None)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..serve import serve

    return serve(device=args.device, threads=args.threads)
