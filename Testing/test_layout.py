"""The layout's rules (docs/development.md), checked on the source: the engine never imports Slicer, VTK, Qt or
trame (they are the Slicer modules' and the web app's; the engine runs on clusters and in CI without them),
and no engine file is over 400 lines."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ENGINE = Path(__file__).resolve().parents[1] / "ContrastSeg" / "contrastseg"
FOREIGN = ("slicer", "vtk", "vtkmodules", "qt", "ctk", "trame", "trame_slicer", "trame_server", "mrml")
FILES = sorted(ENGINE.rglob("*.py"))


def _imports(path: Path) -> list[str]:
    names = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.append(node.module)
    return names


def test_the_engine_has_files():
    assert len(FILES) > 50


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(ENGINE)))
def test_an_engine_file_imports_no_slicer_vtk_qt_or_trame(path):
    foreign = [n for n in _imports(path) if n.split(".")[0].lower() in FOREIGN]
    assert not foreign, f"{path.relative_to(ENGINE)} imports {foreign}: that belongs in a Slicer module or contrastseg_web"


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(ENGINE)))
def test_an_engine_file_is_at_most_400_lines(path):
    assert len(path.read_text(encoding="utf-8").splitlines()) <= 400
