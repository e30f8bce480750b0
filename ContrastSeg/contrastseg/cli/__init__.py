"""The `contrastseg` command. Each module of this package adds one subcommand through `register(subparsers)`.

User-fixable problems (ContrastSegError) print one sentence and exit 2; with `--progress json` the same
sentence also goes out as an `{"event": "error"}` line for the Slicer modules.
"""

from __future__ import annotations

import argparse
import importlib
import json
import pkgutil
import sys

from .. import __version__
from ..errors import ContrastSegError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="contrastseg", description="Abdominal organ segmentation of CT with contrastively pretrained models.")
    parser.add_argument("--version", action="version", version=f"contrastseg {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if not info.name.startswith("_"):
            importlib.import_module(f"{__name__}.{info.name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 1
    try:
        return int(args.func(args) or 0)
    except ContrastSegError as err:
        if getattr(args, "progress", None) == "json":
            print(json.dumps({"event": "error", "message": str(err)}), flush=True)
        print(f"contrastseg {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"contrastseg {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
