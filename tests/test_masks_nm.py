"""Tests of companion.masks.nm. Masks: True / 1 = keep; groups are m consecutive input weights."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from companion.methods.parameter_masks.maskllm import NMLinear, gumbel_softmax_nm_mask, nm_prior_logits, nm_prior_logits_from_mask, nm_sparsify
from companion.masks.nm import is_nm, magnitude_nm_mask, nm_candidate_patterns, pattern_index, wanda_nm_mask


def test_2_4_has_exactly_six_distinct_valid_patterns():
    p = nm_candidate_patterns(2, 4)
    assert p.shape == (6, 4)
    assert len({tuple(r.tolist()) for r in p}) == 6
    assert (p.sum(-1) == 2).all() and is_nm(p, 2, 4)
    assert nm_candidate_patterns(1, 4).shape == (4, 4)


def test_is_nm_rejects_wrong_counts_and_non_binary():
    good = torch.tensor([[1, 1, 0, 0, 0, 1, 0, 1]])
    assert is_nm(good, 2, 4) and is_nm(good.bool(), 2, 4)
    assert not is_nm(torch.tensor([[1, 1, 1, 0, 0, 1, 0, 1]]), 2, 4)
    assert not is_nm(torch.tensor([[1, 0, 0, 0, 0, 1, 0, 1]]), 2, 4)
    assert not is_nm(torch.tensor([[0.5, 1, 0.5, 0]]), 2, 4)
    assert not is_nm(torch.ones(1, 6), 2, 4)


def test_magnitude_mask_keeps_largest_two_of_each_group():
    w = torch.tensor([[0.1, -3.0, 2.0, 0.5, 4.0, 0.0, -0.2, -5.0]])
    assert magnitude_nm_mask(w, 2, 4).tolist() == [[False, True, True, False, True, False, False, True]]
    w = torch.randn(16, 32, generator=torch.Generator().manual_seed(0))
    mask = magnitude_nm_mask(w, 2, 4)
    assert is_nm(mask, 2, 4)
    g, k = w.abs().view(16, 8, 4), mask.view(16, 8, 4)
    kept_min = g.masked_fill(~k, float("inf")).amin(-1)
    dropped_max = g.masked_fill(k, float("-inf")).amax(-1)
    assert (kept_min >= dropped_max).all()
    with pytest.raises(ValueError, match="divisible"):
        magnitude_nm_mask(torch.randn(2, 6), 2, 4)


def test_gumbel_hard_masks_are_valid_and_gradients_reach_logits():
    logits = torch.randn(8, 4, 6, generator=torch.Generator().manual_seed(0), requires_grad=True)
    g = torch.Generator().manual_seed(1)
    mask = gumbel_softmax_nm_mask(logits, tau=0.5, hard=True, generator=g)
    assert mask.shape == (8, 16) and is_nm(mask.detach(), 2, 4)
    (mask * torch.randn(8, 16, generator=g)).sum().backward()
    assert logits.grad is not None and logits.grad.abs().sum() > 0
    soft = gumbel_softmax_nm_mask(logits.detach(), tau=1.0, hard=False, generator=g)
    assert torch.allclose(soft.view(8, 4, 4).sum(-1), torch.full((8, 4), 2.0), atol=1e-5)
    assert not is_nm(soft, 2, 4)


def test_gumbel_mask_is_deterministic_in_the_generator_and_follows_confident_logits():
    logits = torch.randn(4, 2, 6)
    a = gumbel_softmax_nm_mask(logits, 1.0, True, torch.Generator().manual_seed(3))
    b = gumbel_softmax_nm_mask(logits, 1.0, True, torch.Generator().manual_seed(3))
    assert torch.equal(a, b)
    confident = 50.0 * torch.nn.functional.one_hot(torch.full((4, 2), 5), 6).float()
    m = gumbel_softmax_nm_mask(confident, 1.0, True, torch.Generator().manual_seed(0))
    assert (m.view(4, 2, 4) == torch.tensor([0.0, 0.0, 1.0, 1.0])).all()


def test_prior_logits_favour_the_magnitude_pattern():
    w = torch.randn(4, 8)
    idx = nm_prior_logits(w, strength=3.0).argmax(-1)
    assert torch.equal(idx, pattern_index(magnitude_nm_mask(w)))


def test_nm_linear_fixed_and_learnable():
    lin = nn.Linear(8, 3)
    fixed = NMLinear.from_linear(lin)
    x = torch.randn(5, 8)
    expected = torch.nn.functional.linear(x, lin.weight * magnitude_nm_mask(lin.weight), lin.bias)
    assert torch.allclose(fixed(x), expected, atol=1e-6)
    assert not any(p.requires_grad for p in fixed.parameters())

    learn = NMLinear.from_linear(lin, learnable=True, hard=True)
    learn.generator = torch.Generator().manual_seed(0)
    learn.train()
    learn(x).pow(2).sum().backward()
    assert learn.mask_logits.grad is not None and learn.mask_logits.grad.abs().sum() > 0
    assert learn.weight.grad is None
    learn.eval()
    assert is_nm(learn.final_mask(), 2, 4)
    assert torch.equal(learn.final_mask(), magnitude_nm_mask(lin.weight))  # prior init = magnitude pattern
    assert torch.allclose(learn(x), expected, atol=1e-6)
    with pytest.raises(ValueError, match="valid 2:4"):
        NMLinear(lin.weight, mask=torch.ones(3, 8))


def test_nm_sparsify_replaces_only_included_linears():
    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Sequential(nn.Linear(8, 4)))
    names = nm_sparsify(model, include=lambda name: name != "0")
    assert names == ["2.0"]
    assert isinstance(model[2][0], NMLinear) and isinstance(model[0], nn.Linear)


def test_wanda_mask_weighs_magnitudes_by_input_norms():
    w = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
    assert torch.equal(wanda_nm_mask(w, torch.ones(4)), magnitude_nm_mask(w))
    # a large input norm on the smallest weights makes them the ones kept
    assert wanda_nm_mask(w, torch.tensor([10.0, 10.0, 1.0, 1.0])).tolist() == [[True, True, False, False]]
    assert is_nm(wanda_nm_mask(torch.randn(8, 16), torch.rand(16)), 2, 4)
    with pytest.raises(ValueError, match="input_norm"):
        wanda_nm_mask(w, torch.ones(3))


def test_prior_from_mask_scores_candidates_by_overlap():
    mask = torch.tensor([[1, 1, 0, 0]]).bool()  # pattern 0 of 1100, 1010, 1001, 0110, 0101, 0011
    logits = nm_prior_logits_from_mask(mask, strength=2.0)
    assert logits.shape == (1, 1, 6)
    assert logits[0, 0].tolist() == [2.0, 0.0, 0.0, 0.0, 0.0, -2.0]
    w = torch.randn(4, 8)
    assert torch.equal(nm_prior_logits_from_mask(magnitude_nm_mask(w)).argmax(-1), nm_prior_logits(w).argmax(-1))
    with pytest.raises(ValueError, match="valid 2:4"):
        nm_prior_logits_from_mask(torch.ones(1, 4))


def test_gumbel_mask_at_low_temperature_matches_softmax_without_subnormal_floats():
    """Subnormal floats make CPU arithmetic ~10x slower; the soft mask floors pattern probabilities at ~1e-13."""
    logits = (3 * torch.randn(16, 8, 6, generator=torch.Generator().manual_seed(0))).requires_grad_()
    mask = gumbel_softmax_nm_mask(logits, tau=0.05, scale=10.0, generator=torch.Generator().manual_seed(1))
    u = torch.rand(logits.shape, generator=torch.Generator().manual_seed(1))
    gumbel = -torch.log((-torch.log(u.clamp_min(1e-10))).clamp_min(1e-10))
    plain = ((10.0 * logits.detach() + gumbel) / 0.05).softmax(-1) @ nm_candidate_patterns(2, 4)
    assert torch.allclose(mask.detach(), plain.reshape(16, 32), atol=1e-9)
    (mask * torch.randn(16, 32, generator=torch.Generator().manual_seed(2))).sum().backward()
    tiny = torch.finfo(torch.float32).tiny
    for t in (mask.detach(), logits.grad):
        assert not ((t != 0) & (t.abs() < tiny)).any()
