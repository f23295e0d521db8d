"""The differentiable ablation of DSA: the same controller network trained by plain gradient descent.

The controller's mean g enters the anchored scores directly (:func:`dsanchor.retrieval.anchored_scores`
is differentiable in g), and the loss is the symmetric multi-positive InfoNCE of those scores over the
training gallery. PPO (:mod:`dsanchor.rl`) optimises the same network on a non-differentiable reward.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from dsanchor.controller import ControllerConfig, GranularityController
from dsanchor.retrieval import anchored_scores

__all__ = ["GateConfig", "train_gate"]


@dataclass
class GateConfig:
    steps: int = field(default=300, metadata={"help": "full-batch gradient steps"})
    lr: float = field(default=3e-3, metadata={"help": "Adam learning rate"})
    weight_decay: float = field(default=1e-4, metadata={"help": "Adam weight decay"})
    seed: int = field(default=0, metadata={"help": "random seed"})


def _nce(logits: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    lse_pos = torch.logsumexp(logits.masked_fill(~pos, float("-inf")), dim=1)
    keep = pos.any(1)
    return (torch.logsumexp(logits, dim=1) - lse_pos)[keep].mean()


def train_gate(view, controller_config: ControllerConfig, config: GateConfig) -> tuple[GranularityController, dict]:
    """Train a controller on ``view`` (a :class:`~dsanchor.eval.views.SplitView`) by gradient descent."""
    torch.manual_seed(config.seed)
    ctrl = GranularityController(controller_config)
    ctrl.fit_inputs(torch.cat([view.states_t2i, view.states_i2t]), config.seed)
    opt = torch.optim.Adam(ctrl.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    pos = view.relevant  # exact relevance where the data has scene graphs
    t0 = time.perf_counter()
    terms_it = view.terms.t()
    for _ in range(config.steps):
        g_t = ctrl(view.states_t2i).unsqueeze(1)  # (T, 1)
        g_i = ctrl(view.states_i2t).unsqueeze(1)  # (N, 1)
        loss = _nce(view.logit_scale * anchored_scores(view.terms, g_t), pos) + \
            _nce(view.logit_scale * anchored_scores(terms_it, g_i), pos.T)
        opt.zero_grad()
        loss.backward()
        opt.step()
    ctrl.eval()
    return ctrl, {"train_time_s": time.perf_counter() - t0, "final_loss": float(loss.detach())}
