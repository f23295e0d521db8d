"""The seam adapter: a residual bottleneck applied to V' at a model's seam, and its file.

    V'' = V' + W_up · gelu(W_down · LayerNorm(V')),      W_up = 0 at the start (so V'' = V' before training)

``dsanchor mllm adapt`` (:mod:`dsanchor.mllm.adapt`) trains one on a frozen model; only the adapter is saved,
``adapter.safetensors`` with its shape and model type in the file's metadata. :func:`load_adapter` reads it
back for a model (a mismatch is a one-line error) and returns it; it is passed to
:func:`~dsanchor.integrations.attach_dsa` (``adapter=``) and never stored on the model.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from dsanchor.errors import ConfigError, DataError
from dsanchor.integrations.families import detect_model_type, family_of

__all__ = ["ADAPTER_FILE", "SeamAdapter", "save_adapter", "load_adapter"]

ADAPTER_FILE = "adapter.safetensors"
FORMAT = "dsanchor-seam-adapter"


class SeamAdapter(nn.Module):
    """Residual bottleneck on the seam features (module docstring); the identity until trained.

    Args:
        dim: D, the seam width. rank: the bottleneck width.
    """

    def __init__(self, dim: int, rank: int):
        super().__init__()
        self.dim, self.rank = dim, rank
        self.norm = nn.LayerNorm(dim)
        self.down = nn.Linear(dim, rank)
        self.up = nn.Linear(rank, dim)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = self.down.weight
        h = self.up(nn.functional.gelu(self.down(self.norm(x.to(p.dtype)))))  # (B, N, D)
        return x + h.to(x.dtype)


def save_adapter(adapter: SeamAdapter, out: str | Path, model_type: str, coarse_layer: int) -> Path:
    """Write ``out/adapter.safetensors`` (float32 weights; shape, model type and coarse layer as metadata)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / ADAPTER_FILE
    save_file({k: v.detach().float().contiguous().cpu() for k, v in adapter.state_dict().items()}, str(path),
              metadata={"model_type": model_type, "dim": str(adapter.dim), "rank": str(adapter.rank),
                        "coarse_layer": str(coarse_layer), "format": FORMAT})
    return path


def load_adapter(model: nn.Module, path: str | Path) -> SeamAdapter:
    """The saved adapter at ``path`` (a folder or the file) for ``model``, on its device and dtype, in eval mode.

    Raises:
        DataError: no adapter there, or not a dsanchor seam adapter.
        ConfigError: the adapter was made for another model type or seam width.
    """
    p = Path(path)
    p = p / ADAPTER_FILE if p.is_dir() else p
    if not p.is_file():
        raise DataError(p, "no seam adapter here (make one with `dsanchor mllm adapt --out DIR`)")
    with safe_open(str(p), "pt") as f:
        meta = f.metadata() or {}
    if meta.get("format") != FORMAT:
        raise DataError(p, "not a dsanchor seam adapter (no format metadata)")
    model_type = detect_model_type(model)
    dim = family_of(model).feature_dim(model)
    if meta["model_type"] != model_type or int(meta["dim"]) != dim:
        raise ConfigError(f"{p}: the adapter was made for a {meta['model_type']} seam of width {meta['dim']}, "
                          f"this is a {model_type} seam of width {dim}")
    adapter = SeamAdapter(dim, int(meta["rank"]))
    adapter.load_state_dict(load_file(str(p)))
    param = next(model.parameters())
    return adapter.to(param.device, param.dtype).eval()
