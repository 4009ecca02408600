"""Tests of companion.masking.layer (layer masking by an fx graph pass) and companion.models.cnn.

Mask convention: bool (N, 1, H, W), True = keep.
"""

from __future__ import annotations

import copy
import gc
import weakref

import pytest
import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F

from companion.masking.layer import SUPPORTED_OPS, feature_maps, layer_masked, layer_masked_forward, supports_layer_masking
from companion.models.cnn import BasicBlock, ResNet, SmallCNN, resnet18_like

ATOL = 1e-5


def _randomize_batchnorm(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial BN statistics and affine terms, so masked positions become non-zero after BN."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            c = m.num_features
            m.running_mean.copy_(torch.rand(c, generator=g) * 2 - 1)
            m.running_var.copy_(torch.rand(c, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(c, generator=g) + 0.5)
            m.bias.data.copy_(torch.rand(c, generator=g) * 2 - 1)
    return model.eval()


def sequential_cnn() -> nn.Sequential:
    """A plain Sequential CNN covering the other supported layers: 5x5 and dilated convs with bias, average
    pools (with and without padding), a max pool over signed values, a strided conv and a 1x1 conv."""
    return nn.Sequential(
        nn.Conv2d(3, 8, 5, padding=2),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.AvgPool2d(2),
        nn.Conv2d(8, 8, 3, padding=2, dilation=2),
        nn.MaxPool2d(3, stride=2, padding=1),
        nn.Conv2d(8, 16, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.AvgPool2d(3, stride=1, padding=1),
        nn.Conv2d(16, 16, 1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(16, 3),
    )


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """These tests run many tiny ops; with two threads on a busy 2-core machine each parallel region can
    wait for a descheduled thread (measured: 6 s alone, 37 s beside another job). One thread avoids it."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


MODELS = {
    "small_cnn": lambda: SmallCNN(3, 4, widths=(8, 16, 32)),
    "resnet": lambda: ResNet(3, 5, widths=(8, 16, 32), blocks=(1, 2, 1)),  # two downsampling blocks
    "sequential_avgpool": sequential_cnn,
}
SIZE = 24


@pytest.fixture(params=list(MODELS))
def model(request) -> nn.Module:
    torch.manual_seed(0)
    return _randomize_batchnorm(MODELS[request.param]())


def images(n: int = 3, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(seed))


def block_mask(n: int = 3, cell: int = 4, p: float = 0.35, seed: int = 2) -> torch.Tensor:
    """Random square blocks removed (each cell x cell cell with probability p)."""
    g = torch.Generator().manual_seed(seed)
    keep = torch.rand(n, 1, SIZE // cell, SIZE // cell, generator=g) >= p
    return keep.repeat_interleave(cell, 2).repeat_interleave(cell, 3)


def irregular_mask(n: int = 3, p: float = 0.35, seed: int = 3) -> torch.Tensor:
    """Every pixel removed independently with probability p."""
    return torch.rand(n, 1, SIZE, SIZE, generator=torch.Generator().manual_seed(seed)) >= p


def _scramble_masked(x: torch.Tensor, mask: torch.Tensor, seed: int = 4) -> torch.Tensor:
    noise = 10 * torch.randn(x.shape, generator=torch.Generator().manual_seed(seed)) + 3
    return torch.where(mask, x, noise)


# ---------------------------------------------------------------------------------------------------
# models.cnn


def test_small_cnn_shapes():
    model = SmallCNN().eval()
    x = torch.randn(2, 3, 32, 32)
    feats = model.forward_features(x)
    assert feats.shape == (2, 64, 8, 8)
    assert model.forward_head(feats).shape == (2, 4)
    assert torch.equal(model(x), model.forward_head(feats))


def test_resnet_shapes_with_downsampling_blocks():
    model = ResNet(3, 5, widths=(8, 16, 32), blocks=(1, 2, 1)).eval()
    x = torch.randn(2, 3, 16, 16)
    assert model.forward_features(x).shape == (2, 32, 4, 4)
    assert model(x).shape == (2, 5)
    assert isinstance(model.stages[1][0].shortcut, nn.Sequential)  # strided 1x1 conv + BN
    assert isinstance(model.stages[1][1].shortcut, nn.Identity)
    strided = ResNet(1, 2, widths=(4, 8), blocks=(1, 1), stem_stride=2).eval()
    assert strided.forward_features(torch.randn(1, 1, 16, 16)).shape == (1, 8, 4, 4)


def test_basic_block_shapes():
    assert BasicBlock(4, 8, stride=2)(torch.randn(2, 4, 8, 8)).shape == (2, 8, 4, 4)
    assert BasicBlock(4, 4)(torch.randn(2, 4, 8, 8)).shape == (2, 4, 8, 8)


def test_resnet18_like_is_resnet18_shaped():
    model = resnet18_like(num_classes=10).eval()
    assert 11.1e6 < sum(p.numel() for p in model.parameters()) < 11.3e6
    assert [len(stage) for stage in model.stages] == [2, 2, 2, 2]
    with torch.no_grad():
        assert model.forward_features(torch.randn(1, 3, 32, 32)).shape == (1, 512, 4, 4)


@pytest.mark.parametrize("name", list(MODELS))
def test_models_trace_with_torch_fx(name):
    model = MODELS[name]().eval()
    x = torch.randn(2, 3, SIZE, SIZE)
    assert torch.allclose(fx.symbolic_trace(model)(x), model(x))


# ---------------------------------------------------------------------------------------------------
# layer masking


@torch.no_grad()
def test_all_true_mask_equals_plain_forward(model):
    x = images()
    keep_all = torch.ones(3, 1, SIZE, SIZE, dtype=torch.bool)
    torch.testing.assert_close(layer_masked(model)(x, keep_all), model(x), atol=ATOL, rtol=0)


@pytest.mark.parametrize("make_mask", [block_mask, irregular_mask], ids=["blocks", "irregular"])
@torch.no_grad()
def test_layer_masking_ignores_masked_pixels(model, make_mask):
    x, mask = images(), make_mask()
    masked = layer_masked(model)
    out = masked(x, mask)
    torch.testing.assert_close(masked(_scramble_masked(x, mask), mask), out, atol=ATOL, rtol=0)
    assert not torch.allclose(out, model(x), atol=1e-3)  # the mask does change the output


@torch.no_grad()
def test_nan_under_the_mask_does_not_leak(model):
    x, mask = images(), block_mask()
    with_nan = torch.where(mask, x, torch.full_like(x, float("nan")))
    torch.testing.assert_close(layer_masked(model)(with_nan, mask), layer_masked(model)(x, mask))


@pytest.mark.parametrize("make_mask", [block_mask, irregular_mask], ids=["blocks", "irregular"])
@torch.no_grad()
def test_optimised_variant_matches_the_literal_algorithm(model, make_mask):
    """Lazy re-masking, pruned fill rounds and the sparse fill change nothing at visible positions."""
    x, mask = images(), make_mask()
    reference = layer_masked(model, reference=True)(x, mask)
    torch.testing.assert_close(layer_masked(model)(x, mask), reference, atol=ATOL, rtol=0)
    torch.testing.assert_close(layer_masked(model, fill="dense")(x, mask), reference, atol=ATOL, rtol=0)


@torch.no_grad()
def test_all_false_mask_gives_head_on_zero_features(model):
    drop_all = torch.zeros(3, 1, SIZE, SIZE, dtype=torch.bool)
    out = layer_masked(model)(images(), drop_all)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, layer_masked(model)(images(seed=9), drop_all))  # input-independent
    head = model[-1] if isinstance(model, nn.Sequential) else model.fc
    torch.testing.assert_close(out, head.bias.expand_as(out))


@torch.no_grad()
def test_one_fully_masked_image_in_a_batch(model):
    mask = block_mask()
    mask[1] = False
    out = layer_masked(model)(images(), mask)
    assert torch.isfinite(out).all()


@torch.no_grad()
def test_channels_last_matches_nchw():
    torch.manual_seed(0)
    model = _randomize_batchnorm(MODELS["resnet"]())
    x, mask = images(), block_mask()
    expected = layer_masked(model)(x, mask)
    model_cl = copy.deepcopy(model).to(memory_format=torch.channels_last)
    got = layer_masked(model_cl)(x.contiguous(memory_format=torch.channels_last), mask)
    torch.testing.assert_close(got, expected, atol=ATOL, rtol=0)


def test_gradient_is_zero_on_masked_pixels():
    torch.manual_seed(0)
    model = _randomize_batchnorm(MODELS["resnet"]())
    x, mask = images().requires_grad_(), block_mask()
    layer_masked_forward(model, x, mask).sum().backward()
    assert x.grad[~mask.expand_as(x)].abs().max() == 0
    assert x.grad[mask.expand_as(x)].abs().max() > 0


class _WithGELU(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.act, self.fc = nn.Conv2d(3, 4, 3, padding=1), nn.GELU(), nn.Linear(4, 2)

    def forward(self, x):
        return self.fc(self.act(self.conv(x)).mean((2, 3)))


class _WithSigmoid(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.fc = nn.Conv2d(3, 4, 3, padding=1), nn.Linear(4, 2)

    def forward(self, x):
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(torch.sigmoid(self.conv(x)), 1), 1))


@pytest.mark.parametrize("model_cls, op_name", [(_WithGELU, "GELU"), (_WithSigmoid, "sigmoid")])
def test_unsupported_op_raises_naming_it(model_cls, op_name):
    model = model_cls().eval()
    with pytest.raises(NotImplementedError, match=op_name) as err:
        layer_masked(model)
    assert "nn.Conv2d" in str(err.value)  # the message lists the supported ops
    assert not supports_layer_masking(model)


def test_supported_models_are_reported_supported(model):
    assert supports_layer_masking(model)
    assert len(SUPPORTED_OPS) > 5


@torch.no_grad()
def test_feature_maps_keys_agree_and_masked_maps_are_zero_where_masked(model):
    x, mask = images(), block_mask()
    logits, plain = feature_maps(model, x)
    torch.testing.assert_close(logits, model(x))
    masked_logits, masked, masks = feature_maps(model, x, mask, return_masks=True)
    torch.testing.assert_close(masked_logits, layer_masked(model)(x, mask), atol=ATOL, rtol=0)
    assert list(plain) == list(masked) == list(masks) and len(plain) >= 5
    for name, act in masked.items():
        assert act.shape == plain[name].shape
        assert masks[name].shape == (act.shape[0], 1, *act.shape[2:]) and masks[name].dtype == torch.bool
        assert (act * ~masks[name]).abs().max() == 0, name
    first = next(iter(masks))  # the first conv: visible where its window holds a visible pixel
    k = 5 if isinstance(model, nn.Sequential) else 3
    expected = F.max_pool2d(mask.float(), k, 1, k // 2) > 0
    assert torch.equal(masks[first], expected)


@torch.no_grad()
def test_feature_maps_grey_patch_spreads_under_fill_but_not_under_layer_masking():
    torch.manual_seed(0)
    model = _randomize_batchnorm(MODELS["small_cnn"]())
    x = images(1)
    mask = torch.ones(1, 1, SIZE, SIZE, dtype=torch.bool)
    mask[..., 4:20, 4:20] = False
    _, grey = feature_maps(model, torch.where(mask, x, torch.full_like(x, 0.5)))
    _, layer = feature_maps(model, x, mask)
    centre = (slice(None), slice(None), slice(10, 14), slice(10, 14))  # deep inside the patch
    assert grey["features_0_0"][centre].abs().max() > 0
    assert layer["features_0_0"][centre].abs().max() == 0


def test_transformed_module_is_cached_per_model_and_variant():
    model = SmallCNN(3, 4, widths=(4, 8)).eval()
    assert layer_masked(model) is layer_masked(model)
    assert layer_masked(model, reference=True) is not layer_masked(model)
    assert layer_masked(model).graph_module().get_submodule("features.0.0") is model.features[0][0]  # shared
    ref = weakref.ref(model)
    del model
    gc.collect()
    assert ref() is None  # the cache does not keep the model alive


def test_transformed_code_skips_fills_a_resnet_block_does_not_need():
    model = ResNet(3, 5, widths=(8, 16), blocks=(2, 1)).eval()
    code = layer_masked(model).code
    convs3x3 = sum(isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3) for m in model.modules())
    assert 0 < code.count("_fill_rings_(") < convs3x3
    gpu_code = layer_masked(model).graph_module("cuda").code  # other devices get the dense fill
    assert "_fill_dense(" in gpu_code and "_fill_rings_(" not in gpu_code


def test_bad_mask_shape_is_rejected():
    model = SmallCNN(3, 4, widths=(4, 8)).eval()
    with pytest.raises(ValueError, match="mask"):
        layer_masked(model)(torch.randn(2, 3, 16, 16), torch.ones(2, 1, 8, 8, dtype=torch.bool))


@torch.no_grad()
def test_normalized_wrapper_masks_the_model_not_the_normalisation():
    from companion import masking
    from companion.masking.layer import Normalized

    torch.manual_seed(0)
    net = _randomize_batchnorm(MODELS["small_cnn"]())
    mean, std = torch.tensor([0.4, 0.5, 0.6]).view(1, 3, 1, 1), torch.tensor([0.2, 0.3, 0.25]).view(1, 3, 1, 1)
    wrapped = Normalized(net, lambda x: (x - mean) / std).eval()
    x, mask = images().sigmoid(), block_mask()
    torch.testing.assert_close(wrapped(x), net((x - mean) / std))
    layer = masking.apply(wrapped, x, mask, "layer")
    torch.testing.assert_close(layer, layer_masked(net)((x - mean) / std, mask))
    torch.testing.assert_close(masking.apply(wrapped, _scramble_masked(x, mask), mask, "layer"), layer, atol=ATOL, rtol=0)
    torch.testing.assert_close(masking.apply(wrapped, x, mask, "grey"), net((torch.where(mask, x, 0.5) - mean) / std))
