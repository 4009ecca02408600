"""Tests of companion.models.unet: the one 2-D UNet with each option on and off."""

from __future__ import annotations

import pytest
import torch

from companion.models import layers
from companion.models.unet import UNet


@pytest.mark.parametrize("time_dim", [0, 16])
@pytest.mark.parametrize("extra", [0, 2])
@pytest.mark.parametrize("context_dim", [0, 12])
def test_unet_shapes_with_and_without_each_option(time_dim, extra, context_dim):
    torch.manual_seed(0)
    net = UNet(3, 1, channels=(8, 16), time_dim=time_dim, extra_channels=extra, context_dim=context_dim,
               attn_levels=(0, 1), heads=2)
    x = torch.randn(2, 3, 8, 12)
    out = net(x, t=torch.tensor([1, 50]) if time_dim else None,
              context=torch.randn(2, 5, context_dim) if context_dim else None,
              extra=torch.randn(2, extra, 8, 12) if extra else None)
    assert out.shape == (2, 1, 8, 12)
    out.sum().backward()
    assert all(p.grad is not None for p in net.parameters())


def test_unet_default_widths_and_output_channels():
    net = UNet(4)
    assert net.conv_in.out_channels == 32 and net.pool.out_channels == 64
    assert net(torch.randn(1, 4, 16, 16)).shape == (1, 4, 16, 16)


def test_unet_time_and_context_change_the_output_and_maps_are_per_token():
    torch.manual_seed(0)
    net = UNet(3, 3, channels=(8, 16), time_dim=8, context_dim=6, heads=2).eval()
    x, ctx = torch.randn(1, 3, 8, 8), torch.randn(1, 4, 6)
    a = net(x, t=torch.tensor([1]), context=ctx)
    assert not torch.allclose(a, net(x, t=torch.tensor([40]), context=ctx))
    assert not torch.allclose(a, net(x, t=torch.tensor([1]), context=torch.randn(1, 4, 6)))
    seen = []
    with layers.attention_map_hook(net, lambda module, att: seen.append(att.shape)):
        net(x, t=torch.tensor([1]), context=ctx)
    assert seen == [(1, 2, 16, 4)]  # level 1 (4x4 pixels) attends to the 4 caption tokens


def test_unet_rejects_missing_or_unexpected_inputs():
    net = UNet(3, channels=(8, 16), extra_channels=2)
    with pytest.raises(ValueError, match="extra"):
        net(torch.randn(1, 3, 8, 8))
    with pytest.raises(ValueError, match="time_dim"):
        net(torch.randn(1, 3, 8, 8), t=torch.tensor([1]), extra=torch.randn(1, 2, 8, 8))
    with pytest.raises(ValueError, match="even"):
        net(torch.randn(1, 3, 7, 8), extra=torch.randn(1, 2, 7, 8))
