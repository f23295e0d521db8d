"""Dynamic Semantic Anchoring: ``V' = g * V_fine + (1 - g) * V_coarse``.

For retrieval, ``V_fine`` is the text-pooled region vector and ``V_coarse`` the scene vector, both
``(B, D)`` in the joint space. For captioning and MLLMs they are token sequences ``(B, N, D)`` of the
same shape; :mod:`dsanchor.captioning` and :mod:`dsanchor.integrations` document how each is built.
"""

from __future__ import annotations

import torch

from dsanchor.errors import ConfigError

__all__ = ["anchor", "check_g", "g_grid", "choose_fixed_g", "choose_g_per_item"]


def check_g(g: float | torch.Tensor, batch: int) -> torch.Tensor:
    """Validate g and return it as a float tensor of shape ``(B,)`` (or ``()`` for a scalar).

    Args:
        g: a scalar, or one value per batch element with shape ``(B,)`` or ``(B, 1)``.
        batch: B, the batch size it must match.
    """
    g = torch.as_tensor(g, dtype=torch.float32)
    if g.dim() == 2 and g.shape[1] == 1:
        g = g[:, 0]
    if g.dim() > 1 or (g.dim() == 1 and g.shape[0] != batch):
        raise ConfigError(f"g must be a scalar, (B,) or (B, 1) with B={batch}; got shape {tuple(g.shape)}")
    if torch.isnan(g).any() or (g < 0).any() or (g > 1).any():
        raise ConfigError(f"g must lie in [0, 1]; got values in [{g.min().item():.4g}, {g.max().item():.4g}]")
    return g


def anchor(v_fine: torch.Tensor, v_coarse: torch.Tensor, g: float | torch.Tensor) -> torch.Tensor:
    """Mix fine and coarse visual features with granularity g.

    Args:
        v_fine: object-level features, ``(B, D)`` or ``(B, N, D)``.
        v_coarse: scene-level features with the same shape as ``v_fine``.
        g: granularity in [0, 1]: a scalar, ``(B,)`` or ``(B, 1)``. g = 1 gives ``v_fine``, g = 0 ``v_coarse``.

    Returns:
        ``g * v_fine + (1 - g) * v_coarse`` with the shape of the inputs.
    """
    if v_fine.shape != v_coarse.shape:
        raise ConfigError(f"v_fine {tuple(v_fine.shape)} and v_coarse {tuple(v_coarse.shape)} must have the same shape")
    if v_fine.dim() not in (2, 3):
        raise ConfigError(f"anchor expects (B, D) vectors or (B, N, D) token sequences; got {v_fine.dim()} dims")
    gt = check_g(g, v_fine.shape[0]).to(v_fine.device, v_fine.dtype)
    if gt.dim() == 1:
        gt = gt.view(-1, *([1] * (v_fine.dim() - 1)))  # (B, 1) or (B, 1, 1)
    return gt * v_fine + (1 - gt) * v_coarse


def g_grid(n: int) -> torch.Tensor:
    """``n`` evenly spaced g values from 0 to 1: the grid of fixed_best, the oracle and cached rewards."""
    return torch.linspace(0.0, 1.0, n)


def choose_fixed_g(values: torch.Tensor, grid: torch.Tensor) -> float:
    """``fixed_best``: the grid g with the best mean score (``values``: (G,), higher is better; ties: the first)."""
    return float(grid[int(torch.argmax(values))])


def choose_g_per_item(scores: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """The oracle: per row of ``scores`` (N, G), higher is better, the grid g with the best score; among
    equal scores the g closest to 0.5. Returns (N,) g. An upper bound when the scores come from the item itself."""
    tie = 1e-6 * (grid - 0.5).abs()  # (G,) smaller than any real difference of the callers' scores
    return grid[(scores.double() - tie.double()).argmax(1)]
