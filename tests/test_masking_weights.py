"""Tests of companion.masking.weights: hard weight masks (shared or per sample) and the straight-through
Gumbel-sigmoid. Masks multiply weights, 1 = keep."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from companion.masking import weights


def _layers(seed=0):
    torch.manual_seed(seed)
    return {"conv": nn.Conv2d(6, 4, 3, padding=1), "strided": nn.Conv2d(6, 4, 3, stride=2, padding=1, bias=False),
            "grouped": nn.Conv2d(6, 4, 3, padding=1, groups=2), "linear": nn.Linear(6, 5)}


def _input(name, n=3):
    return torch.randn(n, 7, 6) if name == "linear" else torch.randn(n, 6, 8, 8)


@pytest.mark.parametrize("name", ["conv", "strided", "grouped", "linear"])
def test_all_ones_masks_equal_the_plain_forward(name):
    layer = _layers()[name]
    x = _input(name)
    plain = layer(x)
    shape = layer.weight.shape
    for mask in (torch.ones(shape), torch.ones(len(x), *shape), torch.ones(len(x), *shape[:2], *([1] * (len(shape) - 2)))):
        torch.testing.assert_close(weights.masked_forward(layer, x, mask), plain, rtol=0, atol=1e-6)


@pytest.mark.parametrize("name", ["conv", "strided", "grouped", "linear"])
def test_per_sample_masks_equal_one_forward_per_sample(name):
    layer = _layers()[name]
    x = _input(name)
    g = torch.Generator().manual_seed(1)
    mask = (torch.rand(len(x), *layer.weight.shape, generator=g) > 0.5).float()
    out = weights.masked_forward(layer, x, mask)
    for n in range(len(x)):
        masked = _layers()[name]
        with torch.no_grad():
            masked.weight.mul_(mask[n])
        torch.testing.assert_close(out[n:n + 1], masked(x[n:n + 1]), rtol=0, atol=1e-5)
    shared = weights.masked_forward(layer, x, mask[0])
    torch.testing.assert_close(shared[:1], out[:1], rtol=0, atol=1e-5)


def test_mask_shapes_are_checked():
    layer = _layers()["conv"]
    with pytest.raises(ValueError, match="does not fit"):
        weights.masked_forward(layer, _input("conv"), torch.ones(3, 4, 5, 3, 3))
    with pytest.raises(ValueError, match="per-sample mask for 2 samples"):
        weights.masked_forward(layer, _input("conv"), torch.ones(2, 4, 6, 3, 3))
    with pytest.raises(TypeError):
        weights.masked_forward(nn.Conv1d(2, 2, 3), torch.randn(1, 2, 5), torch.ones(2, 2, 3))


def test_gumbel_sigmoid_is_hard_forward_and_soft_backward():
    logits = torch.randn(200, requires_grad=True)
    g = torch.Generator().manual_seed(0)
    hard = weights.gumbel_sigmoid(logits, tau=0.7, hard=True, noise="logistic", generator=g)
    assert set(hard.unique().tolist()) <= {0.0, 1.0}
    (hard * torch.arange(200.0)).sum().backward()
    grad_hard = logits.grad.clone()
    logits.grad = None
    g = torch.Generator().manual_seed(0)
    soft = weights.gumbel_sigmoid(logits, tau=0.7, hard=False, noise="logistic", generator=g)
    (soft * torch.arange(200.0)).sum().backward()
    torch.testing.assert_close(grad_hard, logits.grad)  # straight-through: the soft sample's gradient
    assert torch.equal(hard.detach(), (soft > 0.5).float())  # the same noise, thresholded


def test_gumbel_sigmoid_noise_and_determinism():
    logits = torch.tensor([-3.0, -0.1, 0.1, 3.0])
    assert weights.gumbel_sigmoid(logits, noise=None).tolist() == [0.0, 0.0, 1.0, 1.0]
    a = weights.gumbel_sigmoid(torch.zeros(1000), generator=torch.Generator().manual_seed(3))
    b = weights.gumbel_sigmoid(torch.zeros(1000), generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b)
    # one Gumbel draw per entry: P(keep) = P(l + G > 0) = 1 - exp(-exp(l)); at l = 0: 0.632, at l = 5: 1 - 1e-64
    keep5 = weights.gumbel_sigmoid(torch.full((200_000,), 5.0), generator=torch.Generator().manual_seed(0)).mean()
    keep0 = weights.gumbel_sigmoid(torch.zeros(200_000), generator=torch.Generator().manual_seed(0)).mean()
    assert abs(keep5 - (1 - torch.exp(-torch.exp(torch.tensor(5.0))))) < 1e-3
    assert abs(keep0 - (1 - torch.exp(torch.tensor(-1.0)))) < 5e-3
    keep_logistic = weights.gumbel_sigmoid(torch.zeros(200_000), noise="logistic",
                                           generator=torch.Generator().manual_seed(0)).mean()
    assert abs(keep_logistic - 0.5) < 5e-3
    with pytest.raises(ValueError):
        weights.gumbel_sigmoid(logits, noise="normal")


def test_weight_masks_context_masks_named_modules_and_restores_them():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 2, 1))
    x = torch.randn(2, 3, 6, 6)
    plain = net(x)
    masks: dict[str, torch.Tensor] = {}
    with weights.weight_masks({"2": net[2]}, masks):
        masks["2"] = torch.zeros(2, 2, 4, 1, 1)  # filled after entering: looked up when the layer runs
        out = net(x)
        with pytest.raises(RuntimeError, match="already masked"), weights.weight_masks({"2": net[2]}, masks):
            pass
    bias = net[2].bias.view(1, 2, 1, 1).expand_as(out)
    torch.testing.assert_close(out, bias)  # weights all masked: only the bias is left
    assert "forward" not in net[2].__dict__
    torch.testing.assert_close(net(x), plain)
    with pytest.raises(KeyError), weights.weight_masks({"0": net[0]}, {}):
        net(x)
    assert "forward" not in net[0].__dict__  # restored after the error too


def test_mask_density():
    m = torch.tensor([[1.0, 0.0, 1.0, 1.0], [0.0, 0.0, 0.0, 1.0]])
    assert weights.mask_density(m).tolist() == [0.75, 0.25]
    assert weights.mask_density(m, per_sample=False).item() == 0.5
