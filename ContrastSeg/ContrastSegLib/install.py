"""First use: install the engine's Python requirements into Slicer, with the user's consent.

torch comes through the PyTorch extension's PyTorchUtils (declared in the extension's EXTENSION_DEPENDS),
which picks the build that fits the machine's GPU and driver; pip would fetch a generic one. Everything
else comes with pip, constrained so that pip can never replace what Slicer ships (numpy, SimpleITK, vtk) or
the torch that PyTorchUtils chose: a requirement that would need another version of those fails with pip's
message instead of silently breaking Slicer.

The deciding parts (what is missing, the constraints, the pip command lines) are pure functions of a
`version_of(name)` lookup, so tests check them without Slicer; `InstallLogic.install` does the work.
"""

from __future__ import annotations

import importlib.metadata
import re
import tempfile
from pathlib import Path
from typing import Callable

# The engine's dependencies (pyproject.toml [project].dependencies; a test keeps the two in sync).
TORCH = "torch>=2.2"
REQUIREMENTS = ("monai>=1.3", "numpy>=1.24", "scipy>=1.10", "SimpleITK>=2.2", "scikit-image>=0.21",
                "safetensors>=0.4", "matplotlib>=3.7")
# Packages Slicer itself ships and relies on: never installed, upgraded or downgraded by this extension.
SHIPPED = ("numpy", "SimpleITK", "vtk")

_REQ = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(.*)$")


def installed_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def split_requirement(requirement: str) -> tuple[str, str]:
    """'monai>=1.3' -> ('monai', '>=1.3')."""
    match = _REQ.match(requirement)
    if not match:
        raise ValueError(f"not a requirement: {requirement!r}")
    return match.group(1), match.group(2).strip()


def satisfied(requirement: str, version: str | None) -> bool:
    """Whether an installed `version` (None: not installed) meets `requirement`."""
    if version is None:
        return False
    _, spec = split_requirement(requirement)
    try:
        from packaging.specifiers import SpecifierSet
        from packaging.version import Version

        return Version(version) in SpecifierSet(spec)
    except ImportError:  # packaging ships with Slicer and pip; this fallback only knows ">="
        wanted = spec[2:] if spec.startswith(">=") else "0"
        as_tuple = lambda v: tuple(int(p) for p in re.findall(r"\d+", v)[:3])  # noqa: E731
        return as_tuple(version) >= as_tuple(wanted)
    except Exception:  # noqa: BLE001 - an unparsable local version: trust what is there
        return True


def missing_requirements(version_of: Callable[[str], str | None] = installed_version,
                         requirements=(TORCH, *REQUIREMENTS)) -> list[str]:
    """The requirements not met by the installed packages, in install order (torch first)."""
    return [r for r in requirements if not satisfied(r, version_of(split_requirement(r)[0]))]


def shipped_problems(missing: list[str]) -> list[str]:
    """Missing requirements on packages Slicer ships: pip must not touch them, so the user must be told."""
    shipped = {s.lower() for s in SHIPPED}
    return [r for r in missing if split_requirement(r)[0].lower() in shipped]


def constraints(version_of: Callable[[str], str | None] = installed_version) -> list[str]:
    """Constraint lines pinning Slicer's own packages and the installed torch to their current versions."""
    return [f"{name}=={v}" for name in (*SHIPPED, "torch") if (v := version_of(name))]


def pip_commands(missing: list[str], constraints_file: str | Path) -> list[list[str]]:
    """One `pip install` argument list per missing pip requirement (torch and shipped packages excluded),
    each under the constraints file, so the panel can show which package is being installed."""
    skip = {s.lower() for s in SHIPPED} | {"torch"}
    return [[r, "--constraint", str(constraints_file)] for r in missing if split_requirement(r)[0].lower() not in skip]


