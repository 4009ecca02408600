"""Tests of companion.methods.parameter_masks.ftwt_pruning: the toy VGG, FLOPs matching of the L1 baseline, the
before-training FLOPs estimate and the forward pass that really skips inactive channels."""

from __future__ import annotations

import torch

from companion.eval import count_flops
from companion.masking import gating
from companion.methods.parameter_masks import ftwt_pruning
from companion.models.cnn import SmallCNN


def _net(seed=0) -> SmallCNN:
    torch.manual_seed(seed)
    return SmallCNN(3, 4, widths=((4, 4), (8, 8))).eval()


def _gated_with_random_predictors(seed=0, threshold=0.8) -> gating.GatedNet:
    """A gated toy VGG whose predictors have random weights, so some channels of every block are off."""
    gated = gating.GatedNet(_net(seed), threshold, pool=1).eval()
    with torch.no_grad():
        for p in gated.predictors:
            p.conv.weight.normal_(0, 1)
            p.conv.bias.zero_()
    return gated


def test_vgg_like_shapes_and_blocks():
    net = _net()
    assert net(torch.rand(2, 3, 16, 16)).shape == (2, 4)
    assert [b[0].out_channels for b in gating.blocks_of(net)] == [4, 4, 8, 8]


def test_match_l1_never_gives_the_baseline_fewer_flops_and_stays_close():
    net = _net()
    x = torch.rand(2, 3, 16, 16)
    dense = count_flops(lambda: net(x[:1]))
    for share in (0.3, 0.55, 0.8):
        for profile in (None, [1.0, 0.5, 0.9, 0.2]):
            counts, keeps, flops = ftwt_pruning.match_l1(net, x, share * dense, profile)
            assert flops >= share * dense
            assert [int(k.sum()) for k in keeps] == counts
            assert flops == ftwt_pruning.static_flops(net, x, keeps)
            assert flops - share * dense < 0.1 * dense
    counts, _, flops = ftwt_pruning.match_l1(net, x, 2 * dense)
    assert counts == [4, 4, 8, 8] and flops == dense


def test_skipping_forward_equals_the_masked_forward():
    gated = _gated_with_random_predictors()
    x = torch.rand(6, 3, 16, 16)
    masked = gated(x)
    active = torch.cat(gated.masks, 1).mean()
    assert 0 < active < 1  # some channels really are skipped
    for i in range(len(x)):
        assert torch.allclose(ftwt_pruning.skipping_forward(gated, x[i:i + 1]), masked[i:i + 1], atol=1e-5)


def test_estimated_flops_match_the_target_gated_network():
    net = _net()
    x = torch.rand(5, 3, 16, 16)
    est = ftwt_pruning.estimated_flops(net, x, 0.7, pool=1)
    observer = gating.GatedNet(net, 0.7, gate="none", pool=1)
    masks, targets = ftwt_pruning.record_masks(observer, x)
    assert all(m.eq(1).all() for m in masks)
    assert torch.equal(est, gating.per_input_flops(observer, x, head=net.fc, masks=targets))
    dense_with_predictors = gating.per_input_flops(observer, x, head=net.fc)
    assert (est < dense_with_predictors).all()


def test_flops_match_interval_and_channel_usage():
    lo, hi = ftwt_pruning.flops_match_interval(torch.full((50,), 0.5) + 0.01 * torch.randn(50),
                                               torch.full((50,), 0.5) + 0.01 * torch.randn(50))
    assert lo == 0.0 and 0 < hi < 0.02
    lo, hi = ftwt_pruning.flops_match_interval(torch.full((20,), 0.4) + 0.01 * torch.rand(20),
                                               torch.full((20,), 0.5) + 0.01 * torch.rand(20))
    assert 0.08 < lo <= hi < 0.12
    masks = [torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, 0.0]])]
    usage = ftwt_pruning.channel_usage(masks, torch.tensor([0, 0, 1]), 2)
    assert usage[0].tolist() == [[1.0, 0.5], [0.0, 0.0]]
