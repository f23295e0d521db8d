"""The ``router_loss`` baseline: a granularity router trained the way AVG-LLaVA trains its router, with no RL.

AVG-LLaVA (Lan et al., arXiv 2410.02745) trains its visual granularity router with RGLF: the language model's own
loss on the answer at each candidate granularity tells the router which granularity the model prefers, and the
router is fit to that preference by supervision. Here the candidates are the g values of the grid cache, the
losses are the cache's answer losses (:func:`dsanchor.mllm.items.answer_nll`: mean NLL per answer token at each
g) and the router reads the same state as the PPO controller (the seam features and the item's prompt).

The router is a :class:`~dsanchor.controller.GranularityController` with a ``grid`` head (one logit per grid g;
g is the most probable one), so it is saved, loaded and attached exactly as a PPO controller is. Its loss per
item, over the G grid values with losses L_1..L_G and router probabilities p_1..p_G, is

    CE(logits, argmin_j L_j)  +  w · mean_{i, j: L_i < L_j} max(0, m − (p_i − p_j))

the cross-entropy towards the lowest-loss g plus a margin ranking loss that asks every lower-loss g to be more
probable than every higher-loss one by a margin m (:class:`~dsanchor.mllm.config.RouterConfig`: w, m, steps).
This is our reading of RGLF's two terms on a grid of g, not a copy of its code.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dsanchor.controller import ControllerConfig, GranularityController
from dsanchor.errors import ConfigError
from dsanchor.mllm.config import RouterConfig

__all__ = ["router_loss", "train_router"]


def router_loss(logits: torch.Tensor, losses: torch.Tensor, margin: float, rank_weight: float) -> torch.Tensor:
    """The RGLF-style loss of the module docstring.

    Args:
        logits: ``(N, G)`` router logits (or log-probabilities: the loss does not change).
        losses: ``(N, G)`` the model's answer loss at each grid g (lower is better).
    """
    ce = torch.nn.functional.cross_entropy(logits, losses.argmin(1))
    p = logits.softmax(1)  # (N, G)
    better = losses.unsqueeze(2) < losses.unsqueeze(1)  # (N, G, G): g_i has a lower loss than g_j
    hinge = (margin - (p.unsqueeze(2) - p.unsqueeze(1))).clamp_min(0)  # (N, G, G)
    rank = (hinge * better).sum() / better.sum().clamp_min(1)
    return ce + rank_weight * rank


def train_router(states: torch.Tensor, losses: np.ndarray, grid: torch.Tensor, config: RouterConfig,
                 out_dir: str | Path, state_layout: dict | None = None) -> tuple[GranularityController, dict[str, Any]]:
    """Fit a grid-head controller to the answer losses (full batch, Adam) and save it to ``out_dir/controller``.

    Args:
        states: ``(N, S)`` the cached states of the training items.
        losses: ``(N, G)`` their answer losses at the grid g (rows with no loss, NaN, are left out).
        grid: ``(G,)`` the grid g values.
        state_layout: recorded in the saved controller (:class:`~dsanchor.integrations.state.StateLayout`).
    """
    keep = np.isfinite(losses).all(1)
    if not keep.any():
        raise ConfigError("router_loss needs answer losses; the grid cache has none (items without answers?)")
    x = states[torch.from_numpy(keep)].float()
    y = torch.from_numpy(losses[keep]).float()
    torch.manual_seed(config.seed)
    ctrl = GranularityController(ControllerConfig(state_dim=int(x.shape[1]), hidden=config.hidden,
                                                  layers=config.layers, distribution="grid",
                                                  grid=[round(float(g), 6) for g in grid],
                                                  state_layout=dict(state_layout or {})))
    ctrl.fit_inputs(x, config.seed)
    opt = torch.optim.Adam(ctrl.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    tic = time.perf_counter()
    for _ in range(config.steps):
        loss = router_loss(ctrl.distribution(x).logits, y, config.margin, config.rank_weight)
        opt.zero_grad()
        loss.backward()
        opt.step()
    ctrl.eval()
    out = Path(out_dir) / "controller"
    ctrl.save_pretrained(out)
    with torch.no_grad():
        g = ctrl(x)
        hit = float((ctrl.distribution(x).logits.argmax(1) == y.argmin(1)).float().mean())
    return ctrl, {"controller": str(out), "n_items": int(keep.sum()), "final_loss": float(loss.detach()),
                  "train_lowest_loss_hit": hit, "train_mean_g": float(g.mean()), "seconds": time.perf_counter() - tic}
