"""Where the shipped files are: the default model and the sample CT, whether installed by pip or run from a
source checkout (Slicer's "Additional module paths" points at the checkout)."""

from __future__ import annotations

import os
from pathlib import Path


def resources() -> Path:
    """The Resources folder: $CONTRASTSEG_RESOURCES, the installed package data, or the source tree's."""
    env = os.environ.get("CONTRASTSEG_RESOURCES")
    if env:
        return Path(env)
    try:
        from importlib.resources import files

        installed = Path(str(files("contrastseg.resources")))
        if (installed / "Models").exists():
            return installed
    except ModuleNotFoundError:
        pass
    return Path(__file__).resolve().parents[2] / "Resources"


def default_model() -> Path:
    return resources() / "Models" / "default"


def sample_ct() -> Path:
    return resources() / "SampleData" / "contrastseg-sample-ct.nii.gz"


def home() -> Path:
    """$CONTRASTSEG_HOME (default ~/.contrastseg): the store, runs, dataset and caches. Here, not in store.py,
    so the path guards can ask for it without importing the store (which imports them)."""
    return Path(os.environ.get("CONTRASTSEG_HOME", Path.home() / ".contrastseg"))
