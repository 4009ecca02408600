"""Tests of companion.masking.gating: FTWT channel gating (targets, predictors, decoupled loss) and L1 filter pruning.

Masks are (N, C) float in {0, 1}, 1 = keep; a block is a conv-BN-ReLU ``nn.Sequential``.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from companion.eval import count_flops
from companion.masking import gating
from companion.models.cnn import SmallCNN


def _net(seed=0) -> SmallCNN:
    torch.manual_seed(seed)
    return SmallCNN(3, 4, widths=(8, 16, 16)).eval()


def test_blocks_of_finds_every_conv_bn_relu_block_in_order():
    net = _net()
    blocks = gating.blocks_of(net)
    assert [b[0].out_channels for b in blocks] == [8, 16, 16]


def test_mass_target_on_a_hand_made_activation():
    act = torch.zeros(1, 5, 3, 3)
    # spatial maxima of |a|: 4, 3, 2, 1, 0 → normalised masses 0.4, 0.3, 0.2, 0.1, 0 (channel order shuffled)
    for c, peak in zip([2, 0, 4, 1, 3], [4.0, 3.0, 2.0, 1.0, 0.0]):
        act[0, c, c % 3, 1] = -peak if c == 0 else peak  # |activation| is what counts
    assert gating.channel_criterion(act).tolist() == [[3.0, 1.0, 4.0, 0.0, 2.0]]
    keep = lambda t: gating.top_mass_target(act, t)[0].tolist()
    assert keep(0.7) == [1, 0, 1, 0, 0]  # 0.4 + 0.3 = 0.7 reaches the threshold exactly: kept
    assert keep(0.8) == [1, 0, 1, 0, 0]  # adding 0.2 would cross 0.8: dropped, as in the paper's code
    assert keep(0.9) == [1, 0, 1, 0, 1]
    assert keep(0.3) == [0, 0, 0, 0, 0]  # the top channel alone crosses it
    assert keep(1.0) == [1, 1, 1, 0, 1]  # every non-zero channel; the all-zero channel is dropped


def test_mass_target_is_per_input():
    act = torch.zeros(2, 3, 2, 2)
    act[0, :, 0, 0] = torch.tensor([8.0, 1.0, 1.0])
    act[1, :, 0, 0] = torch.tensor([1.0, 1.0, 8.0])
    assert gating.top_mass_target(act, 0.8).tolist() == [[1, 0, 0], [0, 0, 1]]


def test_all_gates_on_equals_the_plain_forward():
    net = _net()
    x = torch.rand(5, 3, 16, 16)
    plain = net(x)
    for gate in ("none", "predicted"):
        gated = gating.GatedNet(net, 0.5, gate=gate).eval()  # predictors start open (positive bias)
        assert torch.equal(gated(x), plain)
        assert all(m.eq(1).all() for m in gated.masks) and len(gated.targets) == 3
    ones = [torch.ones(c, dtype=torch.bool) for c in (8, 16, 16)]
    assert torch.equal(gating.GatedNet(net, gate="static", static=ones).eval()(x), plain)
    assert torch.equal(net(x), plain)  # no hook is left behind


def test_target_gate_multiplies_each_block_output_by_its_target():
    net = _net()
    x = torch.rand(4, 3, 16, 16)
    gated = gating.GatedNet(net, 0.6, gate="target").eval()
    out = gated(x)
    targets = [t.clone() for t in gated.targets]
    assert all(torch.equal(m, t) for m, t in zip(gated.masks, targets)) and 0 < targets[0].mean() < 1
    with gating.channel_masks(gating.blocks_of(net), lambda i, inp, o: o * targets[i][:, :, None, None]):
        replay = net(x)
    assert torch.equal(out, replay) and not torch.allclose(out, net(x))


def test_decoupled_loss_trains_the_network_with_the_task_and_the_predictors_with_bce_only():
    net = _net()
    x, y = torch.rand(8, 3, 16, 16), torch.randint(0, 4, (8,))
    gated = gating.GatedNet(net, 0.7).train()
    assert set(gating.ftwt_loss(gated, x, y)) == {"loss", "task", "bce", "active"}
    # the task loss alone sends no gradient into the predictors (hard mask, detached input)
    task = nn.functional.cross_entropy(gated(x), y)
    grads = torch.autograd.grad(task, list(gated.predictors.parameters()), allow_unused=True)
    assert all(g is None for g in grads)
    # the BCE alone sends no gradient into the network
    gated(x)
    bce = torch.stack([nn.functional.binary_cross_entropy_with_logits(lg, t)
                       for lg, t in zip(gated.logits, gated.targets)]).mean()
    grads = torch.autograd.grad(bce, list(net.parameters()), allow_unused=True)
    assert all(g is None for g in grads)
    # joint mode: the straight-through mask carries the task gradient into the predictors
    joint = gating.GatedNet(net, 0.7, mode="joint").train()
    task = nn.functional.cross_entropy(joint(x), y)
    assert any(g is not None and g.abs().sum() > 0
               for g in torch.autograd.grad(task, list(joint.predictors.parameters()), allow_unused=True))


def test_binarize_is_hard_forward_identity_backward():
    p = torch.tensor([0.2, 0.5, 0.7], requires_grad=True)
    b = gating.binarize(p)
    assert b.tolist() == [0.0, 0.0, 1.0]
    b.sum().backward()
    assert p.grad.tolist() == [1.0, 1.0, 1.0]


def test_l1_keep_keeps_the_largest_filters():
    net = _net()
    blocks = gating.blocks_of(net)
    with torch.no_grad():
        blocks[0][0].weight.zero_()
        for j, v in enumerate([5, 1, 7, 3, 0, 2, 6, 4]):
            blocks[0][0].weight[j, 0, 0, 0] = -v if j % 2 else v
    keeps = gating.l1_keep(blocks, [3, 16, 1])
    assert keeps[0].nonzero().flatten().tolist() == [0, 2, 6]
    assert keeps[1].all() and int(keeps[2].sum()) == 1
    with pytest.raises(ValueError, match="one count per block"):
        gating.l1_keep(blocks, [1])


def test_static_pruning_equals_removing_the_filters():
    net = _net()
    x = torch.rand(3, 3, 16, 16)
    keeps = gating.l1_keep(gating.blocks_of(net), [4, 8, 16])
    pruned = gating.GatedNet(net, gate="static", static=keeps).eval()
    small = SmallCNN(3, 4, widths=(4, 8, 16)).eval()
    with torch.no_grad():
        prev = torch.arange(3)
        for (big, sm), keep in zip(zip(gating.blocks_of(net), gating.blocks_of(small)), keeps):
            idx = keep.nonzero().flatten()
            sm[0].weight.copy_(big[0].weight[idx][:, prev])
            for name in ("weight", "bias", "running_mean", "running_var"):
                getattr(sm[1], name).copy_(getattr(big[1], name)[idx])
            prev = idx
        small.fc.weight.copy_(net.fc.weight[:, prev])
        small.fc.bias.copy_(net.fc.bias)
    assert torch.allclose(pruned(x), small(x), atol=1e-5)


def test_per_input_flops_scale_the_counted_convs_by_active_channels():
    net = _net()
    x = torch.rand(6, 3, 16, 16)
    ones = [torch.ones(c, dtype=torch.bool) for c in (8, 16, 16)]
    dense = gating.GatedNet(net, gate="static", static=ones)
    assert gating.per_input_flops(dense, x, head=net.fc).tolist() == [count_flops(lambda: net(x[:1]))] * 6
    keeps = gating.l1_keep(gating.blocks_of(net), [4, 8, 16])
    half = gating.per_input_flops(gating.GatedNet(net, gate="static", static=keeps), x, head=net.fc)
    # hand count (2 FLOPs per multiply-add): conv 3→4 at 16², 4→8 at 8², 8→16 at 4², linear 16→4
    assert half.tolist() == [2 * (256 * 9 * 3 * 4 + 64 * 9 * 4 * 8 + 16 * 9 * 8 * 16 + 16 * 4)] * 6
    gated = gating.GatedNet(net, 0.7).eval()
    with torch.no_grad():
        for p in gated.predictors:
            p.conv.bias.fill_(-1.0)  # every gate closed: only the predictors' own 1x1 convs are left
    closed = gating.per_input_flops(gated, x, head=net.fc)
    assert closed.tolist() == [2 * (3 * 8 + 8 * 16 + 16 * 16)] * 6
