"""The handle of an attached DSA: where g comes from, the state it reads, the hooks, and the prompt capture.

Every supported model is hooked the same way (each family's module says where):

1. a :class:`~dsanchor.integrations.taps.CoarseTap` records ``V_coarse``;
2. a hook at the family's seam takes ``V_fine`` (the features the model already feeds onwards), makes
   ``V_coarse`` the same shape, and replaces ``V_fine`` by :meth:`DSAHandle.mix`, i.e.
   :func:`dsanchor.anchoring.anchor` with g from a fixed value or from the controller, followed by the seam
   adapter when one is passed in (``attach_dsa(..., adapter=...)``; it is never stored on the model).

Removing the hooks (:meth:`DSAHandle.detach`) restores the model exactly; nothing else is changed.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from dsanchor.anchoring import anchor, check_g
from dsanchor.errors import ConfigError
from dsanchor.integrations.state import StateLayout, mllm_state, prompt_embedding, state_layout
from dsanchor.integrations.taps import CoarseTap

__all__ = ["ATTR", "StateFn", "DSAHandle", "default_state", "install_prompt_capture"]

# state_fn(v_fine, v_coarse) -> state (B, S); both inputs (B, N, D) after being shaped alike
StateFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

ATTR = "_dsanchor_dsa"  # the model attribute holding the attached handle while DSA is on


def default_state(v_fine: torch.Tensor, v_coarse: torch.Tensor) -> torch.Tensor:
    """The default controller state: ``concat(mean_tokens(V_coarse), mean_tokens(V_fine))``.

    Args:
        v_fine: ``(B, N, D)`` features the model already uses.
        v_coarse: ``(B, N, D)`` early-layer features shaped like ``v_fine``.

    Returns:
        ``(B, 2 * D)``.
    """
    return torch.cat([v_coarse.mean(dim=1), v_fine.mean(dim=1)], dim=-1)  # (B, 2D)


class _GenerateWrapper:
    """Instance-level ``generate`` that records the prompt first (BLIP-2's generate never calls forward)."""

    def __init__(self, model: nn.Module, handle: DSAHandle):
        self.model, self.handle = model, handle
        self.original = model.generate  # the bound class method

    def __call__(self, *args, **kwargs):
        self.handle.set_prompt(kwargs.get("input_ids", args[1] if len(args) > 1 else None),
                               kwargs.get("attention_mask"))
        return self.original(*args, **kwargs)

    def remove(self) -> None:
        if self.model.__dict__.get("generate") is self:
            del self.model.__dict__["generate"]


def install_prompt_capture(model: nn.Module, handle: DSAHandle) -> None:
    """Record ``input_ids`` and ``attention_mask`` of every ``forward`` and ``generate`` call on ``handle``.

    The vision seam runs inside these calls, after the prompt is known, so the state reads the prompt of
    the same call. Both hooks are removed by :meth:`DSAHandle.detach`.
    """
    def record(module: nn.Module, args: tuple, kwargs: dict):
        handle.set_prompt(kwargs.get("input_ids", args[0] if args else None), kwargs.get("attention_mask"))

    wrapper = _GenerateWrapper(model, handle)
    model.__dict__["generate"] = wrapper
    handle.add(model.register_forward_pre_hook(record, with_kwargs=True), wrapper)


class DSAHandle:
    """What :func:`dsanchor.integrations.attach_dsa` returns: the source of g, the hooks and the last g.

    Attributes:
        model_type: "llava", "blip2" or "idefics".
        coarse_layer: the vision hidden-state index that supplies V_coarse.
        feature_dim: D, the feature size of V_fine at the seam (the default state has 2 * D values).
        last_g: ``(n_images,)`` float32 on CPU, the g of each image in the last vision call; ``None`` before one.
    """

    def __init__(self, model: nn.Module, model_type: str, controller_or_g: nn.Module | float, coarse_layer: int,
                 feature_dim: int, state_fn: StateFn | None = None, adapter: nn.Module | None = None):
        self.model = model
        self.model_type = model_type
        self.coarse_layer = coarse_layer
        self.feature_dim = feature_dim
        self.state_fn: StateFn = state_fn or default_state
        self.last_g: torch.Tensor | None = None
        self.adapter = adapter  # applied to V' (a SeamAdapter from `dsanchor mllm adapt`), or None
        self.controller_seconds = 0.0  # time spent building states and running the controller
        self._hooks: list[RemovableHandle | CoarseTap | _GenerateWrapper] = []
        self.layout: StateLayout | None = None  # the MLLM state layout when the state reads the prompt too
        self._prompt: tuple[torch.Tensor, torch.Tensor | None] | None = None  # (input_ids, attention_mask)
        if isinstance(controller_or_g, nn.Module):
            self.controller: nn.Module | None = controller_or_g
            self.fixed_g: float | None = None
            config = getattr(controller_or_g, "config", None)
            self.state_dim = getattr(config, "state_dim", None)
            saved = getattr(config, "state_layout", None)
            if saved and state_fn is None:  # a controller from `dsanchor mllm train`: rebuild its state
                layout = StateLayout.from_dict(saved)
                layout.check_against(state_layout(model, coarse_layer))
                self.layout = layout
            elif state_fn is None and self.state_dim is not None and self.state_dim != 2 * feature_dim:
                raise ConfigError(
                    f"the controller expects state_dim={self.state_dim}, but the default DSA state of this "
                    f"{model_type} model is concat(mean V_coarse, mean V_fine) = 2 x {feature_dim} = "
                    f"{2 * feature_dim} values; use a controller with state_dim={2 * feature_dim} or pass state_fn")
        elif isinstance(controller_or_g, (int, float)) and not isinstance(controller_or_g, bool):
            check_g(float(controller_or_g), 1)
            self.controller, self.fixed_g, self.state_dim = None, float(controller_or_g), None
        else:
            raise ConfigError(f"attach_dsa needs a GranularityController (an nn.Module) or a float g in [0, 1]; "
                              f"got {type(controller_or_g).__name__}")

    @property
    def attached(self) -> bool:
        return bool(self._hooks)

    def add(self, *hooks: RemovableHandle | CoarseTap) -> None:
        self._hooks.extend(hooks)

    def granularity(self, v_fine: torch.Tensor, v_coarse: torch.Tensor) -> torch.Tensor:
        """g for each image: ``(B,)`` float32, from the fixed value or the controller."""
        batch = v_fine.shape[0]
        if self.controller is None:
            return torch.full((batch,), self.fixed_g, dtype=torch.float32)
        state = self.state(v_fine, v_coarse)  # (B, S)
        if self.state_dim is not None and (state.dim() != 2 or state.shape[-1] != self.state_dim):
            raise ConfigError(f"the DSA state has shape {tuple(state.shape)} but the controller expects "
                              f"(B, {self.state_dim}); make state_fn return {self.state_dim} values per image")
        param = next(self.controller.parameters(), None)
        if param is not None:
            state = state.to(param.device, param.dtype)
        return self.controller(state).reshape(batch).float()  # (B,)

    def state(self, v_fine: torch.Tensor, v_coarse: torch.Tensor) -> torch.Tensor:
        """The controller state of each image: ``state_fn(V_fine, V_coarse)``, or with an MLLM layout
        ``[mean V_coarse | mean V_fine | prompt embedding]`` (:mod:`dsanchor.integrations.state`)."""
        if self.layout is None:
            return self.state_fn(v_fine, v_coarse)
        return mllm_state(v_fine, v_coarse, self.prompt_rows(v_fine.shape[0]))

    def set_prompt(self, input_ids: torch.Tensor | None, attention_mask: torch.Tensor | None = None) -> None:
        """Record the prompt of the coming vision call (the hooks of :func:`install_prompt_capture` do it)."""
        if input_ids is not None:
            self._prompt = (input_ids, attention_mask)

    def prompt_rows(self, n_images: int) -> torch.Tensor:
        """``(n_images, H)``: each image's prompt embedding (a prompt with I images gives I equal rows)."""
        if self._prompt is None:
            raise ConfigError("this DSA controller reads the prompt, but the model was called without input_ids; "
                              "pass the prompt's input_ids to forward or generate")
        ids, mask = self._prompt
        rows = prompt_embedding(self.model, ids, mask)  # (B, H)
        if n_images != rows.shape[0]:
            if n_images % rows.shape[0]:
                raise RuntimeError(f"DSA: {n_images} images for {rows.shape[0]} prompts")
            rows = rows.repeat_interleave(n_images // rows.shape[0], dim=0)  # (B * I, H)
        return rows

    def mix(self, v_fine: torch.Tensor, v_coarse: torch.Tensor) -> torch.Tensor:
        """``V' = g * V_fine + (1 - g) * V_coarse`` with g from :meth:`granularity`; records :attr:`last_g`.

        Args:
            v_fine: ``(B, N, D)``.
            v_coarse: ``(B, N, D)``, already shaped like ``v_fine``.
        """
        tic = time.perf_counter()
        g = self.granularity(v_fine, v_coarse)  # (B,)
        self.last_g = g.detach().float().cpu()  # synchronises, so the time below includes the controller's work
        self.controller_seconds += time.perf_counter() - tic
        mixed = anchor(v_fine, v_coarse, g.to(v_fine.device))  # (B, N, D)
        if self.adapter is not None:
            mixed = self.adapter(mixed)
        return mixed

    def detach(self) -> None:
        """Remove every hook so the model behaves exactly as before; calling it again does nothing."""
        for hook in self._hooks:
            hook.remove()
        self._hooks.clear()
        self._prompt = None
        if getattr(self.model, ATTR, None) is self:
            delattr(self.model, ATTR)

    def __enter__(self) -> DSAHandle:
        return self

    def __exit__(self, *exc) -> None:
        self.detach()

    def __repr__(self) -> str:
        g = f"g={self.fixed_g}" if self.controller is None else f"controller={type(self.controller).__name__}"
        return (f"DSAHandle({self.model_type}, {g}, coarse_layer={self.coarse_layer}, "
                f"attached={self.attached})")
