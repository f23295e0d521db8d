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


def _query_states(n_types: int = 3, per: int = 40, seed: int = 0):
    """Query states [text(6) | image(5) | direction] from n_types text and n_types image clusters."""
    from dsanchor.state import query_states

    gen = torch.Generator().manual_seed(seed)
    t_centers, i_centers = torch.randn(n_types, 6, generator=gen), torch.randn(n_types, 5, generator=gen)
    t_type = torch.arange(n_types).repeat_interleave(per)
    i_type = torch.arange(n_types).repeat_interleave(per // 2)
    text = t_centers[t_type] + 0.05 * torch.randn(len(t_type), 6, generator=gen)
    coarse = i_centers[i_type] + 0.05 * torch.randn(len(i_type), 5, generator=gen)
    s_t, s_i = query_states(text, coarse)
    return s_t, s_i, t_type, i_type


def test_query_state_layout():
    s_t, s_i, _, _ = _query_states()
    assert s_t.shape[1] == s_i.shape[1] == 12
    assert torch.all(s_t[:, 6:] == 0) and torch.all(s_i[:, :6] == 0) and torch.all(s_i[:, -1] == 1)
    assert torch.allclose(s_t[:, :6].norm(dim=1), torch.ones(len(s_t)))


def test_spherical_kmeans_recovers_separated_clusters():
    from dsanchor.controller import spherical_kmeans

    s_t, _, t_type, _ = _query_states(n_types=4)
    cent = spherical_kmeans(s_t[:, :6], 4, seed=1)
    assign = (torch.nn.functional.normalize(s_t[:, :6], dim=-1) @ cent.T).argmax(1)
    for c in range(4):  # every true cluster maps to exactly one centroid, and different clusters to different ones
        assert assign[t_type == c].unique().numel() == 1
    assert assign.unique().numel() == 4


def test_codebook_controller_encodes_query_types_and_round_trips(tmp_path):
    s_t, s_i, t_type, i_type = _query_states()
    ctrl = GranularityController(ControllerConfig(state_dim=12, hidden=8, codebook=3, text_dim=6))
    states = torch.cat([s_t, s_i])
    ctrl.fit_inputs(states, seed=0)
    code = ctrl.encode(states).argmax(1)
    assert ctrl.encode(states).shape == (len(states), 6) and torch.all(ctrl.encode(states).sum(1) == 1)
    assert torch.all(code[: len(s_t)] < 3) and torch.all(code[len(s_t):] >= 3)  # text and image codes apart
    for c in range(3):
        assert code[: len(s_t)][t_type == c].unique().numel() == 1
        assert code[len(s_t):][i_type == c].unique().numel() == 1
    assert torch.equal(ctrl.state_std, torch.ones(6))  # one-hot codes are not standardised
    g = ctrl(states)
    ctrl.save_pretrained(tmp_path)
    loaded = GranularityController.from_pretrained(tmp_path)
    assert torch.equal(loaded.text_centroids, ctrl.text_centroids) and torch.equal(loaded(states), g)


def test_codebook_errors():
    with pytest.raises(ConfigError, match="codebook controller"):
        GranularityController(ControllerConfig(state_dim=12, codebook=3))  # no text_dim
    with pytest.raises(ConfigError, match="no codebook"):
        GranularityController(ControllerConfig(state_dim=12)).fit_codebook(torch.zeros(4, 12))
    from dsanchor.state import StateConfig

    with pytest.raises(ConfigError, match="unknown state kind"):
        StateConfig(state_kind="bogus")
    with pytest.raises(ConfigError, match="codebook 0"):
        StateConfig(state_kind="summary", codebook=8)


def test_codebook_inference_table_matches_the_mlp_and_follows_updates():
    s_t, s_i, _, _ = _query_states()
    states = torch.cat([s_t, s_i])
    torch.manual_seed(0)
    ctrl = GranularityController(ControllerConfig(state_dim=12, hidden=8, codebook=3, text_dim=6))
    ctrl.fit_inputs(states, seed=0)
    with torch.no_grad():
        fast = ctrl(states)  # table lookup
    slow = ctrl(states).detach()  # with gradients: through the MLP
    assert torch.allclose(fast, slow, atol=1e-6)
    with torch.no_grad():
        ctrl.head.bias.add_(0.3)  # an in-place update (as an optimizer step) must refresh the table
        assert torch.allclose(ctrl(states), ctrl._mean_g(ctrl._raw(states)), atol=1e-6)
        assert not torch.allclose(ctrl(states), fast)
