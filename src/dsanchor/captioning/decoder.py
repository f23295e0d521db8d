"""A small transformer caption decoder over the anchored visual tokens V'.

Architecture (Vaswani et al. 2017, "Attention Is All You Need", decoder side; pre-norm as in GPT-2):
token + learned position embeddings, ``layers`` blocks of causal self-attention, cross-attention to
the memory and an MLP, a final LayerNorm and a linear head over the vocabulary. Decoding keeps a
key/value cache, so each new token costs one position. The memory is V'
(:mod:`dsanchor.captioning.tokens`) projected to the model width; slots carry no order embedding,
since region order in the store is arbitrary. The decoder also owns the box-position term of V_coarse.

**Granularity start tokens** (a control code in place of ``<bos>``, as in CTRL, Keskar et al. 2019):
every granularity of ``config.granularities`` (scene, object, relation) has its own start token, with
input id ``vocab_size + k`` (an input embedding only: the head never predicts it). A training caption
starts with the token of its own granularity, so the decoder models p(caption | V', granularity)
instead of the mixture over granularities. That mixture is what an unconditioned decoder fits, and
greedy or beam search of it returns its mode, one caption kind for every image. Measured on the demo
(1000 scenes, 5 captions each: 40% scene, 40% object, 20% relation): "a" opens 54% of the train
captions (all object captions, half the relation captions), the unconditioned decoder's first-token
distribution after ``<bos>`` is that marginal at every g (p("a") = 0.54; "a" is the argmax for every
test image), and it goes on to "a <size> <colour> <material> <shape>", ended as an object caption:
100% of its test captions were object captions at every g and for every method, each naming exactly
one object, so CHAIR_i = CHAIR_s. ``<bos>`` stays the start of a caption of unknown granularity and,
with :attr:`~dsanchor.captioning.train.CaptionTrainConfig.unconditional`, of that unconditioned mixture.

Saved as ``decoder.safetensors`` + ``decoder_config.json`` (+ the vocabulary's ``vocab.json``, written
by training); loading never unpickles.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from torch.nn import functional as F

from dsanchor.captioning.granularity import GRANULARITIES, granularity_code
from dsanchor.captioning.tokenizer import BOS, Vocabulary
from dsanchor.captioning.tokens import CaptionSplit, ScenePositions, TokenPair, build_token_pair
from dsanchor.config import config_from_dict, config_to_dict
from dsanchor.errors import ConfigError, DataError
from dsanchor.files import write_json

__all__ = ["DecoderConfig", "CaptionDecoder", "DecoderBlock", "load_captioner"]

CONFIG_NAME = "decoder_config.json"
WEIGHTS_NAME = "decoder.safetensors"


@dataclass
class DecoderConfig:
    vocab_size: int = field(default=0, metadata={"help": "vocabulary size (set from the vocabulary)"})
    visual_dim: int = field(default=0, metadata={"help": "joint dimension D of the visual tokens (from the heads)"})
    width: int = field(default=128, metadata={"help": "model width"})
    layers: int = field(default=2, metadata={"help": "decoder blocks"})
    heads: int = field(default=4, metadata={"help": "attention heads"})
    ff_mult: int = field(default=2, metadata={"help": "MLP hidden size as a multiple of the width"})
    dropout: float = field(default=0.0, metadata={"help": "dropout while training"})
    max_len: int = field(default=0, metadata={"help": "longest token sequence with <bos> and <eos> (set from the "
                                                          "vocabulary: its max_len + 2)"})
    granularities: tuple[str, ...] = field(default=(), metadata={
        "help": "caption granularities with their own start token (scene, object, relation); empty: set by "
                "training to those of the train captions"})


KVCache = list[tuple[torch.Tensor, torch.Tensor]]  # per block: self-attention keys, values (B, H, t, W / H)


class DecoderBlock(nn.Module):
    """Pre-norm block: causal self-attention, cross-attention to the memory, MLP; with a key/value cache."""

    def __init__(self, width: int, heads: int, hidden: int, dropout: float):
        super().__init__()
        self.heads, self.dropout = heads, dropout
        self.ln_self, self.ln_cross, self.ln_mlp = nn.LayerNorm(width), nn.LayerNorm(width), nn.LayerNorm(width)
        self.qkv = nn.Linear(width, 3 * width)
        self.self_out = nn.Linear(width, width)
        self.q_cross = nn.Linear(width, width)
        self.kv_cross = nn.Linear(width, 2 * width)
        self.cross_out = nn.Linear(width, width)
        self.mlp = nn.Sequential(nn.Linear(width, hidden), nn.GELU(), nn.Linear(hidden, width))
        self.drop = nn.Dropout(dropout)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        b, n, w = x.shape
        return x.view(b, n, self.heads, w // self.heads).transpose(1, 2)  # (B, H, n, W/H)

    def _merge(self, x: torch.Tensor) -> torch.Tensor:
        b, h, n, d = x.shape
        return x.transpose(1, 2).reshape(b, n, h * d)  # (B, n, W)

    def memory_kv(self, memory: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Cross-attention keys and values of the memory (B, R, W), each (B, H, R, W / H)."""
        k, v = self.kv_cross(memory).chunk(2, dim=-1)
        return self._heads(k), self._heads(v)

    def forward(self, x: torch.Tensor, mem_kv: tuple[torch.Tensor, torch.Tensor], mask: torch.Tensor,
                cache: tuple[torch.Tensor, torch.Tensor] | None = None):
        """x (B, L, W) new positions; mask (B, R); cache: keys/values of earlier positions. Returns x, cache."""
        p = self.dropout if self.training else 0.0
        q, k, v = (self._heads(t) for t in self.qkv(self.ln_self(x)).chunk(3, dim=-1))  # (B, H, L, W/H)
        if cache is not None:
            k, v = torch.cat([cache[0], k], dim=2), torch.cat([cache[1], v], dim=2)
        causal = cache is None and x.shape[1] > 1
        a = F.scaled_dot_product_attention(q, k, v, dropout_p=p, is_causal=causal)  # (B, H, L, W/H)
        x = x + self.drop(self.self_out(self._merge(a)))
        q = self._heads(self.q_cross(self.ln_cross(x)))
        a = F.scaled_dot_product_attention(q, *mem_kv, attn_mask=mask[:, None, None, :], dropout_p=p)
        x = x + self.drop(self.cross_out(self._merge(a)))
        x = x + self.drop(self.mlp(self.ln_mlp(x)))
        return x, (k, v)


