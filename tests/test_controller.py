import json

import pytest
import torch

from dsanchor.controller import ControllerConfig, GranularityController
from dsanchor.errors import ConfigError, DataError


@pytest.mark.parametrize("dist", ["gaussian", "beta"])
def test_round_trip_and_range(tmp_path, dist):
    torch.manual_seed(0)
    ctrl = GranularityController(ControllerConfig(state_dim=7, hidden=16, distribution=dist))
    ctrl.set_normalization(torch.randn(7), torch.rand(7) + 0.5)
    x = torch.randn(32, 7) * 5
    g = ctrl(x)
    assert g.shape == (32,) and (g >= 0).all() and (g <= 1).all()
    ctrl.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "controller_config.json").read_text())["distribution"] == dist
    loaded = GranularityController.from_pretrained(tmp_path)
    assert torch.equal(loaded(x), g.detach())
    d = ctrl.distribution(x)
    assert d.sample().shape == (32,)


def test_gaussian_mean_is_clipped_rescaled_head():
    ctrl = GranularityController(ControllerConfig(state_dim=3, hidden=4))
    with torch.no_grad():
        ctrl.head.weight.zero_()
        ctrl.head.bias.fill_(3.0)  # far outside [-1, 1]
    assert torch.allclose(ctrl(torch.zeros(2, 3)), torch.ones(2))
    with torch.no_grad():
        ctrl.head.bias.fill_(0.0)
    assert torch.allclose(ctrl(torch.zeros(2, 3)), torch.full((2,), 0.5))


def test_errors(tmp_path):
    with pytest.raises(ConfigError):
        GranularityController(ControllerConfig(state_dim=0))
    ctrl = GranularityController(ControllerConfig(state_dim=3))
    with pytest.raises(ConfigError, match=r"\(B, 3\)"):
        ctrl(torch.zeros(2, 4))
    with pytest.raises(DataError, match="not a saved controller"):
        GranularityController.from_pretrained(tmp_path)
