"""The MLLM controller's state: the image at the seam and the prompt (seed §2.1, §2.3).

For an attached model the state of one image is

    [ mean_tokens(V_coarse) | mean_tokens(V_fine) | mean_tokens(E(prompt)) ]     (2 * D + H values)

* V_coarse and V_fine are the seam features of :mod:`dsanchor.integrations.attach` (both ``(N, D)`` after
  being shaped alike), so the image part is what the model is about to read.
* E(prompt) is the **model's own input embedding** of the prompt tokens (``model.get_input_embeddings()``,
  H = the language model's hidden size), averaged over the tokens that are text: padding (by the attention
  mask) and image placeholder tokens (the config's ``image_token_id`` / ``image_token_index``) are left out.
  The model's own embeddings need no second text encoder, exist for every family at every scale, and are
  what the language model itself reads. For a prompt that never changes (one captioning instruction) the
  text part is constant and the controller reads the image alone; with per-question prompts (POPE's
  "Is there a {object} in the image?") g depends on the question.

A controller saved by ``dsanchor mllm train`` records its :class:`StateLayout` in its config
(``ControllerConfig.state_layout``), so :func:`~dsanchor.integrations.attach_dsa` rebuilds exactly this state
and refuses, in one line, a controller made for another model type, seam width, prompt width or coarse layer.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from dsanchor.errors import ConfigError
from dsanchor.integrations.families import detect_model_type, family_of

__all__ = ["LAYOUT_KIND", "StateLayout", "state_layout", "prompt_embedding", "mllm_state"]

LAYOUT_KIND = "mllm-seam+prompt"
TEXT_SOURCE = "model input embeddings (mean over the prompt's text tokens)"


@dataclass(frozen=True)
class StateLayout:
    """Which values a controller state holds, in order; saved with the controller."""

    model_type: str  # llava, blip2 or idefics
    image_dim: int  # D, the seam feature size (V_coarse and V_fine each give D values)
    text_dim: int  # H, the size of the model's input embeddings
    coarse_layer: int  # the vision hidden state that supplied V_coarse
    kind: str = LAYOUT_KIND
    text_source: str = TEXT_SOURCE

    @property
    def size(self) -> int:
        return 2 * self.image_dim + self.text_dim

    @property
    def parts(self) -> list[tuple[str, int]]:
        """(name, width) of each block of the state, in order."""
        return [("mean V_coarse", self.image_dim), ("mean V_fine", self.image_dim), ("mean prompt embedding",
                                                                                   self.text_dim)]

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> StateLayout:
        try:
            return cls(**values)
        except TypeError as exc:
            raise ConfigError(f"the controller's state_layout is not an MLLM state layout ({exc})") from None

    def check_against(self, other: StateLayout) -> None:
        """One-line error naming the first field where a saved layout (self) differs from the model's."""
        for name in ("kind", "model_type", "image_dim", "text_dim", "coarse_layer"):
            mine, theirs = getattr(self, name), getattr(other, name)
            if mine != theirs:
                raise ConfigError(f"the controller was trained on MLLM states with {name}={mine!r} but this model "
                                  f"and coarse layer give {name}={theirs!r}; train a controller for this model "
                                  f"with `dsanchor mllm train`")


def state_layout(model: nn.Module, coarse_layer: int) -> StateLayout:
    """The layout of the state :func:`mllm_state` builds for ``model``."""
    model_type = detect_model_type(model)
    emb = model.get_input_embeddings()
    return StateLayout(model_type=model_type, image_dim=family_of(model).feature_dim(model),
                       text_dim=int(emb.weight.shape[1]), coarse_layer=coarse_layer)


def _placeholder_ids(model: nn.Module) -> list[int]:
    ids = []
    for cfg in (model.config, getattr(model.config, "text_config", None)):
        for name in ("image_token_id", "image_token_index"):
            v = getattr(cfg, name, None) if cfg is not None else None
            if isinstance(v, int) and v >= 0:
                ids.append(v)
    return sorted(set(ids))


@torch.no_grad()
def prompt_embedding(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                     ignore_ids: list[int] | None = None) -> torch.Tensor:
    """Mean input embedding of each prompt's text tokens.

    Args:
        input_ids: ``(B, T)``.
        attention_mask: ``(B, T)``, 0 on padding; ``None``: no padding.
        ignore_ids: token ids left out besides padding (default: the model's image placeholder ids).

    Returns:
        ``(B, H)`` float32 on the embeddings' device; a prompt with no text token gives zeros.
    """
    emb = model.get_input_embeddings()
    keep = torch.ones_like(input_ids, dtype=torch.bool) if attention_mask is None else attention_mask.bool()
    for i in (_placeholder_ids(model) if ignore_ids is None else ignore_ids):
        keep &= input_ids != i
    vecs = emb(input_ids.to(emb.weight.device)).float()  # (B, T, H)
    w = keep.to(vecs.device).float().unsqueeze(-1)  # (B, T, 1)
    return (vecs * w).sum(1) / w.sum(1).clamp_min(1.0)  # (B, H)


def mllm_state(v_fine: torch.Tensor, v_coarse: torch.Tensor, prompt: torch.Tensor) -> torch.Tensor:
    """``[mean V_coarse | mean V_fine | prompt]``: ``(B, 2 D + H)`` float32 (module docstring).

    Args:
        v_fine, v_coarse: ``(B, N, D)``.
        prompt: ``(B, H)`` from :func:`prompt_embedding` (one row per image).
    """
    if prompt.shape[0] != v_fine.shape[0]:
        raise RuntimeError(f"DSA state: {prompt.shape[0]} prompts for {v_fine.shape[0]} images")
    return torch.cat([v_coarse.float().mean(1), v_fine.float().mean(1), prompt.float().to(v_fine.device)], dim=-1)
