"""``dsanchor mllm adapt``: teach a pretrained MLLM to read V'(g) through a small adapter at its seam.

A pretrained MLLM has only ever seen ``V_fine`` at its seam (LLaVA's projector input, BLIP-2's Q-Former
input, IDEFICS's perceiver input). Early-layer features mixed in raw are out of its distribution, so without
adaptation every g < 1 can only hurt and a controller would learn g = 1. ``mllm adapt`` trains a residual
bottleneck adapter on the mixed features,

    V'' = V' + W_up · gelu(W_down · LayerNorm(V')),      W_up = 0 at the start (so V'' = V' before training),

with g drawn uniformly in [0, 1] per image, on the train split's captions (teacher forcing, loss on the
caption tokens only). The model's own weights are frozen, so the same adapter works for LLaVA, BLIP-2 and
IDEFICS and only the adapter is saved: ``OUT/adapter.safetensors`` (a few hundred KB at D = 1024, rank 64),
with its shape and model type in the file's metadata (:mod:`dsanchor.integrations.adapter`). ``--adapter OUT`` on
the other mllm commands loads it (:func:`~dsanchor.integrations.load_adapter`) and passes it to every
:func:`~dsanchor.integrations.attach_dsa`, which applies it to V'. The unmodified model (``base``) never goes
through it.

Before and after training, CIDEr-D at fixed g is measured on (up to ``eval_images``) val images and plotted
(``OUT/adapt_cider_vs_g.png``): the measurement the adapter is for.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from dsanchor.anchoring import g_grid
from dsanchor.errors import ConfigError
from dsanchor.files import write_json
from dsanchor.integrations import SeamAdapter, UniformG, attach_dsa, get_family, processor_fns, save_adapter
from dsanchor.mllm.config import AdaptConfig, GridConfig, MLLMConfig
from dsanchor.mllm.data import MLLMData, load_mllm_data
from dsanchor.mllm.generate import caption_samples, open_image, to_model
from dsanchor.mllm.scores import score_captions

__all__ = ["training_batch", "train_adapter", "cider_at_fixed_g", "run_adapt"]


def training_batch(model_type: str, processor, images: list, prompt: str | list[str], captions: list[str]) -> dict:
    """Inputs with labels: the caption tokens (prompt and padding are -100); right padding.

    Args:
        prompt: one prompt for every image, or one per image.
    """
    family = get_family(model_type)
    tok = getattr(processor, "tokenizer", processor)
    prompts = [prompt] * len(images) if isinstance(prompt, str) else list(prompt)
    side = tok.padding_side
    tok.padding_side = "right"
    try:
        heads = {p: family.prepare(processor, images[:1], [p])["input_ids"].shape[1] for p in prompts}
        eos = tok.eos_token or ""
        if model_type == "idefics":  # the caption goes after "Assistant:"
            turns = [["User:", im, f"{p}\nAssistant: {c}{eos}"] for im, p, c in zip(images, prompts, captions,
                                                                                    strict=True)]
            inputs = processor(text=turns, return_tensors="pt", padding="longest")
        else:
            inputs = family.prepare(processor, images, [f"{p} {c}{eos}" for p, c in zip(prompts, captions,
                                                                                         strict=True)])
    finally:
        tok.padding_side = side
    labels = inputs["input_ids"].clone()
    for r, p in enumerate(prompts):
        labels[r, :heads[p]] = -100
    if "attention_mask" in inputs:
        labels[inputs["attention_mask"] == 0] = -100
    inputs["labels"] = labels
    return dict(inputs)


def _steps(model: nn.Module, model_type: str, processor, pairs: list[tuple[Any, str]], prompt: str,
           adapter: SeamAdapter, cfg: AdaptConfig, progress: bool) -> list[float]:
    """The optimizer steps (AdamW, cosine decay) on random batches of ``pairs``; the losses."""
    opt = torch.optim.AdamW(adapter.parameters(), lr=cfg.lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, cfg.steps) / cfg.steps)))
    gen = torch.Generator().manual_seed(cfg.seed)
    losses = []
    for _ in tqdm(range(cfg.steps), desc="mllm adapt", unit="step", disable=not progress):
        idx = torch.randint(len(pairs), (cfg.adapt_batch_size,), generator=gen).tolist()
        batch = training_batch(model_type, processor, [pairs[i][0] for i in idx], prompt, [pairs[i][1] for i in idx])
        loss = model(**to_model(batch, model)).loss
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(adapter.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
    return losses


def train_adapter(model: nn.Module, model_type: str, processor, pairs: list[tuple[Any, str]], prompt: str,
                  cfg: AdaptConfig, coarse_layer: int, progress: bool = True) -> tuple[SeamAdapter, list[float]]:
    """Train a :class:`SeamAdapter` on (image, caption) pairs with g ~ U[0, 1]; the model stays frozen."""
    torch.manual_seed(cfg.seed)
    dim = get_family(model_type).feature_dim(model)
    param = next(model.parameters())
    adapter = SeamAdapter(dim, cfg.rank).to(param.device)  # float32 weights, whatever the model's dtype
    requires = {n: p.requires_grad for n, p in model.named_parameters()}
    for p in model.parameters():
        p.requires_grad_(False)
    model.train()
    try:
        with attach_dsa(model, UniformG(cfg.seed), coarse_layer=coarse_layer,
                        state_fn=lambda vf, vc: vf.float().mean(1), adapter=adapter):
            losses = _steps(model, model_type, processor, pairs, prompt, adapter, cfg, progress)
    finally:
        model.eval()
        for n, p in model.named_parameters():
            p.requires_grad_(requires[n])
    adapter.eval()
    return adapter, losses


def cider_at_fixed_g(cfg: MLLMConfig, data: MLLMData, samples, grid_values: list[float], grid: GridConfig,
                     adapter: SeamAdapter | None, progress: bool) -> list[float]:
    """Val CIDEr-D of the captions at each fixed g (through ``adapter`` when given)."""
    prepare, decode = processor_fns(cfg.model_type, data.processor, cfg.caption_prompt)
    out = []
    for g in tqdm(grid_values, desc="CIDEr at fixed g", unit="g", disable=not progress):
        with attach_dsa(data.model, float(g), coarse_layer=cfg.coarse_layer, adapter=adapter):
            run = caption_samples(data.model, prepare, decode, samples, data.root, grid.batch_size,
                                  grid.max_new_tokens)
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


def run_adapt(cfg: MLLMConfig, grid: GridConfig, ac: AdaptConfig, progress: bool = True) -> dict[str, Any] | None:
    """What ``dsanchor mllm adapt`` runs (module docstring); writes OUT/adapter.safetensors and adapt_info.json."""
    if cfg.adapter:
        raise ConfigError("mllm adapt trains a new adapter; drop --adapter")
    data = load_mllm_data(cfg)
    if data.rank != 0:
        return None
    pairs = [(open_image(data.root, s), c.text) for s in data.split("train", cfg.limit) for c in s.captions]
    if not pairs:
        raise ConfigError(f"the train split has no captions to adapt on ({data.split_note})")
    val = data.split("val", ac.eval_images) if ac.eval_images else []
    values = g_grid(ac.eval_grid).tolist()
    times: dict[str, float] = {}
    tic = time.perf_counter()
    before = cider_at_fixed_g(cfg, data, val, values, grid, None, progress) if val else []
    times["before"], tic = time.perf_counter() - tic, time.perf_counter()
    adapter, losses = train_adapter(data.model, cfg.model_type, data.processor, pairs, cfg.caption_prompt, ac,
                                    cfg.coarse_layer, progress)
    times["train"], tic = time.perf_counter() - tic, time.perf_counter()
    out = Path(cfg.out)
    path = save_adapter(adapter, out, cfg.model_type, cfg.coarse_layer)
    after = cider_at_fixed_g(cfg, data, val, values, grid, adapter, progress) if val else []
    times["after"] = time.perf_counter() - tic
    plot = _plot(values, before, after, out / "adapt_cider_vs_g.png") if val else None
    info = {"adapter": str(path), "bytes": path.stat().st_size, "rank": ac.rank, "n_pairs": len(pairs),
            "g": values, "cider_before": before, "cider_after": after, "n_val_images": len(val),
            "loss_first": losses[:10], "loss_last": losses[-10:], "plot": str(plot) if plot else None,
            "seconds": times}
    write_json(out / "adapt_info.json", info)
    return info
