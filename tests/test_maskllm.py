"""Tests of companion.methods.parameter_masks.maskllm: held-out NLL, calibration Gram matrices, SparseGPT, sparse
copies, the annealed mask objective, and that learned masks are valid 2:4 masks."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from companion import train
from companion.methods.parameter_masks import maskllm as se
from companion.models import GPT, GPTConfig
from companion.methods.parameter_masks.maskllm import NMLinear, nm_prior_logits_from_mask
from companion.masks.nm import is_nm, magnitude_nm_mask, wanda_nm_mask


def tiny_gpt(seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    return GPT(GPTConfig(vocab_size=11, block_size=8, n_layer=1, n_head=2, n_embd=16))


def test_window_nll_matches_cross_entropy_per_window_and_perplexity_is_its_exp():
    model = tiny_gpt()
    x = torch.randint(0, 11, (5, 8), generator=torch.Generator().manual_seed(0))
    y = torch.randint(0, 11, (5, 8), generator=torch.Generator().manual_seed(1))
    nll = se.window_nll(model, x, y, batch_size=2)
    with torch.no_grad():
        expected = torch.stack([F.cross_entropy(model(x[i:i + 1])[0], y[i]) for i in range(5)])
    assert nll.shape == (5,) and torch.allclose(nll, expected, atol=1e-5)
    assert se.perplexity(nll) == pytest.approx(math.exp(expected.mean().item()), rel=1e-5)


def test_unigram_perplexity_is_vocab_size_for_uniform_text():
    ids = torch.arange(4).repeat(25)
    assert se.unigram_perplexity(ids, ids, 4) == pytest.approx(4.0)
    skewed = torch.tensor([0] * 97 + [1, 2, 3])
    assert se.unigram_perplexity(skewed, skewed, 4) < 2.0


def test_input_grams_are_gram_matrices_of_each_linear_input_and_leave_outputs_unchanged():
    model = nn.Sequential(nn.Embedding(5, 8), nn.Linear(8, 4))
    x = torch.tensor([[0, 1, 2], [3, 4, 0]])
    before = model(x)
    grams = se.input_grams(model, x, ["1"], batch_size=1)
    a = model[0](x).reshape(-1, 8).detach().double()
    assert torch.allclose(grams["1"], a.T @ a, atol=1e-6)
    assert torch.equal(model(x), before) and not model[1]._forward_hooks


def test_sparsegpt_with_uncorrelated_inputs_is_magnitude_pruning_without_updates():
    w = torch.randn(6, 16, generator=torch.Generator().manual_seed(0))
    updated, keep = se.sparsegpt_nm(w, torch.eye(16) * 3.0)
    assert torch.equal(keep, magnitude_nm_mask(w)) and is_nm(keep)
    assert torch.allclose(updated, w * keep, atol=1e-6)


def test_sparsegpt_compensates_so_its_layer_output_error_is_below_magnitude_pruning():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(512, 16, generator=g) @ torch.randn(16, 16, generator=g)  # correlated input features
    w = torch.randn(8, 16, generator=g)
    updated, keep = se.sparsegpt_nm(w, x.T.double() @ x.double())
    assert is_nm(keep) and torch.equal(updated != 0, keep)
    error = lambda v: (x @ (w - v).T).pow(2).sum().item()
    assert error(updated) < 0.8 * error(w * magnitude_nm_mask(w))
    assert error(updated) < error(w * keep)  # the weight update itself helps, not only the choice of mask


def test_sparse_copy_replaces_only_named_linears_and_freezes_everything_else():
    model = tiny_gpt()
    names = se.linear_names(model, lambda n: n.startswith("blocks."))
    assert "lm_head" not in names and len(names) == 4
    masks = {n: magnitude_nm_mask(dict(model.named_modules())[n].weight) for n in names}
    fixed = se.sparse_copy(model, masks=masks)
    assert isinstance(model.blocks[0].attn.qkv, nn.Linear)  # the original is untouched
    assert all(isinstance(dict(fixed.named_modules())[n], NMLinear) for n in names)
    assert not any(p.requires_grad for p in fixed.parameters())
    priors = {n: nm_prior_logits_from_mask(m) for n, m in masks.items()}
    learn = se.sparse_copy(model, prior_logits=priors)
    trainable = [n for n, p in learn.named_parameters() if p.requires_grad]
    assert sorted(trainable) == sorted(f"{n}.mask_logits" for n in names)
    learned = se.final_masks(learn)
    assert all(torch.equal(learned[n], masks[n]) and is_nm(learned[n]) for n in names)  # starts at the prior
    x = torch.randint(0, 11, (2, 8))
    with torch.no_grad():
        assert torch.allclose(fixed.eval()(x), learn.eval()(x), atol=1e-5)
    with pytest.raises(ValueError, match="exactly one"):
        se.sparse_copy(model)


def test_sparse_copy_takes_updated_weights_for_named_layers():
    model = tiny_gpt()
    name = "blocks.0.mlp.fc1"
    w = dict(model.named_modules())[name].weight
    mask = magnitude_nm_mask(w)
    copy = se.sparse_copy(model, masks={name: mask}, weights={name: 2 * w})
    assert torch.equal(dict(copy.named_modules())[name].weight, 2 * w)
    assert torch.equal(w, dict(model.named_modules())[name].weight)  # the original is untouched


def test_mask_objective_anneals_linearly_over_fit_and_logs_the_schedule():
    objective = se.MaskObjective(lambda m, x, y: m(x).pow(2).mean(), tau=(4.0, 0.0), scale=(1.0, 9.0))
    assert objective.value(0, 5) == (4.0, 1.0) and objective.value(4, 5) == (0.0, 9.0)
    assert objective.value(2, 5) == (2.0, 5.0)
    model = nn.Sequential(NMLinear(torch.randn(8, 8), learnable=True), NMLinear(torch.randn(4, 8)))
    history = train.fit(model, torch.randn(16, 8), None, 5, batch_size=4, device="cpu", loss_fn=objective,
                        progress=False)
    assert history.metrics["tau"] == [4.0, 3.0, 2.0, 1.0, 0.0] and history.metrics["scale"][-1] == 9.0
    assert (model[0].tau, model[0].scale) == (0.0, 9.0)
    assert model[1].tau == 4.0  # a fixed-mask layer is left alone


def test_learned_masks_are_valid_2_4_after_training_and_move_away_from_the_prior():
    model = tiny_gpt()
    names = se.linear_names(model, lambda n: n.startswith("blocks."))
    priors = {n: nm_prior_logits_from_mask(magnitude_nm_mask(dict(model.named_modules())[n].weight), strength=0.5)
              for n in names}
    learner = se.sparse_copy(model, prior_logits=priors, generator=torch.Generator().manual_seed(0))
    x = torch.randint(0, 11, (64, 8), generator=torch.Generator().manual_seed(2))
    objective = se.MaskObjective(lambda m, a, b: F.cross_entropy(m(a).flatten(0, 1), b.flatten()), scale=(1.0, 10.0))
    train.fit(learner, x, x.roll(1, dims=1), 20, batch_size=16, lr=0.5, weight_decay=0.0, device="cpu",
              loss_fn=objective, progress=False)
    learned = se.final_masks(learner)
    assert set(learned) == set(names) and all(is_nm(learned[n]) for n in names)
    assert any(not torch.equal(learned[n], magnitude_nm_mask(dict(model.named_modules())[n].weight)) for n in names)


def test_pattern_counts_changed_groups_and_gate_confidence():
    mask = torch.tensor([[1, 1, 0, 0, 0, 0, 1, 1], [1, 1, 0, 0, 1, 0, 1, 0]]).bool()
    assert se.pattern_counts(mask).tolist() == [2, 1, 0, 0, 0, 1]
    other = torch.tensor([[1, 1, 0, 0, 0, 0, 1, 1], [0, 1, 1, 0, 1, 0, 1, 0]]).bool()
    assert se.changed_groups(mask, other) == 0.25
    layer = NMLinear(torch.randn(4, 8), learnable=True, prior_strength=20.0, tau=1.0)
    assert se.gate_confidence(layer) == 1.0
    layer.tau = 100.0
    assert se.gate_confidence(layer) == 0.0


def test_overlap_counts_classify_groups_by_kept_weights_shared_with_the_prior():
    prior = torch.tensor([[1, 1, 0, 0, 1, 1, 0, 0, 1, 1, 0, 0]]).bool()
    mask = torch.tensor([[1, 1, 0, 0, 1, 0, 1, 0, 0, 0, 1, 1]]).bool()
    assert se.overlap_counts(mask, prior).tolist() == [1, 1, 1]
    assert se.overlap_counts(prior, prior).tolist() == [0, 0, 3]


def test_one_shot_masks_gives_valid_masks_of_the_three_baselines_and_only_sparsegpt_updates_weights():
    model = tiny_gpt()
    names = se.linear_names(model, lambda n: n.startswith("blocks."))
    calib = torch.randint(0, 11, (6, 8), generator=torch.Generator().manual_seed(0))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    out = se.one_shot_masks(model, calib, names)
    assert set(out) == {"magnitude", "Wanda", "SparseGPT"}
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())  # the model is untouched
    modules = dict(model.named_modules())
    grams = se.input_grams(model, calib, names)
    for name in names:
        w = modules[name].weight
        assert all(is_nm(out[method][0][name]) for method in out)
        assert torch.equal(out["magnitude"][0][name], magnitude_nm_mask(w))
        assert torch.equal(out["Wanda"][0][name], wanda_nm_mask(w, grams[name].diag().sqrt().float()))
        updated = out["SparseGPT"][1][name]
        assert torch.equal(out["SparseGPT"][0][name], se.sparsegpt_nm(w, grams[name])[1])
        assert torch.all(updated[~out["SparseGPT"][0][name]] == 0)
    assert out["magnitude"][1] is None and out["Wanda"][1] is None


def test_continued_dense_training_and_mask_learning_draw_the_same_batches_from_the_same_seed():
    """The notebook's equal-steps control: both arms see exactly the same training windows in the same order."""
    x = torch.randint(0, 11, (40, 8), generator=torch.Generator().manual_seed(0))
    seen = {"dense": [], "mask": []}

    def recording(arm, loss):
        def fn(m, a, b):
            seen[arm].append(a.clone())
            return loss(m, a, b)
        return fn

    lm = lambda m, a, b: F.cross_entropy(m(a).flatten(0, 1), b.flatten())
    model = tiny_gpt()
    train.fit(model, x, x.roll(1, dims=1), 6, batch_size=4, seed=3, device="cpu", loss_fn=recording("dense", lm),
              progress=False)
    names = se.linear_names(model, lambda n: n.startswith("blocks."))
    priors = {n: nm_prior_logits_from_mask(magnitude_nm_mask(dict(model.named_modules())[n].weight)) for n in names}
    learner = se.sparse_copy(model, prior_logits=priors, generator=torch.Generator().manual_seed(0))
    objective = se.MaskObjective(recording("mask", lm))
    train.fit(learner, x, x.roll(1, dims=1), 6, batch_size=4, lr=0.1, seed=3, device="cpu", loss_fn=objective,
              progress=False)
    assert len(seen["dense"]) == 6 and all(torch.equal(a, b) for a, b in zip(seen["dense"], seen["mask"]))
