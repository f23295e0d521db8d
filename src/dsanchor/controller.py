"""The granularity controller: a small MLP that maps a query's state to a distribution over g in [0, 1].

The state (built by :mod:`dsanchor.state`) aggregates both modalities: the query vector and summaries
of the first-stage candidates (see that module for the exact features and why). The controller owns
the state's normalisation statistics (``state_mean``, ``state_std`` buffers), so a saved controller is
self-contained: ``from_pretrained(dir)(raw_state)`` gives g.

Two output heads:

* ``"beta"``: g ~ Beta(a, b) with a, b = 1 + softplus(.); the mean is a / (a + b).
* ``"gaussian"``: the action a ~ N(mu, sigma) on [-1, 1] (clipped), g = (a + 1) / 2. The mean is
  (clip(mu, -1, 1) + 1) / 2. This is exactly what an SB3 PPO policy with a Box(-1, 1) action space
  and an environment that rescales the action computes, so a PPO policy exports to it without loss.

Saved as safetensors + JSON config (``save_pretrained`` / ``from_pretrained``); loading never unpickles.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from dsanchor.checkpoint import PretrainedMixin
from dsanchor.errors import ConfigError

__all__ = ["ControllerConfig", "GranularityController"]

CONFIG_NAME = "controller_config.json"
WEIGHTS_NAME = "controller.safetensors"


@dataclass
class ControllerConfig:
    state_dim: int = field(default=0, metadata={"help": "size of the state vector (set from the state builder)"})
    hidden: int = field(default=64, metadata={"help": "width of each hidden layer"})
    layers: int = field(default=2, metadata={"help": "number of hidden layers"})
    distribution: str = field(default="gaussian", metadata={"help": "output head: gaussian (PPO-exact) or beta"})
    init_log_std: float = field(default=-0.5, metadata={"help": "initial log std of the gaussian head"})


class GranularityController(PretrainedMixin, nn.Module):
    """MLP policy over the granularity g (DESIGN.md "Controller")."""

    config_class = ControllerConfig
    config_name = CONFIG_NAME
    weights_name = WEIGHTS_NAME
    display_name = "controller"
    made_by = "dsanchor train"

    def __init__(self, config: ControllerConfig):
        super().__init__()
        if config.state_dim <= 0:
            raise ConfigError("ControllerConfig.state_dim must be positive (the size of the state vector)")
        if config.distribution not in ("gaussian", "beta"):
            raise ConfigError(f"unknown controller distribution {config.distribution!r}; use 'gaussian' or 'beta'")
        self.config = config
        dims = [config.state_dim] + [config.hidden] * config.layers
        blocks: list[nn.Module] = []
        for d_in, d_out in zip(dims[:-1], dims[1:], strict=False):
            blocks += [nn.Linear(d_in, d_out), nn.Tanh()]
        self.body = nn.Sequential(*blocks)
        n_out = 1 if config.distribution == "gaussian" else 2
        self.head = nn.Linear(dims[-1], n_out)
        self.log_std = nn.Parameter(torch.full((1,), float(config.init_log_std)))
        self.register_buffer("state_mean", torch.zeros(config.state_dim))
        self.register_buffer("state_std", torch.ones(config.state_dim))

    def set_normalization(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        """Store the state statistics used to standardise raw states."""
        self.state_mean.copy_(mean)
        self.state_std.copy_(std.clamp_min(1e-6))

    def normalize(self, state: torch.Tensor) -> torch.Tensor:
        return (state - self.state_mean) / self.state_std

    def _raw(self, state: torch.Tensor) -> torch.Tensor:
        if state.dim() != 2 or state.shape[1] != self.config.state_dim:
            raise ConfigError(f"controller expects states of shape (B, {self.config.state_dim}); "
                              f"got {tuple(state.shape)}")
        return self.head(self.body(self.normalize(state)))  # (B, 1) or (B, 2)

    def distribution(self, state: torch.Tensor) -> torch.distributions.Distribution:
        """The distribution over the action: g itself for beta, the [-1, 1] action for gaussian."""
        out = self._raw(state)
        if self.config.distribution == "beta":
            conc = 1.0 + nn.functional.softplus(out)  # (B, 2)
            return torch.distributions.Beta(conc[:, 0], conc[:, 1])
        return torch.distributions.Normal(out[:, 0], self.log_std.exp().expand(out.shape[0]))

    def forward(self, state: torch.Tensor) -> torch.Tensor:
        """The mean g for each state. Args: state ``(B, state_dim)``. Returns ``(B,)`` in [0, 1]."""
        out = self._raw(state)
        if self.config.distribution == "beta":
            conc = 1.0 + nn.functional.softplus(out)
            return conc[:, 0] / conc.sum(dim=1)
        return (out[:, 0].clamp(-1.0, 1.0) + 1.0) / 2.0
