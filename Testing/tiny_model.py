"""A tiny model with random weights, for tests of the training machinery (not of segmentation quality).

Fine-tuning needs a base model (its coarse network is kept); the bundled default model may not exist yet
when these tests run, and a tiny one keeps a few CPU training steps to a fraction of a second each.
"""

from __future__ import annotations

from pathlib import Path

import pytest

TINY_REFINED = {"depth": 10, "widths": [8, 16, 32, 64], "stem": "stride2", "aspp_width": 16, "skip": True}


def build_tiny_model(folder: Path, name: str = "random", seed: int = 0, background: bool = True,
                     legacy: bool = False) -> Path:
    """Write a random model; `background` biases the coarse head so it finds no organ (segmenting then skips
    the refined stage, which keeps validation of a tiny run to seconds on a CPU). It takes the inputs the
    shipped model takes (the soft-top intensities, image and lateral channels); `legacy` writes a card of the
    first format instead (percentile window, the image alone), as models trained before v0.3 have."""
    import torch

    from contrastseg.models.files import build_coarse, build_refined, save_stage, write_card
    from contrastseg.train.settings import RefinedSettings

    torch.manual_seed(seed)
    folder.mkdir(parents=True, exist_ok=True)
    coarse = {"architecture": "CoarseUNet", "channels": [8, 16, 32, 64], "spacing": [3, 3, 3]}
    card = {"name": name, "organs": list(range(1, 14))}
    if not legacy:
        from contrastseg.train.coarse import preprocessing_record

        coarse["inputs"] = ["image", "lateral"]
        card["preprocessing"] = preprocessing_record("soft-top")
    refined = dict(RefinedSettings().card(), **TINY_REFINED)
    coarse_net = build_coarse(coarse)
    if background:
        with torch.no_grad():
            coarse_net.head.bias[0] = 20.0
    coarse["weights"] = save_stage(folder, "coarse", coarse_net)
    refined["weights"] = save_stage(folder, "refined", build_refined(refined))
    write_card(folder, dict(card, coarse=coarse, refined=refined))
    return folder


@pytest.fixture(autouse=True)
def home(tmp_path, monkeypatch):
    """A private CONTRASTSEG_HOME (store, runs, cache) per test; autouse in the modules that import it."""
    monkeypatch.setenv("CONTRASTSEG_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


@pytest.fixture
def tiny(tmp_path):
    """A tiny random model folder (see build_tiny_model)."""
    return build_tiny_model(tmp_path / "tiny")
