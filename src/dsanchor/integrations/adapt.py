"""``dsanchor mllm adapt``: teach a pretrained MLLM to read V'(g) through a small adapter at its seam.

A pretrained MLLM has only ever seen ``V_fine`` at its seam (LLaVA's projector input, BLIP-2's Q-Former
input, IDEFICS's perceiver input). Early-layer features mixed in raw are out of its distribution, so without
adaptation every g < 1 can only hurt and a controller would learn g = 1. ``mllm adapt`` trains a residual
bottleneck adapter on the mixed features,

    V'' = V' + W_up · gelu(W_down · LayerNorm(V')),      W_up = 0 at the start (so V'' = V' before training),

with g drawn uniformly in [0, 1] per image, on the train split's captions (teacher forcing, loss on the
caption tokens only). The model's own weights are frozen, so the same adapter works for LLaVA, BLIP-2 and
IDEFICS and only the adapter is saved: ``OUT/adapter.safetensors`` (a few hundred KB at D = 1024, rank 64),
with its shape and model type in the file's metadata. ``--adapter OUT`` on ``mllm train / tune / eval`` (or
:func:`load_adapter`) puts it on the model; :func:`~dsanchor.integrations.attach_dsa` then applies it to V'.
The unmodified model (``base``) never goes through it.

Before and after training, CIDEr-D at fixed g is measured on (up to ``eval_images``) val images and plotted
(``OUT/adapt_cider_vs_g.png``): the measurement the adapter is for.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm.auto import tqdm

from dsanchor.errors import ConfigError, DataError
from dsanchor.integrations.common import ADAPTER_ATTR

__all__ = ["AdaptConfig", "SeamAdapter", "load_adapter", "train_adapter", "run_adapt"]

FILE = "adapter.safetensors"


@dataclass
class AdaptConfig:
    rank: int = field(default=64, metadata={"help": "bottleneck width of the adapter"})
    steps: int = field(default=300, metadata={"help": "optimizer steps"})
    adapt_batch_size: int = field(default=8, metadata={"help": "captions per step"})
    lr: float = field(default=1e-3, metadata={"help": "peak learning rate (cosine decay)"})
    eval_images: int = field(default=32, metadata={"help": "val images for CIDEr at fixed g before / after (0: skip)"})
    eval_grid: int = field(default=5, metadata={"help": "fixed g values of that measurement (0 to 1)"})
    seed: int = field(default=0, metadata={"help": "seed of the init, the batches and g"})

    def __post_init__(self) -> None:
        if min(self.rank, self.steps, self.adapt_batch_size) < 1:
            raise ConfigError("--rank, --steps and --adapt-batch-size must be >= 1")
        if self.eval_grid < 2 and self.eval_images:
            raise ConfigError("--eval-grid must be >= 2")


class SeamAdapter(nn.Module):
    """Residual bottleneck on the seam features (module docstring); the identity until trained."""

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
        h = self.up(nn.functional.gelu(self.down(self.norm(x.to(p.dtype)))))
        return x + h.to(x.dtype)


def _save(adapter: SeamAdapter, out: Path, model_type: str, coarse_layer: int) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    path = out / FILE
    save_file({k: v.detach().float().contiguous().cpu() for k, v in adapter.state_dict().items()}, str(path),
              metadata={"model_type": model_type, "dim": str(adapter.dim), "rank": str(adapter.rank),
                        "coarse_layer": str(coarse_layer), "format": "dsanchor-seam-adapter"})
    return path


def load_adapter(model: nn.Module, path: str | Path) -> SeamAdapter:
    """Put a saved adapter on ``model`` (DSA attached afterwards applies it); a mismatch is a one-line error."""
    from safetensors import safe_open

    from dsanchor.integrations.hf import _FAMILIES, detect_model_type

    p = Path(path)
    p = p / FILE if p.is_dir() else p
    if not p.is_file():
        raise DataError(p, "no seam adapter here (make one with `dsanchor mllm adapt --out DIR`)")
    with safe_open(str(p), "pt") as f:
        meta = f.metadata() or {}
    if meta.get("format") != "dsanchor-seam-adapter":
        raise DataError(p, "not a dsanchor seam adapter (no format metadata)")
    model_type = detect_model_type(model)
    dim = _FAMILIES[model_type][1].feature_dim(model)
    if meta["model_type"] != model_type or int(meta["dim"]) != dim:
        raise ConfigError(f"{p}: the adapter was made for a {meta['model_type']} seam of width {meta['dim']}, "
                          f"this is a {model_type} seam of width {dim}")
    adapter = SeamAdapter(dim, int(meta["rank"]))
    adapter.load_state_dict(load_file(str(p)))
    param = next(model.parameters())
    adapter = adapter.to(param.device, param.dtype).eval()
    object.__setattr__(model, ADAPTER_ATTR, adapter)  # not a registered submodule: not saved with the model
    return adapter


def _training_batch(model_type: str, processor, images: list, prompt: str, captions: list[str]) -> dict:
    """Inputs with labels: the caption tokens (prompt and padding are -100); right padding."""
    from dsanchor.integrations.evaluate import _prompt_batch

    tok = getattr(processor, "tokenizer", processor)
    side = tok.padding_side
    tok.padding_side = "right"
    try:
        head = _prompt_batch(model_type, processor, images[:1], [prompt])["input_ids"].shape[1]
        full = [f"{prompt} {c}{tok.eos_token or ''}" for c in captions]
        if model_type == "idefics":  # the caption goes after "Assistant:"
            turns = [["User:", im, f"{prompt}\nAssistant: {c}{tok.eos_token or ''}"]
                     for im, c in zip(images, captions, strict=True)]
            inputs = processor(text=turns, return_tensors="pt", padding="longest")
        else:
            inputs = _prompt_batch(model_type, processor, images, full)
    finally:
        tok.padding_side = side
    labels = inputs["input_ids"].clone()
    labels[:, :head] = -100
    if "attention_mask" in inputs:
        labels[inputs["attention_mask"] == 0] = -100
    inputs["labels"] = labels
    return dict(inputs)


def train_adapter(model: nn.Module, model_type: str, processor, pairs: list[tuple[Any, str]], prompt: str,
                  cfg: AdaptConfig, coarse_layer: int, progress: bool = True) -> tuple[SeamAdapter, list[float]]:
    """Train a :class:`SeamAdapter` on (image, caption) pairs with g ~ U[0, 1]; the model stays frozen."""
    from dsanchor.integrations.build import UniformG
    from dsanchor.integrations.captioning import _to
    from dsanchor.integrations.hf import _FAMILIES, attach_dsa

    torch.manual_seed(cfg.seed)
    dim = _FAMILIES[model_type][1].feature_dim(model)
    param = next(model.parameters())
    adapter = SeamAdapter(dim, cfg.rank).to(param.device)  # float32 weights, whatever the model's dtype
    requires = {n: p.requires_grad for n, p in model.named_parameters()}
    for p in model.parameters():
        p.requires_grad_(False)
    object.__setattr__(model, ADAPTER_ATTR, adapter)  # not a registered submodule: not saved with the model
    opt = torch.optim.AdamW(adapter.parameters(), lr=cfg.lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, cfg.steps) / cfg.steps)))
    gen = torch.Generator().manual_seed(cfg.seed)
    losses = []
    model.train()
    try:
        with attach_dsa(model, UniformG(cfg.seed), coarse_layer=coarse_layer,
                        state_fn=lambda vf, vc: vf.float().mean(1)):
            for _ in tqdm(range(cfg.steps), desc="mllm adapt", unit="step", disable=not progress):
                idx = torch.randint(len(pairs), (cfg.adapt_batch_size,), generator=gen).tolist()
                batch = _training_batch(model_type, processor, [pairs[i][0] for i in idx], prompt,
                                        [pairs[i][1] for i in idx])
                loss = model(**{k: _to(v, param) for k, v in batch.items()}).loss
                opt.zero_grad()
                loss.backward()
                torch.nn.utils.clip_grad_norm_(adapter.parameters(), 1.0)
                opt.step()
                sched.step()
                losses.append(float(loss.detach()))
    finally:
        model.eval()
        for n, p in model.named_parameters():
            p.requires_grad_(requires[n])
    adapter.eval()
    return adapter, losses


def _cider_at_fixed_g(model, cfg_mllm, data, samples, grid_values, batch_size, max_new_tokens, progress) -> list[float]:
    from dsanchor.integrations.captioning import DEFAULT_PROMPTS, caption_samples, processor_fns, score_captions
    from dsanchor.integrations.hf import attach_dsa

    prompt = DEFAULT_PROMPTS[cfg_mllm.model_type] if cfg_mllm.prompt is None else cfg_mllm.prompt
    prepare, decode = processor_fns(cfg_mllm.model_type, data.processor, prompt)
    out = []
    for g in tqdm(grid_values, desc="CIDEr at fixed g", unit="g", disable=not progress):
        with attach_dsa(model, float(g), coarse_layer=cfg_mllm.coarse_layer):
            run = caption_samples(model, prepare, decode, samples, data.root, batch_size, max_new_tokens)
        out.append(float(score_captions(run.captions, samples, data.vocabulary).get("CIDEr", float("nan"))))
    return out


def _plot(grid_values, before, after, path: Path) -> Path | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, ax = plt.subplots(figsize=(5, 3.2))
    ax.plot(grid_values, before, "o-", label="before adaptation")
    ax.plot(grid_values, after, "s-", label="after adaptation")
    ax.set_xlabel("fixed g")
    ax.set_ylabel("val CIDEr-D (raw)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def run_adapt(cfg, grid, ac: AdaptConfig, progress: bool = True) -> dict[str, Any] | None:
    """What ``dsanchor mllm adapt`` runs (module docstring); writes OUT/adapter.safetensors and adapt_info.json."""
    from dsanchor.anchoring import g_grid
    from dsanchor.integrations.captioning import DEFAULT_PROMPTS, _open_image
    from dsanchor.integrations.train import load_mllm_data

    if cfg.adapter:
        raise ConfigError("mllm adapt trains a new adapter; drop --adapter")
    data = load_mllm_data(cfg)
    if data.rank != 0:
        return None
    train = data.split("train", cfg.limit)
    pairs = [(_open_image(data.root, s), c.text) for s in train for c in s.captions]
    if not pairs:
        raise ConfigError(f"the train split has no captions to adapt on ({data.split_note})")
    val = data.split("val", ac.eval_images) if ac.eval_images else []
    values = g_grid(ac.eval_grid).tolist()
    t0 = time.perf_counter()
    before = _cider_at_fixed_g(data.model, cfg, data, val, values, grid.batch_size, grid.max_new_tokens,
                               progress) if val else []
    t_before = time.perf_counter() - t0
    prompt = DEFAULT_PROMPTS[cfg.model_type] if cfg.prompt is None else cfg.prompt
    tic = time.perf_counter()
    adapter, losses = train_adapter(data.model, cfg.model_type, data.processor, pairs, prompt, ac, cfg.coarse_layer,
                                    progress)
    t_train = time.perf_counter() - tic
    out = Path(cfg.out)
    path = _save(adapter, out, cfg.model_type, cfg.coarse_layer)
    tic = time.perf_counter()
    after = _cider_at_fixed_g(data.model, cfg, data, val, values, grid.batch_size, grid.max_new_tokens,
                              progress) if val else []
    t_after = time.perf_counter() - tic
    plot = _plot(values, before, after, out / "adapt_cider_vs_g.png") if val else None
    info = {"adapter": str(path), "bytes": path.stat().st_size, "rank": ac.rank, "n_pairs": len(pairs),
            "g": values, "cider_before": before, "cider_after": after, "n_val_images": len(val),
            "loss_first": losses[:10], "loss_last": losses[-10:], "plot": str(plot) if plot else None,
            "seconds": {"before": t_before, "train": t_train, "after": t_after}}
    (out / "adapt_info.json").write_text(json.dumps(info, indent=2))
    return info
