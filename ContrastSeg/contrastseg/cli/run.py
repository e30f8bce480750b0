"""`contrastseg run plan | start | list | status | cancel`: training runs from the local dataset to a registered model.

`plan` checks the request (enough labelled cases, the base model, GPU memory) and freezes the data in a run
folder; `start` executes the plan (pretrain -> finetune -> validate -> register) and, run again, resumes it.
The ContrastSegTraining Slicer module makes the plan the same way and launches `start` as a detached process.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import sys
import time
from pathlib import Path

from ..progress import Progress


def register(sub) -> None:
    from ..runs.plan import RunRequest  # torch-free: the CLI still starts fast

    p = sub.add_parser("run", help="training runs: plan, start (or resume), list, status, cancel",
                       description="Train a new model on the local dataset and register it in the model store.")
    rsub = p.add_subparsers(dest="action", metavar="ACTION", required=True)

    pl = rsub.add_parser("plan", help="check a training request and write its run folder (then `run start`)")
    pl.add_argument("--dataset", type=Path, default=None, help="dataset folder (default: $CONTRASTSEG_HOME/dataset)")
    pl.add_argument("--run", type=Path, default=None, help="run folder (default: $CONTRASTSEG_HOME/runs/NAME)")
    pl.add_argument("--name", default=None, help="name of the run and of the model it registers (default: stages + time)")
    pl.add_argument("--stages", default="coarse,refined",
                    help="what learns, comma-separated: coarse, refined, pretrain; finetune = coarse,refined "
                         "(default: coarse,refined; e.g. pretrain,finetune)")
    pl.add_argument("--strategy", default=None, help="pretraining strategy (with --stages pretrain,finetune)")
    pl.add_argument("--base", default=None, help="model to start from: store name or folder (default: the store's default)")
    pl.add_argument("--steps", type=int, default=RunRequest.steps, help="refined network's fine-tuning steps")
    pl.add_argument("--batch", type=int, default=RunRequest.batch, help="refined network's batch (organ patches)")
    pl.add_argument("--coarse-steps", type=int, default=RunRequest.coarse_steps, help="coarse U-Net's fine-tuning steps")
    pl.add_argument("--pretrain-steps", type=int, default=RunRequest.pretrain_steps)
    pl.add_argument("--pretrain-batch", type=int, default=RunRequest.pretrain_batch)
    pl.add_argument("--finetune-args", default="", help="more `contrastseg finetune` options (refined stage), quoted, e.g. \"--lr 1e-4\"")
    pl.add_argument("--coarse-args", default="", help="more `contrastseg train-coarse` options (coarse stage), quoted")
    pl.add_argument("--pretrain-args", default="", help="more `contrastseg pretrain` options, quoted")
    pl.add_argument("--seed", type=int, default=0)
    pl.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    pl.add_argument("--threads", type=int, default=None)
    pl.add_argument("--start", action="store_true", help="start the run right away in this terminal")
    pl.add_argument("--progress", default="bar", choices=["bar", "json", "none"])
    pl.set_defaults(func=run_plan)

    st = rsub.add_parser("start", help="execute a planned run, or resume an interrupted one")
    st.add_argument("run", help="run name (in $CONTRASTSEG_HOME/runs) or folder path")
    st.add_argument("--progress", default="bar", choices=["bar", "json", "none"])
    st.set_defaults(func=run_start)

    ls = rsub.add_parser("list", help="list the runs and their status")
    ls.add_argument("--json", action="store_true")
    ls.set_defaults(func=run_list)

    s = rsub.add_parser("status", help="one run's status")
    s.add_argument("run", help="run name or folder path")
    s.set_defaults(func=run_status_cmd)

    c = rsub.add_parser("cancel", help="stop a running run (it can be resumed with `run start`)")
    c.add_argument("run", help="run name or folder path")
    c.set_defaults(func=run_cancel)

    g = rsub.add_parser("gpu-check", help="will the refined network's training batch fit in GPU memory? (JSON)",
                        description="The GPU memory check of `run plan`, alone: Slicer's training panel asks it "
                                    "through this command, so its own process never imports torch.")
    g.add_argument("--base", default=None, help="model to start from (default: the store's default)")
    g.add_argument("--batch", type=int, default=RunRequest.batch)
    g.add_argument("--device", default="auto", choices=["auto", "cuda"])
    g.add_argument("--finetune-args", default="", help="more `contrastseg finetune` options, quoted")
    g.set_defaults(func=run_gpu_check)


def run_gpu_check(args: argparse.Namespace) -> int:
    from .. import store
    from ..runs.base import read_card
    from ..runs.plan import gpu_problem

    error, warning, batch = gpu_problem(args.device, read_card(store.resolve(args.base)),
                                        _split(args.finetune_args, "--finetune-args"), args.batch)
    print(json.dumps({"error": error, "warning": warning, "suggested_batch": batch}))
    return 0


def _split(text: str, option: str) -> list[str]:
    """Options given as one quoted string, split as a shell would; an unclosed quote is one sentence."""
    from ..errors import ContrastSegError

    try:
        return shlex.split(text)
    except ValueError as err:
        raise ContrastSegError(f"{option} {text!r} cannot be read as command-line options ({err}); "
                               "check its quotes") from None


def _run_dir(run) -> Path:
    """A run folder from a run name or a folder path, by the rule model names follow (`store.is_path`): a bare
    name is a run in $CONTRASTSEG_HOME/runs, never a folder of that name in the current directory."""
    from ..runs.plan import runs_root
    from ..store import is_path

    return Path(run) if is_path(run) else runs_root() / str(run)


def run_plan(args: argparse.Namespace) -> int:
    from ..dataset_edit import default_dataset
    from ..runs.plan import RunRequest, make_plan

    req = RunRequest(dataset=args.dataset or default_dataset(), stages=tuple(s.strip() for s in args.stages.split(",")),
                     strategy=args.strategy, base=args.base, steps=args.steps, batch=args.batch,
                     coarse_steps=args.coarse_steps, pretrain_steps=args.pretrain_steps,
                     pretrain_batch=args.pretrain_batch, device=args.device, threads=args.threads, name=args.name,
                     seed=args.seed, finetune_args=_split(args.finetune_args, "--finetune-args"),
                     coarse_args=_split(args.coarse_args, "--coarse-args"),
                     pretrain_args=_split(args.pretrain_args, "--pretrain-args"))
    run_dir, plan = make_plan(req, args.run)
    for w in plan["warnings"]:
        print(f"warning: {w}", file=sys.stderr)
    if args.progress == "json":
        print(json.dumps({"event": "output", "kind": "run", "path": str(run_dir)}), flush=True)
    else:
        n = {k: len(v) for k, v in plan["data"].items()}
        print(f"planned {plan['name']} in {run_dir}: {', '.join(f'{v} {k}' for k, v in n.items())} case(s); "
              f"steps {' -> '.join(s['name'] for s in plan['steps'])}")
        print(plan.get("validation_rule", ""))
    if args.start:
        args.run = run_dir
        return run_start(args)
    print(f"start it with: contrastseg run start {run_dir}", file=sys.stderr)
    return 0


def run_start(args: argparse.Namespace) -> int:
    from ..runs.execute import Cancelled, execute

    try:
        state = execute(_run_dir(args.run), Progress(args.progress))
    except Cancelled:
        print(f"contrastseg run: cancelled; resume with `contrastseg run start {args.run}`", file=sys.stderr)
        return 130
    if args.progress != "json":
        print(f"\nregistered model '{state.get('model')}'; {_summary(state.get('validation'))}")
        _print_table(_run_dir(args.run))
    return 0


def _summary(val: dict | None) -> str:
    if not val or not val.get("model"):
        return (val or {}).get("note") or "no labelled case was held out for validation"
    return (f"mean Dice on {len(val['entries'])} held-out case(s): {val['model']['mean_dice']} "
            f"(the base model: {val['base']['mean_dice']})")


def _print_table(run_dir: Path) -> None:
    from ..runs.validate import organ_table

    try:
        val = json.loads((run_dir / "validation.json").read_text())
    except (OSError, json.JSONDecodeError):
        return
    rows = organ_table(val)
    if not rows:
        return
    fmt = lambda v: "   -" if v is None else f"{v:.3f}"  # noqa: E731
    print(f"\n{'case':<20}{'organ':<22}{'before':>8}{'after':>8}  what")
    for r in rows:
        print(f"{r['case']:<20}{r['organ']:<22}{fmt(r['before']):>8}{fmt(r['after']):>8}  {r['kind']}")


def run_list(args: argparse.Namespace) -> int:
    from ..runs.plan import list_runs

    runs = list_runs()
    if args.json:
        print(json.dumps(runs, indent=2))
        return 0
    print(f"{'run':<36}{'status':<13}{'progress':>9}  model")
    for r in runs:
        print(f"{r['name']:<36}{r['status']:<13}{100 * (r['fraction'] or 0):8.0f}%  {r['model'] or ''}")
    return 0


def run_status_cmd(args: argparse.Namespace) -> int:
    from ..runs.plan import run_status

    print(json.dumps(run_status(_run_dir(args.run)), indent=2))
    return 0


def run_cancel(args: argparse.Namespace) -> int:
    from ..errors import ContrastSegError
    from ..runs.plan import run_status

    status = run_status(_run_dir(args.run))
    if status["status"] != "running":
        raise ContrastSegError(f"run {status['name']} is not running (it is {status['status']})")
    os.kill(int(status["pid"]), signal.SIGTERM)
    for _ in range(150):
        if run_status(_run_dir(args.run))["status"] != "running":
            break
        time.sleep(0.1)
    print(f"run {status['name']}: {run_status(_run_dir(args.run))['status']}")
    return 0
