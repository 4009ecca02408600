import pytest
import torch

from companion.masks.tokens import token_ratio_mask, token_to_pixel_mask
from companion.models.dit import DiT, gather_tokens, keep_index, scatter_tokens


def small(mixer_depth=1, seed=0):
    torch.manual_seed(seed)
    model = DiT(image_size=8, patch_size=2, dim=32, depth=2, heads=4, mlp_ratio=2.0, mixer_depth=mixer_depth).eval()
    torch.nn.init.normal_(model.head.weight, std=0.1)  # the zero-initialised head would make every output 0
    return model


def inputs(n=3):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(n, 3, 8, 8, generator=g)
    t = torch.randint(0, 100, (n,), generator=g)
    captions = torch.randint(0, 9, (n, 4), generator=g)
    return x, t, captions


@pytest.mark.parametrize("mixer_depth", [0, 1])
def test_keeping_all_tokens_in_any_order_equals_the_unmasked_path(mixer_depth):
    model = small(mixer_depth)
    x, t, captions = inputs()
    with torch.no_grad():
        full = model(x, t, captions)
        every = model(x, t, captions, keep=torch.arange(16).expand(3, -1))
        shuffled = model(x, t, captions, keep=torch.stack([torch.randperm(16) for _ in range(3)]))
    assert full.shape == x.shape
    assert torch.allclose(every, full, atol=1e-6)
    assert torch.allclose(shuffled, full, atol=1e-5)


def test_dropped_patches_are_zero_and_kept_ones_ignore_dropped_inputs_without_mixer():
    model = small(mixer_depth=0)
    x, t, captions = inputs()
    visible = token_ratio_mask(3, 16, 0.75, torch.Generator().manual_seed(0))
    keep = keep_index(visible)
    pixels = token_to_pixel_mask(visible, 2)
    with torch.no_grad():
        out = model(x, t, captions, keep=keep)
        # naive masking: changing a dropped patch's input changes nothing
        out2 = model(torch.where(pixels, x, torch.randn_like(x)), t, captions, keep=keep)
    assert keep.shape == (3, 4)
    assert torch.all(out[~pixels.expand_as(out)] == 0) and torch.all(out[pixels.expand_as(out)] != 0)
    assert torch.allclose(out, out2, atol=1e-6)


def test_deferred_masking_lets_kept_tokens_see_dropped_patches():
    model = small(mixer_depth=1)
    x, t, captions = inputs()
    visible = token_ratio_mask(3, 16, 0.75, torch.Generator().manual_seed(0))
    keep = keep_index(visible)
    pixels = token_to_pixel_mask(visible, 2)
    with torch.no_grad():
        out = model(x, t, captions, keep=keep)
        out2 = model(torch.where(pixels, x, torch.randn_like(x)), t, captions, keep=keep)
    assert not torch.allclose(out, out2, atol=1e-4)


def test_captions_condition_the_output_and_untrained_model_predicts_zero():
    model = small()
    x, t, captions = inputs()
    with torch.no_grad():
        a = model(x, t, captions)
        b = model(x, t, {"captions": (captions + 1) % 9})
        assert not torch.allclose(a, b)
        assert torch.equal(DiT(image_size=8, dim=32, depth=1)(x, t, captions), torch.zeros_like(x))


def test_keep_index_gather_scatter_round_trip():
    visible = torch.tensor([[True, False, True, False], [False, True, True, False]])
    keep = keep_index(visible)
    assert keep.tolist() == [[0, 2], [1, 2]]
    x = torch.arange(8.0).view(2, 4, 1)
    kept = gather_tokens(x, keep)
    assert torch.equal(scatter_tokens(kept, keep, 4), x * visible[..., None])
    with pytest.raises(ValueError):
        keep_index(torch.tensor([[True, False], [True, True]]))
