"""The CLI starts fast: building the parser imports no torch/MONAI (Slicer calls it for quick actions too)."""

import subprocess
import sys


def test_parser_imports_no_heavy_packages():
    code = ("import sys; from contrastseg.cli import build_parser; build_parser(); "
            "heavy = [m for m in ('torch', 'monai', 'SimpleITK', 'skimage', 'matplotlib') if m in sys.modules]; "
            "print(','.join(heavy))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "", f"CLI start-up imports {out}; import them inside the command's run()"


def test_every_command_has_help():
    from contrastseg.cli import build_parser

    parser = build_parser()
    commands = parser._subparsers._group_actions[0].choices
    assert {"segment", "evaluate", "train-coarse", "finetune"} <= set(commands)
    for name, sub in commands.items():
        assert sub.format_help().strip(), name
