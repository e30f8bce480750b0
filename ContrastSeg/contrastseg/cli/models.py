"""`contrastseg models list | show | add | set-default | remove`: the local model store."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .. import store


def register(sub) -> None:
    p = sub.add_parser("models", help="the model store: list, show, add, set-default, remove",
                       description="The models `contrastseg segment --model NAME` and the Slicer modules can use: the "
                                   "bundled default plus every model a training run registered.")
    msub = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    ls = msub.add_parser("list", help="list the models")
    ls.add_argument("--json", action="store_true")
    ls.set_defaults(func=run_list)
    s = msub.add_parser("show", help="print a model's card")
    s.add_argument("name")
    s.set_defaults(func=run_show)
    a = msub.add_parser("add", help="register a model folder (card.json + safetensors) under a name")
    a.add_argument("folder", type=Path)
    a.add_argument("--name", required=True)
    a.set_defaults(func=run_add)
    d = msub.add_parser("set-default", help="choose the model used when none is given")
    d.add_argument("name")
    d.set_defaults(func=run_default)
    r = msub.add_parser("remove", help="move a model to the store's trash")
    r.add_argument("name")
    r.set_defaults(func=run_remove)


def _validation(card: dict) -> str:
    val = card.get("validation") or {}
    new, base = (val.get("model") or {}).get("mean_dice"), (val.get("base") or {}).get("mean_dice")
    if new is None:
        return ""
    return f"Dice {new:.3f}" + (f" (was {base:.3f})" if base is not None else "")


def run_list(args: argparse.Namespace) -> int:
    models = store.list_models()
    problem = store.default_problem()
    if problem:
        print(f"contrastseg models list: warning: {problem}", file=sys.stderr)
    for b in store.broken_models():  # reported and skipped: one broken folder hides no other model
        print(f"contrastseg models list: warning: skipped the broken model folder {b['path']}: {b['problem']}",
              file=sys.stderr)
    if args.json:
        print(json.dumps([{k: v for k, v in m.items()} for m in models], indent=2))
        return 0
    print(f"{'':2}{'name':<28}{'organs':>7}  {'created':<18}validation")
    for m in models:
        card = m["card"]
        print(f"{'*' if m['default'] else ' ':2}{m['name']:<28}{len(card.get('organs', [])):>7}  "
              f"{str(card.get('created', 'bundled' if m['bundled'] else ''))[:16]:<18}{_validation(card)}")
    return 0


def run_show(args: argparse.Namespace) -> int:
    m = store.show(args.name)
    print(json.dumps({"name": m["name"], "path": m["path"], "default": m["default"], "card": m["card"]}, indent=2))
    return 0


def run_add(args: argparse.Namespace) -> int:
    from ..models.files import load_model

    from ..errors import ContrastSegError

    store.check_name(args.name)
    if not args.folder.is_dir():
        raise ContrastSegError(f"{args.folder} is not a folder; `models add` takes a model folder (card.json + weights)")
    load_model(args.folder)  # every check of a load: card, SHA-256s, names, shapes, finite values, organs
    print(f"registered {store.register(args.folder, args.name)}")
    return 0


def run_default(args: argparse.Namespace) -> int:
    store.set_default(args.name)
    print(f"default model: {args.name}")
    return 0


def run_remove(args: argparse.Namespace) -> int:
    print(f"moved {args.name} to {store.remove(args.name)}")
    return 0
