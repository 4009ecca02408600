"""An independent oracle for companion.masking.layer, written from the paper's description only.

The oracle below walks the model's modules one by one in plain PyTorch (no torch.fx, none of the helpers of
companion.masking.layer) and applies the layer-masking rules literally:

- before a k x k conv, k - 1 rounds of "every masked pixel with a visible 3x3 neighbour takes the mean of its
  visible neighbours" (each round grows the visible region by one ring);
- a conv or pool output is visible where its window holds a visible input (a max pool of the mask); the
  output is multiplied by that mask, and so are BatchNorm and ReLU outputs;
- a max pool sees visible values only; a residual add keeps the product of its two masks;
- the global average pool averages over visible positions.

It is compared with both variants of companion.masking.layer on SmallCNN, on the ResNet of
companion/models/cnn.py and on a one-block-per-stage ResNet-50 layout (companion/models/resnet.py), and the
fill itself is checked against values computed by hand on a 5 x 5 image.
Mask convention: bool or 0/1 float (N, 1, H, W), True / 1 = keep.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from companion.masking.layer import feature_maps, layer_masked
from companion.models.cnn import BasicBlock, ResNet, SmallCNN
from companion.models.resnet import Bottleneck, ResNet50

NEIGHBOURS = [(di, dj) for di in (-1, 0, 1) for dj in (-1, 0, 1) if (di, dj) != (0, 0)]


def fill_round(x: torch.Tensor, m: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One round: masked pixels next to a visible one := mean of their visible 3x3 neighbours.
    x (N, C, H, W), zero where masked; m (N, 1, H, W) float 0/1. Returns the new x and mask."""
    H, W = x.shape[-2:]
    total, count = torch.zeros_like(x), torch.zeros_like(m)
    for di, dj in NEIGHBOURS:  # neighbour (i + di, j + dj) of pixel (i, j); outside the image = not visible
        src_i, dst_i = slice(max(di, 0), H + min(di, 0)), slice(max(-di, 0), H + min(-di, 0))
        src_j, dst_j = slice(max(dj, 0), W + min(dj, 0)), slice(max(-dj, 0), W + min(-dj, 0))
        total[..., dst_i, dst_j] += x[..., src_i, src_j] * m[..., src_i, src_j]
        count[..., dst_i, dst_j] += m[..., src_i, src_j]
    ring = (m == 0) & (count > 0)
    return torch.where(ring, total / count.clamp_min(1), x), (m + ring.float())


