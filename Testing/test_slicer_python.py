"""Every module and engine file runs on the Python of the oldest Slicer the README promises: Slicer
5.6 and 5.8 ship Python 3.9, where `X | Y` in an annotation Python evaluates, `match`, zip(strict=) and
dataclass(slots=) fail at import. ContrastSegTraining.py did not load on them.

Two checks: the shared checker (`../shared/tools/slicer_python.py`, which reads the minimum from the README and
parses every file under ContrastSeg/ and ContrastSegTraining/ at that Python), and, where a Python 3.9
interpreter is installed (pyenv's on the project's machines), that interpreter compiling every file itself."""

from __future__ import annotations

import glob
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CHECKER = REPO.parent / "shared" / "tools" / "slicer_python.py"


def minimum_slicer() -> tuple[int, int]:
    found = re.search(r"Slicer\s*(\d+)\.(\d+)\s+or\s+newer", (REPO / "README.md").read_text())
    assert found, "the README states no minimum Slicer version ('Slicer X.Y or newer')"
    return int(found.group(1)), int(found.group(2))


def slicer_files() -> list[Path]:
    return sorted(p for d in ("ContrastSeg", "ContrastSegTraining") for p in (REPO / d).rglob("*.py"))


def python39() -> str | None:
    candidates = sorted(glob.glob(os.path.expanduser("~/.pyenv/versions/3.9*/bin/python3.9")))
    on_path = shutil.which("python3.9")
    if on_path and "/shims/" not in on_path:  # a pyenv shim answers only when 3.9 is selected
        candidates.append(on_path)
    return next((c for c in candidates if os.access(c, os.X_OK)), None)


def test_the_readme_promises_slicer_5_6():
    assert minimum_slicer() == (5, 6)


@pytest.mark.skipif(not CHECKER.exists(), reason=f"the shared checker is not at {CHECKER}")
def test_every_slicer_side_file_passes_the_checker_at_that_slicers_python():
    result = subprocess.run([sys.executable, str(CHECKER), str(REPO)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 violations" in result.stdout


def test_every_slicer_side_file_compiles_with_python_3_9():
    interpreter = python39()
    if interpreter is None:
        pytest.skip("no Python 3.9 interpreter here (pyenv install 3.9, or python3.9 on PATH)")
    script = ("import sys\nbad = []\nfor f in sys.argv[1:]:\n    try:\n        compile(open(f, encoding='utf-8').read(), f, 'exec')\n"
              "    except SyntaxError as e:\n        bad.append(f'{f}:{e.lineno}: {e.msg}')\nprint('\\n'.join(bad))\nsys.exit(1 if bad else 0)\n")
    result = subprocess.run([interpreter, "-c", script, *map(str, slicer_files())], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
