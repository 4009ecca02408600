"""The 1-D temporal UNet: shapes, conditioning, and that time and cond reach the output."""

import pytest
import torch

from companion.models.unet1d import TemporalUNet


@pytest.mark.parametrize("widths,length", [((32,), 3), ((32, 64), 4), ((16, 32, 64), 64)])
def test_shapes(widths, length):
    net = TemporalUNet(5, widths=widths)
    x = torch.randn(2, 5, length)
    assert net(x, torch.tensor([0, 7])).shape == (2, 5, length)
    assert TemporalUNet(5, 3, widths=widths)(x, torch.tensor([1, 2])).shape == (2, 3, length)


def test_time_and_cond_change_the_output():
    torch.manual_seed(0)
    net = TemporalUNet(4, widths=(16, 32), time_dim=16, cond_dim=3)
    x, c = torch.randn(2, 4, 8), torch.randn(2, 3)
    base = net(x, torch.tensor([5, 5]), c)
    assert not torch.allclose(base, net(x, torch.tensor([50, 50]), c))
    assert not torch.allclose(base, net(x, torch.tensor([5, 5]), c + 1))
    with pytest.raises(ValueError):
        net(x, torch.tensor([5, 5]))


def test_bad_length_and_backward():
    net = TemporalUNet(2, widths=(8, 16))
    with pytest.raises(ValueError):
        net(torch.randn(1, 2, 5), torch.tensor([0]))
    net(torch.randn(3, 2, 6), torch.tensor([0, 1, 2])).pow(2).mean().backward()
    assert all(p.grad is not None for p in net.parameters())
