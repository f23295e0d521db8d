"""Load a local transformers MLLM and its processor (nothing is downloaded), and choose its device."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dsanchor.errors import ConfigError, MissingDependencyError
from dsanchor.integrations.families import get_family

__all__ = ["DTYPES", "resolve_device", "load_mllm"]

DTYPES = ("auto", "float32", "float16", "bfloat16")


def resolve_device(name: str) -> str:
    """``name``, or for ``"auto"`` this process's GPU (``cuda:LOCAL_RANK`` under torchrun) if there is one, else
    ``"cpu"``."""
    if name != "auto":
        return name
    return f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}" if torch.cuda.is_available() else "cpu"


def load_mllm(model_type: str, model_path: str | Path, device: str = "cpu",
              dtype: str = "auto") -> tuple[nn.Module, Any]:
    """A local model of ``model_type`` and its processor (``AutoProcessor``), in eval mode on ``device``.

    The tokenizer pads on the left: decoder-only generation continues every row from its last token.

    Raises:
        ConfigError: unknown model type or dtype.
        MissingDependencyError: the directory does not exist or holds no model.
    """
    family = get_family(model_type)
    path = Path(model_path)
    if not (path / "config.json").is_file():
        raise MissingDependencyError(f"{path}: no local model there (expected config.json); pass --model-path a "
                                     "directory written by save_pretrained (hub downloads are not used)")
    if dtype not in DTYPES:
        raise ConfigError(f"unknown --dtype {dtype!r}; valid: {', '.join(DTYPES)}")
    import transformers

    model = getattr(transformers, family.MODEL_CLASS).from_pretrained(
        path, local_files_only=True, dtype=dtype if dtype == "auto" else getattr(torch, dtype))
    processor = transformers.AutoProcessor.from_pretrained(path, local_files_only=True)
    tokenizer = getattr(processor, "tokenizer", None)
    if tokenizer is not None:
        tokenizer.padding_side = "left"
    return model.to(device).eval(), processor
