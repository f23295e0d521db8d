"""The ``clip`` backend: transformers' CLIPModel loaded from a local directory.

Radford et al., "Learning Transferable Visual Models From Natural Language Supervision" (2021).

- coarse: the CLS token of an early vision layer (``coarse_layer``), through the model's own
  ``post_layernorm`` and ``visual_projection``, as if that layer were the last;
- regions: the last layer's patch tokens, layer-normed per token, laid out on the patch grid,
  RoI-aligned over each box and projected by ``visual_projection``;
- texts: ``get_text_features``, L2-normalised.

The directory is what ``CLIPModel.save_pretrained`` plus a tokenizer's ``save_pretrained`` write
(config.json, weights, tokenizer files, optionally preprocessor_config.json for the mean and std).
Nothing is downloaded. :func:`save_tiny_clip` writes a tiny random one for tests and smoke runs.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from dsanchor.encoders.base import EncoderBackend, EncoderConfig, EncoderDims
from dsanchor.encoders.regions import roi_vectors
from dsanchor.encoders.transforms import CLIP_MEAN, CLIP_STD, ImageTransform
from dsanchor.errors import ConfigError, MissingDependencyError
from dsanchor.integrations.small_models import byte_level_clip_tokenizer

__all__ = ["CLIPEncoder", "CLIPEncoderConfig", "save_tiny_clip"]

CLIP_COARSE_POOLS: tuple[str, ...] = ("cls", "cls+grid2")


@dataclass
class CLIPEncoderConfig(EncoderConfig):
    """A local transformers CLIP checkpoint."""

    model_path: str | None = field(default=None, metadata={
        "help": "local CLIP directory (config.json, weights, tokenizer), as written by save_pretrained"})
    coarse_layer: int = field(default=4, metadata={
        "help": "vision layer whose CLS token is the coarse vector (0 = embeddings, k = after block k)"})
    coarse_pool: str = field(default="cls", metadata={
        "help": "coarse vector: cls, or cls+grid2 (also the 2x2 quadrant means of that layer's patches)"})
    image_size: int | None = field(default=None, metadata={
        "help": "input side in pixels; default the model's own (others interpolate the position embeddings)"})

    def __post_init__(self) -> None:
        if self.coarse_pool not in CLIP_COARSE_POOLS:
            raise ConfigError(f"coarse_pool must be one of {list(CLIP_COARSE_POOLS)} for encoder clip, "
                              f"got {self.coarse_pool!r}")


def _load_clip(model_path: str | None):
    if not model_path:
        raise MissingDependencyError("encoder clip needs a local CLIP directory: pass --model-path DIR "
                                     "(a folder written by CLIPModel.save_pretrained plus its tokenizer)")
    path = Path(model_path)
    if not (path / "config.json").is_file():
        raise MissingDependencyError(f"{path}: no CLIP model here (config.json missing); pass --model-path "
                                     "a folder written by CLIPModel.save_pretrained plus its tokenizer")
    try:
        from transformers import AutoTokenizer, CLIPModel
    except ImportError:
        raise MissingDependencyError("encoder clip needs transformers: pip install 'transformers>=5'") from None
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        model = CLIPModel.from_pretrained(str(path), local_files_only=True)
        tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    except (OSError, ValueError) as exc:
        raise MissingDependencyError(f"{path}: cannot load a CLIP model and tokenizer from here "
                                     f"({str(exc).splitlines()[0]})") from None
    return model.eval(), tokenizer


def _preprocessor_stats(path: Path) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Mean and std from preprocessor_config.json when present, else OpenAI CLIP's."""
    cfg_file = path / "preprocessor_config.json"
    if cfg_file.is_file():
        cfg = json.loads(cfg_file.read_text())
        if "image_mean" in cfg and "image_std" in cfg:
            return tuple(cfg["image_mean"]), tuple(cfg["image_std"])
    return CLIP_MEAN, CLIP_STD


def _pooled(output) -> torch.Tensor:
    """transformers v5 returns an output object whose projected tensor is ``pooler_output``."""
    return output if isinstance(output, torch.Tensor) else output.pooler_output


