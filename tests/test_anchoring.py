import pytest
import torch

from dsanchor.anchoring import anchor
from dsanchor.errors import ConfigError


def test_vectors_and_tokens_match_formula():
    torch.manual_seed(0)
    f, c = torch.randn(4, 8), torch.randn(4, 8)
    g = torch.tensor([0.0, 0.25, 0.5, 1.0])
    out = anchor(f, c, g)
    for i in range(4):
        assert torch.allclose(out[i], g[i] * f[i] + (1 - g[i]) * c[i])
    ft, ct = torch.randn(4, 3, 8), torch.randn(4, 3, 8)
    out_t = anchor(ft, ct, g.view(4, 1))
    assert out_t.shape == (4, 3, 8)
    assert torch.allclose(out_t[1], 0.25 * ft[1] + 0.75 * ct[1])


def test_edge_values():
    f, c = torch.randn(2, 5), torch.randn(2, 5)
    assert torch.equal(anchor(f, c, 1.0), f)
    assert torch.equal(anchor(f, c, 0.0), c)


@pytest.mark.parametrize("g", [-0.1, 1.5, float("nan")])
def test_g_out_of_range(g):
    with pytest.raises(ConfigError, match=r"\[0, 1\]"):
        anchor(torch.zeros(2, 3), torch.zeros(2, 3), g)


def test_shape_errors():
    with pytest.raises(ConfigError, match="same shape"):
        anchor(torch.zeros(2, 3), torch.zeros(2, 4), 0.5)
    with pytest.raises(ConfigError, match=r"B=2"):
        anchor(torch.zeros(2, 3), torch.zeros(2, 3), torch.tensor([0.1, 0.2, 0.3]))
    with pytest.raises(ConfigError, match="dims"):
        anchor(torch.zeros(3), torch.zeros(3), 0.5)
