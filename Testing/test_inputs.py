"""What a model's card says its networks take (inputs.py): old cards keep working, new inputs start at zero."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from realdata import needs_data, small_ct  # noqa: F401  (fixture)
from tiny_model import build_tiny_model, home  # noqa: F401  (fixture)

from contrastseg.infer import segment
from contrastseg.inputs import InputSpec, coarse_input
from contrastseg.models.files import load_model
from contrastseg.preprocess import prepare


@needs_data
@pytest.mark.parametrize("legacy", [True, False], ids=["first-format card", "soft-top + lateral card"])
def test_both_card_formats_segment_a_real_ct(tmp_path, small_ct, legacy):  # noqa: F811
    model = load_model(build_tiny_model(tmp_path / "m", legacy=legacy, background=False))
    spec = InputSpec.of(model.card)
    assert spec == (InputSpec() if legacy else InputSpec("soft-top", ("image", "lateral")))
    low = prepare(small_ct, (3.0, 3.0, 3.0), spec.intensity)
    x = coarse_input(low.array, 3.0, spec)
    assert x.shape[0] == len(spec.coarse_inputs) == model.coarse.encoders[0].conv.unit0.conv.in_channels
    seg = segment(small_ct, model, refined=False, device=torch.device("cpu"))
    assert seg.labels.GetSize() == small_ct.GetSize()


@needs_data
def test_a_network_given_the_lateral_channel_starts_as_it_was(tmp_path, small_ct):  # noqa: F811
    """start_from_model: the old network's weights, the new input's at zero: the same answer whatever the
    lateral channel holds; it is refused for inputs that do not begin with the old ones."""
    from contrastseg.errors import ContrastSegError
    from contrastseg.train.coarse import start_from_model

    old_dir = build_tiny_model(tmp_path / "old", legacy=True, background=False)
    old = load_model(old_dir, stages=("coarse",)).coarse.eval()
    new = start_from_model(old_dir, ("image", "lateral")).eval()
    image = prepare(small_ct, (3.0, 3.0, 3.0)).array[:24, :48, :48]
    lateral = np.random.default_rng(0).normal(size=image.shape).astype(np.float32)
    with torch.no_grad():
        a = old(torch.from_numpy(image)[None, None])
        b = new(torch.from_numpy(np.stack([image, lateral]))[None])
    torch.testing.assert_close(a, b)
    with pytest.raises(ContrastSegError):
        start_from_model(build_tiny_model(tmp_path / "new"), ("image",))


def test_lateral_channel_is_patient_right_positive():
    """A body centred at x = 20 of 60 voxels: the lateral channel is 0 there, + to larger x (patient right in
    the canonical grid), in units of 10 cm."""
    from contrastseg.inputs import body_centre_x, lateral_channel

    body = np.zeros((4, 30, 60), bool)
    body[:, 5:25, 10:31] = True
    centre = body_centre_x(body)
    assert centre == pytest.approx(20.0)
    lat = lateral_channel(body.shape, centre, 3.0)
    assert lat[0, 0, 20] == 0 and lat[0, 0, 50] == pytest.approx(0.9) and lat[0, 0, 0] == pytest.approx(-0.6)