class CLIPEncoder(EncoderBackend):
    """CLIP: early-layer CLS as coarse, RoI-aligned last-layer patches as regions, projected."""

    name = "clip"
    config_class = CLIPEncoderConfig

    def __init__(self, config: CLIPEncoderConfig | None = None):
        config = config or CLIPEncoderConfig()
        super().__init__(config)
        self.model, self.tokenizer = _load_clip(config.model_path)
        self.model.to(self.device)
        vcfg = self.model.config.vision_config
        n_layers = int(vcfg.num_hidden_layers)
        if not 0 <= config.coarse_layer <= n_layers:
            raise ConfigError(f"coarse_layer must be in 0..{n_layers} for this CLIP ({n_layers} vision layers), "
                              f"got {config.coarse_layer}")
        size = int(config.image_size or vcfg.image_size)
        if size % int(vcfg.patch_size):
            raise ConfigError(f"image_size {size} is not a multiple of the patch size {vcfg.patch_size}")
        self._grid = size // int(vcfg.patch_size)
        self._interpolate = size != int(vcfg.image_size)
        mean, std = _preprocessor_stats(Path(config.model_path))
        self._transform = ImageTransform(size, mean, std)  # type: ignore[arg-type]
        proj = int(self.model.config.projection_dim)
        mult = 5 if config.coarse_pool == "cls+grid2" else 1
        self._dims = EncoderDims(coarse=proj * mult, region=proj, text=proj)
        self._max_len = int(self.model.config.text_config.max_position_embeddings)

    @property
    def dims(self) -> EncoderDims:
        return self._dims

    @property
    def transform(self) -> ImageTransform:
        return self._transform

    def _project(self, tokens: torch.Tensor) -> torch.Tensor:
        """(..., D) hidden states -> (..., P) in the joint space, through post_layernorm + projection."""
        vision = self.model.vision_model
        return self.model.visual_projection(vision.post_layernorm(tokens))

    def _patch_map(self, hidden: torch.Tensor) -> torch.Tensor:
        """(B, 1 + g*g, D) tokens -> (B, D, g, g) layer-normed patch map."""
        patches = self.model.vision_model.post_layernorm(hidden[:, 1:])  # (B, g*g, D)
        B, N, D = patches.shape
        return patches.transpose(1, 2).reshape(B, D, self._grid, self._grid)  # (B, D, g, g)

    def encode_pixels(self, pixels: torch.Tensor, boxes: torch.Tensor,
                      mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.inference_mode():
            out = self.model.vision_model(pixel_values=pixels.to(self.device), output_hidden_states=True,
                                          interpolate_pos_encoding=self._interpolate)
            early = out.hidden_states[self.config.coarse_layer]  # (B, 1 + g*g, D)
            coarse = self._project(early[:, 0])  # (B, P)
            if self.config.coarse_pool == "cls+grid2":
                quads = torch.nn.functional.adaptive_avg_pool2d(self._patch_map(early), 2)  # (B, D, 2, 2)
                quads = self.model.visual_projection(quads.flatten(2).transpose(1, 2))  # (B, 4, P)
                coarse = torch.cat([coarse, quads.flatten(1)], dim=1)  # (B, 5P)
            fmap = self._patch_map(out.last_hidden_state)  # (B, D, g, g)
            m = mask.to(self.device)
            pooled = roi_vectors(fmap, boxes.to(self.device), m, self.config.roi_samples)  # (B, R, D)
            regions = self.model.visual_projection(pooled) * m[..., None]  # (B, R, P)
        return coarse.float().cpu(), regions.float().cpu()

    def encode_texts(self, texts: Sequence[str]) -> torch.Tensor:
        if len(texts) == 0:
            return torch.zeros(0, self._dims.text)
        chunks = []
        bs = self.config.text_batch_size
        with torch.inference_mode():
            for i in range(0, len(texts), bs):
                enc = self.tokenizer(list(texts[i:i + bs]), padding=True, truncation=True,
                                     max_length=self._max_len, return_tensors="pt").to(self.device)
                feats = _pooled(self.model.get_text_features(input_ids=enc["input_ids"],
                                                            attention_mask=enc["attention_mask"]))  # (b, P)
                chunks.append(torch.nn.functional.normalize(feats.float(), dim=-1).cpu())
        return torch.cat(chunks)


def save_tiny_clip(path: str | Path, image_size: int = 32, patch_size: int = 8, hidden: int = 32,
                   layers: int = 2, projection_dim: int = 16, seed: int = 0) -> Path:
    """Write a tiny randomly initialised CLIP + byte-level tokenizer to ``path`` (no download).

    For tests and smoke runs of the ``clip`` backend; its vectors mean nothing.
    """
    from transformers import CLIPConfig, CLIPModel

    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer, bos, eos = byte_level_clip_tokenizer()
    common = dict(hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                  num_attention_heads=4)
    config = CLIPConfig(
        text_config=dict(vocab_size=eos + 1, max_position_embeddings=64, bos_token_id=bos,
                         eos_token_id=eos, pad_token_id=eos, **common),
        vision_config=dict(image_size=image_size, patch_size=patch_size, **common),
        projection_dim=projection_dim)
    torch.manual_seed(seed)
    CLIPModel(config).eval().save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out
