"""Where the shared real CT data lives for tests, and a skip marker with a clear reason when it is absent.

The data is read in place from ../shared/data beside the repository (the IRCAD licence forbids copies).
"""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
TS = DATA / "totalsegmentator-examples"
IRCAD = DATA / "ircad-3d-01-patient1"
DCMQI = DATA / "dcmqi-ct-3slice"

needs_data = pytest.mark.skipif(not TS.exists(), reason=f"real CT data not found at {DATA} (../shared/data beside the repo)")
needs_ircad = pytest.mark.skipif(not IRCAD.exists(), reason=f"IRCAD patient 1 not found at {IRCAD}")


def needs_default_model():
    from contrastseg.paths import default_model

    return pytest.mark.skipif(not (default_model() / "card.json").exists(),
                              reason=f"the default model is missing at {default_model()}")


@pytest.fixture(scope="module")
def model():
    """The bundled default model on 2 CPU threads (as CI runs it)."""
    import torch

    from contrastseg.models.files import load_model
    from contrastseg.paths import default_model

    torch.set_num_threads(2)
    return load_model(default_model())


@pytest.fixture(scope="module")
def small_ct():
    """example_ct_sm: the smallest real abdominal CT (122x101x30 at 3 mm)."""
    from contrastseg.io import read_image

    return read_image(TS / "example_ct_sm.nii.gz")
