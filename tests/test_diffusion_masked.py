"""Tests of companion.diffusion.masked: each noising's mask, the 1/p-weighted loss, token replacement and the
decoders (the low-confidence decoder commits ≥ 1 token per pass and ends within its steps)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from companion.diffusion import masked

MASK, EOS, V = 9, 0, 10


def _masks(kind, lengths, seq_len=12, seed=0):
    kinds = torch.full((len(lengths),), masked.NOISINGS.index(kind))
    return masked.noising_masks(kinds, lengths, seq_len, torch.Generator().manual_seed(seed))


LENGTHS = torch.randint(3, 13, (400,), generator=torch.Generator().manual_seed(1))


def test_every_noising_masks_inside_the_length_and_never_nothing():
    pos = torch.arange(12)
    for kind in masked.NOISINGS:
        m = _masks(kind, LENGTHS)
        assert not (m & (pos >= LENGTHS[:, None])).any(), kind
        assert m.any(1).all(), kind


def test_full_masks_every_real_token():
    assert torch.equal(_masks("full", LENGTHS), torch.arange(12) < LENGTHS[:, None])


@pytest.mark.parametrize("kind", ["suffix", "block"])
def test_suffix_and_block_mask_one_contiguous_suffix_keeping_a_prefix(kind):
    m = _masks(kind, LENGTHS)
    for row, n in zip(m, LENGTHS.tolist(), strict=True):
        idx = row.nonzero().flatten()
        assert idx[-1] == n - 1 and idx[0] >= 1  # reaches the end; something is kept
        assert torch.equal(idx, torch.arange(idx[0], n))  # contiguous


def test_block_keeps_whole_blocks_of_a_2_to_6_way_cut():
    m = _masks("block", LENGTHS)
    kept = (~m & (torch.arange(12) < LENGTHS[:, None])).sum(1)
    ok = [any(k % max(n // b, 1) == 0 for b in range(2, 7)) for k, n in zip(kept.tolist(), LENGTHS.tolist(),
                                                                            strict=True)]
    assert all(ok)


def test_prefix_masks_one_contiguous_prefix_keeping_a_suffix():
    m = _masks("prefix", LENGTHS)
    for row, n in zip(m, LENGTHS.tolist(), strict=True):
        idx = row.nonzero().flatten()
        assert idx[0] == 0 and idx[-1] < n - 1
        assert torch.equal(idx, torch.arange(0, idx[-1] + 1))


def test_cloze_masks_exactly_one():
    assert (_masks("cloze", LENGTHS).sum(1) == 1).all()


def test_random_rate_is_uniform_on_average():
    m = _masks("random", torch.full((2000,), 12))
    assert abs(m.float().mean().item() - 0.5) < 0.03  # E[p] = 1/2 for p ~ U(0, 1)


def test_noise_sets_masked_and_padding_to_mask_and_returns_the_masked_share():
    tokens = torch.randint(1, 8, (50, 12), generator=torch.Generator().manual_seed(0))
    lengths = LENGTHS[:50]
    noisy, m, p = masked.noise(tokens, lengths, MASK, generator=torch.Generator().manual_seed(2))
    pad = torch.arange(12) >= lengths[:, None]
    assert (noisy[m | pad] == MASK).all() and torch.equal(noisy[~m & ~pad], tokens[~m & ~pad])
    assert torch.allclose(p, m.sum(1).float() / lengths)


def test_masked_loss_weights_each_token_by_one_over_p_and_length():
    g = torch.Generator().manual_seed(0)
    logits, targets = torch.randn(3, 6, V, generator=g), torch.randint(0, V, (3, 6), generator=g)
    m = torch.zeros(3, 6, dtype=torch.bool)
    m[0, 1] = m[2, 5] = True
    m[1, :3] = True
    lengths, p = torch.tensor([4, 6, 6]), torch.tensor([0.25, 0.5, 1 / 6])
    ce = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), reduction="none").view(3, 6)
    expected = (ce[0, 1] / (0.25 * 4) + ce[1, :3].sum() / (0.5 * 6) + ce[2, 5] / (1 / 6 * 6)) / 3
    assert torch.allclose(masked.masked_loss(logits, targets, m, p, lengths), expected)
    # doubling p halves each token's weight
    assert torch.allclose(masked.masked_loss(logits, targets, m, 2 * p, lengths), expected / 2)


def test_replacement_keeps_padding_masked_and_its_loss_covers_every_real_position():
    g = torch.Generator().manual_seed(0)
    tokens, lengths = torch.randint(1, 8, (300, 12), generator=g), LENGTHS[:300]
    out = masked.replace_tokens(tokens, lengths, 8, MASK, generator=g)
    pad = torch.arange(12) >= lengths[:, None]
    assert (out[pad] == MASK).all() and (out[~pad] < 8).all()
    changed = (out != tokens)[~pad].float().mean().item()
    assert 0.3 < changed < 0.6  # E[t] ≈ 1/2, times 7/8 for draws of a different id
    logits = torch.randn(300, 12, V, generator=g)
    ce = F.cross_entropy(logits[~pad], tokens[~pad])
    assert torch.allclose(masked.replacement_loss(logits, tokens, lengths), ce)


def test_after_eos():
    x = torch.tensor([[3, 0, 4, 0], [1, 2, 3, 4]])
    assert masked.after_eos(x, 0).tolist() == [[False, False, True, True], [False] * 4]


def _random_model(seed=0, eos_at=None):
    """A fixed random 'denoiser' whose logits depend on the current tokens (so passes differ)."""
    g = torch.Generator().manual_seed(seed)
    emb, pos = torch.randn(V, V, generator=g), torch.randn(8, V, generator=g)

    def model(tokens):
        ctx = emb[tokens].mean(1, keepdim=True)
        logits = 3 * (pos[: tokens.shape[1]] + ctx)
        logits[..., MASK] = -1e9
        if eos_at is not None:
            logits[..., EOS] = -1e9
            logits[:, eos_at, EOS] = 1e3
        return logits
    return model


@pytest.mark.parametrize("steps", [1, 2, 3, 5])
def test_low_confidence_commits_at_least_one_token_per_pass_and_ends_within_its_steps(steps):
    for seed in range(5):
        res = masked.decode(_random_model(seed), 16, 8, MASK, EOS, steps, trace=True)
        assert res.passes <= steps and len(res.trace) == res.passes
        before = torch.full((16, 8), MASK)
        for state in res.trace:
            newly = (before == MASK) & (state != MASK)
            open_rows = ((before == MASK) & ~masked.after_eos(torch.where(before == MASK, state, before), EOS)).any(1)
            assert (newly.sum(1)[open_rows] >= 1).all()
            assert torch.equal(state[before != MASK], before[before != MASK])  # committed tokens stay
            before = state
        done = res.tokens != MASK
        assert (done | masked.after_eos(res.tokens, EOS)).all()  # nothing left masked before the first EOS
        assert (res.row_passes >= 1).all() and (res.row_passes <= res.passes).all()


def test_positions_after_the_first_predicted_eos_stay_masked():
    res = masked.decode(_random_model(0, eos_at=3), 4, 8, MASK, EOS, steps=3)
    assert (res.tokens[:, 3] == EOS).all() and (res.tokens[:, 4:] == MASK).all()


def test_parallel_is_one_argmax_pass_and_semi_ar_works_left_to_right():
    model = _random_model(1)
    res = masked.decode(model, 4, 8, MASK, EOS, method="parallel")
    assert res.passes == 1 and torch.equal(res.tokens, model(torch.full((4, 8), MASK)).argmax(-1))
    res = masked.decode(model, 4, 8, MASK, EOS, steps=4, method="semi_ar", trace=True)
    first = res.trace[0]
    assert (first[:, 2:] == MASK).all()  # the first pass commits only inside its window of 2 positions


def test_revise_repredicts_every_position_up_to_the_first_eos():
    model = _random_model(2)
    x = torch.tensor([[1, 2, 0, 5, 6, 7, 1, 2]])
    out = masked.revise(model, x, MASK, EOS)
    inp = torch.tensor([[1, 2, 0, MASK, MASK, MASK, MASK, MASK]])
    assert torch.equal(out[0, :3], model(inp).argmax(-1)[0, :3]) and (out[0, 3:] == MASK).all()
