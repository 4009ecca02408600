import pytest
import torch

from companion import masking
from companion.models import ViT, ViTConfig


def _half_mask(n=2, size=8):
    keep = torch.ones(n, 1, size, size, dtype=torch.bool)
    keep[..., : size // 2] = False
    return keep


def test_fills_replace_only_removed_pixels():
    x = torch.rand(2, 3, 8, 8)
    keep = _half_mask()
    for strategy, value in [("black", 0.0), ("grey", 0.5)]:
        out = masking.fill(x, keep, strategy)
        assert torch.equal(out[..., 4:], x[..., 4:])
        assert (out[..., :4] == value).all()


def test_mean_fill_uses_the_visible_pixels_colour():
    x = torch.zeros(1, 3, 8, 8)
    x[..., 4:] = torch.tensor([0.2, 0.4, 0.6]).view(1, 3, 1, 1)
    out = masking.fill(x, _half_mask(1), "mean")
    assert torch.allclose(out[0, :, 0, 0], torch.tensor([0.2, 0.4, 0.6]))


def test_blur_fill_is_smooth():
    x = torch.rand(1, 1, 16, 16)
    out = masking.fill(x, torch.zeros(1, 1, 16, 16, dtype=torch.bool), "blur")
    assert out.std() < x.std() / 2


def test_apply_rejects_unknown_strategy_and_bad_masks():
    model = torch.nn.Flatten()
    with pytest.raises(ValueError, match="unknown masking strategy 'pink'"):
        masking.apply(model, torch.rand(1, 1, 4, 4), torch.ones(1, 1, 4, 4, dtype=torch.bool), "pink")
    with pytest.raises(ValueError, match="bool"):
        masking.apply(model, torch.rand(1, 1, 4, 4), torch.ones(1, 1, 4, 4), "grey")


def test_vit_token_dropping_ignores_removed_patches():
    torch.manual_seed(0)
    vit = ViT(ViTConfig(image_size=16, patch_size=4, in_channels=3, num_classes=3, dim=16, depth=2, heads=2)).eval()
    x = torch.rand(2, 3, 16, 16)
    keep = torch.ones(2, 1, 16, 16, dtype=torch.bool)
    keep[:, :, 4:8, 0:12] = False
    keep[1, :, 0:1, 0:1] = False  # one pixel removes its whole patch
    noisy = torch.where(keep, x, torch.rand_like(x))
    a, b = masking.apply(vit, x, keep, "layer"), masking.apply(vit, noisy, keep, "layer")
    assert torch.allclose(a, b, atol=1e-5)
    assert not torch.allclose(vit(x), vit(noisy), atol=1e-3)  # the content under the mask does matter


def test_vit_all_kept_mask_is_the_plain_forward():
    vit = ViT(ViTConfig(image_size=16, patch_size=4, dim=16, depth=1, heads=2)).eval()
    x = torch.rand(2, 3, 16, 16)
    keep = torch.ones(2, 1, 16, 16, dtype=torch.bool)
    assert torch.allclose(masking.apply(vit, x, keep, "layer"), vit(x), atol=1e-5)


def test_vit_attention_maps_are_distributions():
    vit = ViT(ViTConfig(image_size=16, patch_size=4, dim=16, depth=2, heads=2)).eval()
    feats, maps = vit.forward_features(torch.rand(1, 3, 16, 16), return_attention=True)
    assert feats.shape == (1, 16) and len(maps) == 2 and maps[0].shape == (1, 2, 17, 17)
    assert torch.allclose(maps[0].sum(-1), torch.ones(1, 2, 17))
