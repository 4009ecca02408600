import pytest
import torch

from companion.masking import gaussian_blur
from companion.models.watermark import (
    KINDS,
    Distortion,
    Localiser,
    WatermarkDecoder,
    WatermarkEncoder,
    jpeg_approx,
    psnr,
    scale_to_psnr,
)


def test_encoder_output_shape_and_target_psnr():
    torch.manual_seed(0)
    enc = WatermarkEncoder(bits=8, channels=8, depth=2, target_psnr=33.0, tile=4)
    x = torch.rand(5, 3, 16, 16)
    msg = torch.randint(0, 2, (5, 8)).float()
    wm = enc(x, msg)
    assert wm.shape == x.shape
    assert torch.allclose(psnr(wm, x), torch.full((5,), 33.0), atol=1e-3)


@pytest.mark.parametrize("target", [20.0, 30.0, 45.0])
def test_scale_to_psnr_hits_the_target_for_any_residual(target):
    x = torch.rand(4, 3, 8, 8)
    r = torch.randn(4, 3, 8, 8) * torch.tensor([1e-3, 0.1, 1.0, 10.0]).view(4, 1, 1, 1)
    assert torch.allclose(psnr(x + scale_to_psnr(r, target), x), torch.full((4,), target), atol=1e-3)


def test_decoder_and_localiser_shapes():
    x = torch.rand(3, 3, 16, 16)
    assert WatermarkDecoder(bits=12, channels=8, depth=2, tile=4)(x).shape == (3, 12)
    assert Localiser(channels=8, depth=2)(x).shape == (3, 1, 16, 16)


def test_every_distortion_is_the_identity_at_zero_strength():
    layer = Distortion(gaussian_blur)
    x = torch.rand(2, 3, 16, 16)
    for kind in KINDS:
        assert torch.equal(layer.apply(x, kind, 0.0), x)


@pytest.mark.parametrize("kind", [k for k in KINDS if k != "identity"])
def test_every_distortion_is_differentiable_and_changes_the_image(kind):
    layer = Distortion(gaussian_blur)
    x = torch.rand(2, 3, 16, 16, requires_grad=True)
    y = layer.apply(x, kind, layer.max_strength[kind], torch.Generator().manual_seed(0))
    assert y.shape == x.shape and not torch.allclose(y, x)
    (y * torch.randn_like(y)).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_jpeg_approx_is_close_to_the_image_and_removes_detail():
    x = torch.rand(1, 3, 16, 16)
    y = jpeg_approx(x, 1.0)
    assert (y - x).abs().mean() < 0.2
    assert (y - x).abs().mean() > 1e-3


def test_random_distortion_draws_kinds_from_the_generator():
    layer = Distortion(gaussian_blur, kinds=("identity", "noise"))
    x = torch.rand(2, 3, 8, 8)
    a = layer(x, torch.Generator().manual_seed(5))
    b = layer(x, torch.Generator().manual_seed(5))
    assert torch.equal(a, b)
    with pytest.raises(ValueError):
        Distortion(gaussian_blur, kinds=("crop",))