def oracle(module: nn.Module, x: torch.Tensor, m: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(output, output mask) of ``module`` under layer masking; x is zero where m is 0."""
    if isinstance(module, (SmallCNN, ResNet, ResNet50)):  # children are registered in forward order
        for child in module.children():
            x, m = oracle(child, x, m)
        return x, m
    if isinstance(module, nn.Sequential):
        for child in module:
            x, m = oracle(child, x, m)
        return x, m
    if isinstance(module, BasicBlock):
        y, my = oracle(nn.Sequential(module.conv1, module.bn1, module.act1, module.conv2, module.bn2), x, m)
        s, ms = oracle(module.shortcut, x, m)
        return oracle(module.act2, (y + s) * my * ms, my * ms)
    if isinstance(module, Bottleneck):
        body = [module.conv1, module.bn1, module.relu, module.conv2, module.bn2, module.relu, module.conv3, module.bn3]
        y, my = oracle(nn.Sequential(*body), x, m)
        s, ms = oracle(module.downsample, x, m)
        return oracle(module.relu, (y + s) * my * ms, my * ms)
    if isinstance(module, nn.Conv2d):
        filled, grown = x, m
        for _ in range(module.kernel_size[0] - 1):
            filled, grown = fill_round(filled, grown)
        m = F.max_pool2d(m, module.kernel_size, module.stride, module.padding)  # of the mask before the fill
        return module(filled) * m, m
    if isinstance(module, (nn.BatchNorm2d, nn.ReLU)):
        return module(x) * m, m
    if isinstance(module, nn.MaxPool2d):
        out_m = F.max_pool2d(m, module.kernel_size, module.stride, module.padding)
        out = module(torch.where(m > 0, x, float("-inf")))
        return torch.where(out_m > 0, out, 0.0), out_m
    if isinstance(module, nn.AdaptiveAvgPool2d):  # to 1 x 1: the mean over visible positions
        visible = m.sum((2, 3), keepdim=True)
        return (x * m).sum((2, 3), keepdim=True) / visible.clamp_min(1), None
    if isinstance(module, (nn.Flatten, nn.Linear, nn.Identity)):
        return module(x), m
    raise TypeError(f"the oracle does not know {type(module).__name__}")


def oracle_forward(model: nn.Module, x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    m = keep.float()
    return oracle(model, x * m, m)[0]


# ---------------------------------------------------------------------------------------------------


def _randomize_batchnorm(model: nn.Module) -> nn.Module:
    g = torch.Generator().manual_seed(0)
    for bn in model.modules():
        if isinstance(bn, nn.BatchNorm2d):
            c = bn.num_features
            bn.running_mean.copy_(torch.rand(c, generator=g) * 2 - 1)
            bn.running_var.copy_(torch.rand(c, generator=g) + 0.5)
            bn.weight.data.copy_(torch.rand(c, generator=g) + 0.5)
            bn.bias.data.copy_(torch.rand(c, generator=g) * 2 - 1)
    return model.eval()


MODELS = {
    "small_cnn": lambda: SmallCNN(3, 4, widths=(8, 16, 32)),
    "resnet": lambda: ResNet(3, 5, widths=(8, 16, 32), blocks=(1, 2, 1)),  # strided blocks with 1x1 shortcuts
    "resnet_strided_stem": lambda: ResNet(3, 5, widths=(8, 16), blocks=(1, 1), stem_stride=2),
    "resnet50": lambda: ResNet50(num_classes=7, blocks=(1, 1, 1, 1)),  # 7x7/2 stem, 3x3/2 max pool, bottlenecks
}


def _masks(n: int, size: int) -> torch.Tensor:
    """Blocks, a single visible pixel, an irregular mask, and a nearly empty one (N, 1, size, size)."""
    g = torch.Generator().manual_seed(2)
    keep = torch.rand(n, 1, size // 4, size // 4, generator=g) > 0.4
    keep = keep.repeat_interleave(4, 2).repeat_interleave(4, 3)
    keep[1] = False
    keep[1, 0, size // 2, 3] = True
    keep[2] = torch.rand(1, size, size, generator=g) > 0.5
    keep[3] = False
    keep[3, 0, :2, -3:] = True
    return keep


@pytest.mark.parametrize("name", list(MODELS))
@torch.no_grad()
def test_layer_masking_matches_the_literal_oracle(name):
    torch.manual_seed(0)
    model = _randomize_batchnorm(MODELS[name]())
    size = 40 if name == "resnet50" else 20  # ResNet-50 downsamples by 32
    x = torch.randn(4, 3, size, size, generator=torch.Generator().manual_seed(1))
    keep = _masks(4, size)
    expected = oracle_forward(model, x, keep)
    for variant in (dict(), dict(reference=True), dict(fill="dense")):
        torch.testing.assert_close(layer_masked(model, **variant)(x, keep), expected, atol=2e-5, rtol=1e-5)
    assert not torch.allclose(expected, model(x), atol=1e-3)  # the mask matters


@torch.no_grad()
def test_oracle_without_mask_is_the_plain_model():
    torch.manual_seed(0)
    model = _randomize_batchnorm(MODELS["resnet"]())
    x = torch.randn(2, 3, 16, 16)
    torch.testing.assert_close(oracle_forward(model, x, torch.ones(2, 1, 16, 16, dtype=torch.bool)), model(x))


# a 5 x 5 image whose left column alone is visible: the two fill rounds computed by hand
COLUMN = [0.0, 4.0, 2.0, 8.0, 6.0]
RING_1 = [(0 + 4) / 2, (0 + 4 + 2) / 3, (4 + 2 + 8) / 3, (2 + 8 + 6) / 3, (8 + 6) / 2]  # column 1
# column 2 averages its visible neighbours in column 1 (columns 2 and 3 are still masked)
RING_2 = [(2 + 2) / 2, (2 + 2 + 14 / 3) / 3, (2 + 14 / 3 + 16 / 3) / 3, (14 / 3 + 16 / 3 + 7) / 3, (16 / 3 + 7) / 2]
HAND = torch.tensor([COLUMN, RING_1, RING_2, [0.0] * 5, [0.0] * 5]).T  # (5, 5): beyond ring 2 masked out


def _five_by_five():
    x = torch.full((1, 1, 5, 5), 100.0)  # masked values must not matter
    x[0, 0, :, 0] = torch.tensor(COLUMN)
    keep = torch.zeros(1, 1, 5, 5, dtype=torch.bool)
    keep[..., 0] = True
    return x, keep


def test_hand_computed_values_are_what_they_claim():
    assert RING_1 == [2.0, 2.0, 14 / 3, 16 / 3, 7.0]
    assert RING_2 == pytest.approx([2.0, 26 / 9, 4.0, 17 / 3, 37 / 6])


@torch.no_grad()
def test_fill_values_on_a_5x5_example_by_hand():
    """A 5x5 conv whose only weight is its centre reads the filled input itself: 4 fill rounds, and its
    output is visible two rings out from the visible column, so it shows rings 1 and 2 exactly."""
    x, keep = _five_by_five()
    conv = nn.Conv2d(1, 1, 5, padding=2, bias=False)
    conv.weight.data.zero_()
    conv.weight.data[0, 0, 2, 2] = 1.0
    model = nn.Sequential(conv).eval()
    torch.testing.assert_close(oracle_forward(model, x, keep)[0, 0], HAND)
    for variant in (dict(), dict(reference=True), dict(fill="dense")):
        torch.testing.assert_close(layer_masked(model, **variant)(x, keep)[0, 0], HAND)
    _, maps = feature_maps(model, x, keep)
    torch.testing.assert_close(next(iter(maps.values()))[0, 0], HAND)


def test_fill_round_by_hand():
    x, keep = _five_by_five()
    m = keep.float()
    x1, m1 = fill_round(x * m, m)
    x2, m2 = fill_round(x1, m1)
    torch.testing.assert_close(x2[0, 0, :, :3], HAND[:, :3])
    assert m1[0, 0].sum() == 10 and m2[0, 0].sum() == 15
