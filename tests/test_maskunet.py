"""Tests of companion.methods.parameter_masks.maskunet on a small random-init ToySD: masks start all-ones (the
frozen base exactly), only the hypernetwork trains, the masks can depend on the timestep and the sample, and the
hooks leave the base as it was."""

from __future__ import annotations

import copy

import pytest
import torch

from companion.diffusion.gaussian import Schedule
from companion.methods.parameter_masks import maskunet
from companion.models.toy_sd import ToySD


def _base(seed=0) -> ToySD:
    torch.manual_seed(seed)
    return ToySD(channels=(16, 32), time_dim=32, text_dim=16, heads=2).eval()


def _batch(n=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, 8, 8, generator=g)
    t = torch.randint(0, 100, (n,), generator=g)
    return x, t, {"captions": torch.randint(1, 9, (n, 4), generator=g)}


@pytest.mark.parametrize("layers", [maskunet.UP_BLOCK_LAYERS, maskunet.UP_BLOCK_LAYERS + maskunet.UP_ATTENTION_LAYERS])
def test_masks_start_all_ones_and_equal_the_frozen_base(layers):
    base = _base()
    x, t, cond = _batch()
    plain = base(x, t, cond)
    model = maskunet.MaskUNet(base, layers, hidden=8, factor=4)
    for mode in (model.eval, model.train):  # a Gumbel draw below -5 has probability e^-148
        mode()
        eps, masks = model(x, t, cond, return_masks=True)
        torch.testing.assert_close(eps, plain, rtol=0, atol=1e-5)
        assert set(masks) == set(layers)
        for name, m in masks.items():
            w = base.unet.get_submodule(name).weight
            assert m.shape == (len(x), *w.shape) and bool((m == 1).all())
    assert not any("forward" in m.__dict__ for m in base.modules())  # the weight masks were taken off
    model.eval()
    torch.testing.assert_close(base(x, t, cond), plain, rtol=0, atol=0)  # and the hooks


def test_only_the_hypernetwork_trains_and_its_gradient_arrives():
    base = _base()
    frozen = copy.deepcopy(base.state_dict())
    model = maskunet.MaskUNet(base, hidden=8, factor=4).train()
    assert all(not p.requires_grad for p in base.parameters())
    params = model.trainable_parameters()
    assert maskunet.count(params) == sum(p.numel() for p in model.parameters() if p.requires_grad)
    opt = torch.optim.Adam(params, lr=0.05)
    loss_fn = maskunet.eps_loss(Schedule(100), torch.Generator().manual_seed(0))
    x0 = torch.rand(8, 3, 8, 8) * 2 - 1
    captions = torch.randint(1, 9, (8, 4))
    grads = []
    for _ in range(4):  # the adapters' zero weights pass the generator a gradient from the third step on
        opt.zero_grad()
        loss_fn(model, x0, captions).backward()
        grads.append(sum(p.grad.abs().sum().item() for p in model.generator.parameters()))
        opt.step()
    assert grads[0] == 0 and grads[-1] > 0
    assert all(torch.equal(v, base.state_dict()[k]) for k, v in frozen.items())


def test_masks_depend_on_timestep_and_sample_once_learned():
    base = _base()
    model = maskunet.MaskUNet(base, hidden=8, factor=4, eval_noise=False).eval()  # no noise: differences are learned
    torch.manual_seed(1)
    with torch.no_grad():  # a trained-looking adapter: logits spread around 0 and driven by the generator
        for a in model.adapters.values():
            a.out_map.weight.normal_(0, 1)
            a.in_map.weight.normal_(0, 1)
            a.out_map.bias.zero_()
            a.in_map.bias.zero_()
    x, _, cond = _batch(n=2)
    same_x = torch.cat([x[:1], x[:1]])
    same_cond = {"captions": torch.cat([cond["captions"][:1]] * 2)}
    _, by_t = model(same_x, torch.tensor([2, 90]), same_cond, return_masks=True)
    _, by_sample = model(x, torch.tensor([50, 50]), cond, return_masks=True)
    for masks in (by_t, by_sample):
        m = masks["up_block.block1.2"]
        assert 0 < m.mean() < 1 and not torch.equal(m[0], m[1])


def test_density_by_level_and_bias_parameters():
    base = _base()
    model = maskunet.MaskUNet(base, hidden=8, factor=4)
    x0 = torch.rand(3, 3, 8, 8) * 2 - 1
    dens = maskunet.mask_density_by_level(model, x0, torch.randint(1, 9, (3, 4)), Schedule(100), [0, 50, 99],
                                          torch.Generator().manual_seed(0))
    assert set(dens) == set(maskunet.UP_BLOCK_LAYERS) and all(v.shape == (3, 3) and bool((v == 1).all())
                                                              for v in dens.values())
    tuned = copy.deepcopy(base)
    biases = maskunet.bias_parameters(tuned)
    named = dict(tuned.named_parameters())
    assert biases and all(p.requires_grad for p in biases)
    assert {n for n, p in named.items() if p.requires_grad} == {n for n in named if n.endswith("bias")}