def consent_text(missing: list[str]) -> str:
    """The question shown before anything is installed."""
    parts = []
    if any(split_requirement(r)[0] == "torch" for r in missing):
        parts.append("PyTorch (through the PyTorch extension, which picks the build for this computer's GPU)")
    others = [r for r in missing if split_requirement(r)[0] != "torch"]
    if others:
        parts.append(", ".join(others))
    return ("ContrastSeg needs these Python packages, which are not installed in Slicer yet: " + "; ".join(parts)
            + ". Install them now? This downloads a few hundred MB to several GB and can take several minutes.")


class InstallLogic:
    """Checks and installs the requirements; `confirm(text) -> bool` and `on_step(i, n, text)` come from the
    widget (a dialog and a progress dialog), so the logic itself needs no Qt."""

    def __init__(self, version_of: Callable[[str], str | None] = installed_version):
        self.version_of = version_of

    def missing(self) -> list[str]:
        importlib.invalidate_caches()
        return missing_requirements(self.version_of)

    def install(self, confirm: Callable[[str], bool], on_step: Callable[[int, int, str], bool | None] | None = None) -> bool:
        """Install what is missing; False if the user declined, or cancelled: `on_step` returning False (the
        progress dialog's Cancel) stops before the next package. Raises RuntimeError with a readable cause."""
        missing = self.missing()
        if not missing:
            return True
        problems = shipped_problems(missing)
        if problems:
            raise RuntimeError(f"This Slicer ships {', '.join(problems)} in versions too old for ContrastSeg, and "
                               "those must not be replaced; please use a newer Slicer release.")
        if not confirm(consent_text(missing)):
            return False
        step = on_step or (lambda i, n, text: None)
        if step(0, len(missing), "Preparing to install the Python requirements...") is False:
            return False
        import slicer

        torch_missing = any(split_requirement(r)[0] == "torch" for r in missing)
        with tempfile.TemporaryDirectory(prefix="ContrastSeg-install-") as tmp:
            total = len(missing)
            if torch_missing:
                if step(0, total, "Installing PyTorch through the PyTorch extension...") is False:
                    return False
                self._install_torch()
            # written after torch is in, so the constraints pin the torch PyTorchUtils chose
            constraints_file = Path(tmp) / "constraints.txt"
            constraints_file.write_text("\n".join(constraints(self.version_of)) + "\n")
            commands = pip_commands(missing, constraints_file)
            done = int(torch_missing)
            for args in commands:
                if step(done, total, f"Installing {args[0]} ...") is False:
                    return False  # what is installed stays; the next Segment asks for the rest
                slicer.util.pip_install(args)
                done += 1
        step(total, total, "Python requirements installed.")
        importlib.invalidate_caches()
        still = self.missing()
        if still:
            raise RuntimeError(f"After installing, these requirements are still not met: {', '.join(still)}")
        return True

    @staticmethod
    def _install_torch() -> None:
        try:
            import PyTorchUtils
        except ImportError:
            raise RuntimeError("ContrastSeg needs the PyTorch extension: install 'PyTorch' from the Extensions "
                               "Manager, restart Slicer, and try again.") from None
        torch = PyTorchUtils.PyTorchUtilsLogic().installTorch(askConfirmation=False, torchVersionRequirement=TORCH[len("torch"):])
        if torch is None:
            raise RuntimeError("PyTorch could not be installed; see the Python console for pip's message.")


def self_test_ready(test, install: "InstallLogic | None" = None) -> None:
    """The guard both modules' self-tests run in `setUp`: ctest (slicer_add_python_unittest) runs the test_
    methods one by one through unittest, never `runTest`. Missing requirements skip the test (unittest's
    SkipTest); a default model missing where the engine looks (a build tree without it) fails it."""
    from contrastseg.paths import default_model, resources

    missing = (install or InstallLogic()).missing()
    if missing:
        test.skipTest(f"install the Python requirements first (press Segment once): {', '.join(missing)}")
    if not (default_model() / "card.json").exists():
        test.fail(f"the default model is not where the engine looks: {default_model()} (resources: {resources()})")
