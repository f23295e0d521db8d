"""The g sources that are not trained controllers: what :func:`~dsanchor.integrations.attach_dsa` takes
besides a ``GranularityController``.

* a fixed g for every image: pass the float itself (``attach_dsa(model, 0.5)``);
* :class:`SettableG`: g set from outside before each call, one value for the batch or one per image (grid
  captions at each g, the oracle's per-image g); it can read the MLLM state of a layout and record the states;
* :class:`UniformG`: g ~ U[0, 1] drawn per image from its own generator (training with every mix), with a
  fixed g that can be set for a measurement (:meth:`UniformG.at`).

A source that reads the MLLM state carries a real :class:`~dsanchor.controller.ControllerConfig` with the
state's size and layout, so the handle builds the state for it exactly as for a trained controller.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from dsanchor.controller import ControllerConfig
from dsanchor.integrations.state import StateLayout

__all__ = ["SettableG", "UniformG"]


class SettableG(nn.Module):
    """Returns the g set last: a float for every image, or a ``(B,)`` tensor with one g per image of the call.

    Args:
        g: the initial g.
        layout: the MLLM state to read (the handle then builds it); None: the default state.
        record: keep every state it is called with in :attr:`states` (float32, CPU).
    """

    def __init__(self, g: float | torch.Tensor = 1.0, layout: StateLayout | None = None, record: bool = False):
        super().__init__()
        if layout is not None:
            self.config = ControllerConfig(state_dim=layout.size, state_layout=layout.to_dict())
        self.g: float | torch.Tensor = g
        self.record = record
        self.states: list[torch.Tensor] = []

    def set(self, g: float | torch.Tensor) -> None:
        """The g of the coming calls: one float, or one value per image of the next batch."""
        self.g = g

    def forward(self, state: torch.Tensor) -> torch.Tensor:
        if self.record:
            self.states.append(state.detach().float().cpu())
        if torch.is_tensor(self.g):
            g = self.g.to(state.device)
            return g.expand(state.shape[0]) if g.numel() == 1 else g
        return torch.full((state.shape[0],), float(self.g), device=state.device)


class UniformG(nn.Module):
    """Draws g ~ U[0, 1] per image from its own seeded generator, unless a fixed g is set."""

    def __init__(self, seed: int, fixed: float | None = None):
        super().__init__()
        self.gen = torch.Generator().manual_seed(seed)
        self.fixed = fixed  # set: this g for every image instead of a draw

    @contextmanager
    def at(self, g: float) -> Iterator[UniformG]:
        """Return ``g`` for every image inside the block (a measurement at one g), then what was set before."""
        before, self.fixed = self.fixed, g
        try:
            yield self
        finally:
            self.fixed = before

    def forward(self, state: torch.Tensor) -> torch.Tensor:
        if self.fixed is not None:
            return torch.full((state.shape[0],), self.fixed, device=state.device)
        return torch.rand(state.shape[0], generator=self.gen).to(state.device)
