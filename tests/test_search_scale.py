"""The per-query fast paths (benchmarks/bench_search_scale.py) compute exactly what the code before them did.

Each reference below is a verbatim copy of the implementation it replaced; outputs must be bit-identical.
"""

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from dsanchor.align.heads import JointFeatures
from dsanchor.controller import ControllerConfig, GranularityController
from dsanchor.retrieval import faiss_index, topk_search, two_stage_search
from dsanchor.state import query_states

DT, DC, K = 6, 5, 3  # text and scene vector sizes, codebook size


@torch.no_grad()
def _query_states_reference(text_raw, coarse_raw):
    t, dt = text_raw.shape
    n, dc = coarse_raw.shape
    s_t = torch.zeros(t, dt + dc + 1)
    s_t[:, :dt] = F.normalize(text_raw.float(), dim=-1)
    s_i = torch.zeros(n, dt + dc + 1)
    s_i[:, dt:dt + dc] = F.normalize(coarse_raw.float(), dim=-1)
    s_i[:, -1] = 1.0
    return s_t, s_i


def _code_reference(ctrl, state):
    dt, k = ctrl.config.text_dim, ctrl.config.codebook
    code_t = (state[:, :dt] @ ctrl.text_centroids.T).argmax(1)
    code_i = (state[:, dt:-1] @ ctrl.image_centroids.T).argmax(1) + k
    return torch.where(state[:, -1] > 0.5, code_i, code_t)


def _table_key_reference(ctrl):
    return tuple((id(t), t._version) for t in (*ctrl.parameters(), *ctrl.buffers()))


def _raw(t: int, n: int, seed: int = 0, dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(t, DT, generator=gen).to(dtype), torch.randn(n, DC, generator=gen).to(dtype)


@pytest.mark.parametrize("t,n", [(1, 0), (0, 1), (7, 4), (0, 0)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16])
def test_query_states_equal_the_reference(t, n, dtype):
    text, coarse = _raw(t, n, seed=t + n, dtype=dtype)
    if t > 1:
        text[1] = 0.0  # a zero vector: normalize's eps decides the value
    for got, want in zip(query_states(text, coarse), _query_states_reference(text, coarse), strict=True):
        assert got.dtype == want.dtype and torch.equal(got, want)


def test_query_states_are_never_differentiable():
    text, coarse = _raw(3, 2)
    text.requires_grad_(True)
    coarse.requires_grad_(True)
    for got, want in zip(query_states(text, coarse), _query_states_reference(text, coarse), strict=True):
        assert not got.requires_grad and torch.equal(got, want)


def _codebook_controller(seed: int = 0) -> tuple[GranularityController, torch.Tensor]:
    s_t, s_i = query_states(*_raw(40, 30, seed))
    states = torch.cat([s_t, s_i])
    torch.manual_seed(seed)
    ctrl = GranularityController(ControllerConfig(state_dim=DT + DC + 1, hidden=8, codebook=K, text_dim=DT))
    ctrl.fit_inputs(states, seed=seed)
    return ctrl.eval(), states


def test_codebook_code_and_g_equal_the_reference_for_every_batch_kind():
    ctrl, states = _codebook_controller()
    nan_direction = states[:3].clone()
    nan_direction[1, -1] = float("nan")  # neither text nor image: the reference reads it as text
    batches = {"one text": states[:1], "one image": states[-1:], "texts": states[:40], "images": states[40:],
               "mixed": states[torch.randperm(70, generator=torch.Generator().manual_seed(1))],
               "empty": states[:0], "nan direction": nan_direction}
    with torch.no_grad():
        for name, batch in batches.items():
            code, want = ctrl.code(batch), _code_reference(ctrl, batch)
            assert code.dtype == want.dtype and torch.equal(code, want), name
            assert torch.equal(ctrl(batch), ctrl._code_table()[want]), name
    assert torch.equal(ctrl(states).detach(), ctrl._mean_g(ctrl._raw(states)).detach())  # gradient path unchanged


def test_code_table_key_covers_every_parameter_and_buffer_and_follows_replacements():
    ctrl, states = _codebook_controller()
    ctrl.register_buffer("unused", None)  # None entries are skipped, as parameters() and buffers() skip them
    key = ctrl._tensor_key()  # what _code_table compares
    assert sorted(key) == sorted(_table_key_reference(ctrl))  # the same tensors (the order is the walk's)
    with torch.no_grad():
        before = ctrl(states)
        ctrl.head.bias = nn.Parameter(ctrl.head.bias + 0.3)  # a new tensor, version 0: the id must tell
        after = ctrl(states)
        assert not torch.equal(after, before)
        assert torch.allclose(after, ctrl._mean_g(ctrl._raw(states)), atol=1e-6)
        ctrl.head = nn.Linear(8, 1)  # a new submodule
        assert torch.allclose(ctrl(states), ctrl._mean_g(ctrl._raw(states)), atol=1e-6)


def _gallery(n: int = 300, r: int = 4, d: int = 16, seed: int = 0) -> tuple[torch.Tensor, JointFeatures]:
    gen = torch.Generator().manual_seed(seed)
    unit = lambda *s: F.normalize(torch.randn(*s, generator=gen), dim=-1)  # noqa: E731
    return unit(9, d), JointFeatures(unit(n, d), unit(n, r, d), torch.ones(n, r, dtype=torch.bool)).precompute()


def test_a_prebuilt_faiss_index_returns_what_a_fresh_one_does():
    text, images = _gallery()
    index = faiss_index(images.coarse)
    for got, want in zip(topk_search(text, images.coarse, 7, "faiss", index=index),
                         topk_search(text, images.coarse, 7, "faiss"), strict=True):
        assert torch.equal(got, want)
    g = torch.linspace(0, 1, text.shape[0])
    for got, want in zip(two_stage_search(text, images, 10.0, g, m=50, k=5, backend="faiss", index=index),
                         two_stage_search(text, images, 10.0, g, m=50, k=5, backend="faiss"), strict=True):
        assert torch.equal(got, want)
    assert torch.equal(topk_search(text, images.coarse, 7, "faiss", index=index)[1],
                       topk_search(text, images.coarse, 7, "torch")[1])


def test_a_prebuilt_index_that_does_not_fit_is_refused():
    text, images = _gallery()
    with pytest.raises(ValueError, match="holds 299 vectors"):
        topk_search(text, images.coarse, 5, "faiss", index=faiss_index(images.coarse[:-1]))
    with pytest.raises(ValueError, match="backend='faiss'"):
        topk_search(text, images.coarse, 5, "torch", index=faiss_index(images.coarse))