class CaptionDecoder(nn.Module):
    """Transformer decoder cross-attending to V' (see module docstring)."""

    def __init__(self, config: DecoderConfig):
        super().__init__()
        if config.vocab_size <= 4 or config.visual_dim <= 0 or config.max_len < 3:
            raise ConfigError("DecoderConfig needs vocab_size > 4, visual_dim > 0 and max_len >= 3 (set from the "
                              "vocabulary and the alignment heads)")
        if config.width % config.heads:
            raise ConfigError(f"decoder width {config.width} must be a multiple of heads {config.heads}")
        codes = [granularity_code(name) for name in config.granularities]
        if len(set(codes)) != len(codes):
            raise ConfigError(f"decoder granularities repeat a name: {list(config.granularities)}")
        self.config = c = config
        start = torch.full((len(GRANULARITIES) + 1,), BOS, dtype=torch.long)  # code + 1 -> start id; -1: <bos>
        for k, code in enumerate(codes):
            start[code + 1] = c.vocab_size + k
        self.register_buffer("_start", start, persistent=False)
        self.positions = ScenePositions(c.visual_dim)
        self.memory_proj = nn.Sequential(nn.Linear(c.visual_dim, c.width), nn.LayerNorm(c.width))
        self.tok_emb = nn.Embedding(c.vocab_size + len(codes), c.width)  # words, then the start tokens
        self.pos_emb = nn.Embedding(c.max_len, c.width)
        self.blocks = nn.ModuleList(DecoderBlock(c.width, c.heads, c.ff_mult * c.width, c.dropout)
                                    for _ in range(c.layers))
        self.norm = nn.LayerNorm(c.width)
        self.head = nn.Linear(c.width, c.vocab_size)
        self.drop = nn.Dropout(c.dropout)
        nn.init.normal_(self.tok_emb.weight, std=0.02)
        nn.init.normal_(self.pos_emb.weight, std=0.02)

    def start_ids(self, granularity: torch.Tensor) -> torch.Tensor:
        """Start token of each caption from its granularity code (M,) (-1 or a granularity without a start
        token of its own: <bos>). Returns (M,) input ids."""
        return self._start[granularity.long() + 1]

    def token_pair(self, split: CaptionSplit, idx: torch.Tensor | slice = slice(None)) -> TokenPair:
        """V_fine and V_coarse of (a subset of) a split's images, each (B, R, D)."""
        return build_token_pair(split.coarse[idx], split.regions[idx], split.boxes[idx], split.mask[idx],
                                self.positions)

    def encode(self, visual: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """V' (B, R, D) -> per block, the cross-attention keys and values of the memory (B, H, R, W / H)."""
        memory = self.memory_proj(visual)  # (B, R, W)
        return [blk.memory_kv(memory) for blk in self.blocks]

    def _run(self, inputs: torch.Tensor, start: int, mem_kv: list, mask: torch.Tensor,
             cache: KVCache | None) -> tuple[torch.Tensor, KVCache]:
        L = inputs.shape[1]
        if start + L > self.config.max_len:
            raise ConfigError(f"token sequence of length {start + L} exceeds the decoder's max_len "
                              f"{self.config.max_len}")
        pos = torch.arange(start, start + L, device=inputs.device)
        x = self.drop(self.tok_emb(inputs) + self.pos_emb(pos))  # (B, L, W)
        new_cache = []
        for i, blk in enumerate(self.blocks):
            x, kv = blk(x, mem_kv[i], mask, None if cache is None else cache[i])
            new_cache.append(kv)
        return self.head(self.norm(x)), new_cache  # (B, L, V)

    def decode(self, inputs: torch.Tensor, mem_kv: list, mask: torch.Tensor) -> torch.Tensor:
        """Teacher-forced next-token logits (B, L, V) of inputs (B, L) starting with <bos>; mask (B, R)."""
        return self._run(inputs, 0, mem_kv, mask, None)[0]

    def step(self, tokens: torch.Tensor, mem_kv: list, mask: torch.Tensor,
             cache: KVCache | None) -> tuple[torch.Tensor, KVCache]:
        """Logits (B, V) of the token after ``tokens`` (B, 1), given the cache of the earlier positions."""
        start = 0 if cache is None else cache[0][0].shape[2]
        logits, cache = self._run(tokens, start, mem_kv, mask, cache)
        return logits[:, -1], cache

    def forward(self, visual: torch.Tensor, mask: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
        """Teacher-forced logits (B, L, V) for V' (B, R, D), mask (B, R) and inputs (B, L)."""
        return self.decode(inputs, self.encode(visual), mask)

    def save_pretrained(self, path: str | Path, vocab: Vocabulary | None = None) -> Path:
        out = Path(path)
        out.mkdir(parents=True, exist_ok=True)
        save_file({k: v.detach().contiguous() for k, v in self.state_dict().items()}, str(out / WEIGHTS_NAME))
        write_json(out / CONFIG_NAME, config_to_dict(self.config))
        if vocab is not None:
            vocab.save(out)
        return out

    @classmethod
    def from_pretrained(cls, path: str | Path) -> CaptionDecoder:
        p = Path(path)
        if not (p / CONFIG_NAME).is_file() or not (p / WEIGHTS_NAME).is_file():
            raise DataError(p, f"not a saved caption decoder: expected {CONFIG_NAME} and {WEIGHTS_NAME} "
                               "(train one with `dsanchor caption train`)")
        cfg = config_from_dict(DecoderConfig, json.loads((p / CONFIG_NAME).read_text()), where=str(p / CONFIG_NAME))
        model = cls(cfg)
        try:
            model.load_state_dict(load_file(str(p / WEIGHTS_NAME)))
        except RuntimeError as exc:
            raise DataError(p, f"{WEIGHTS_NAME} does not fit {CONFIG_NAME} ({str(exc).splitlines()[0]}); the "
                               "files come from different runs") from None
        return model.eval()


def load_captioner(path: str | Path) -> tuple[CaptionDecoder, Vocabulary]:
    """The decoder and vocabulary saved in one directory by :func:`dsanchor.captioning.train.train_decoder`."""
    decoder = CaptionDecoder.from_pretrained(path)
    vocab = Vocabulary.load(path)
    if len(vocab) != decoder.config.vocab_size:
        raise DataError(path, f"vocab.json has {len(vocab)} entries but the decoder expects "
                              f"{decoder.config.vocab_size}; the files come from different runs")
    return decoder, vocab
