"""Tests of companion.methods.sequence.dma: DMA keeps exactly w causal keys per query, equals dense attention when w
covers the sequence, trains its gate (initialised as in the official code), keeps as many keys as the static
patterns it is compared with, and the MQAR bookkeeping finds each answer. Bool masks: True = kept."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from companion.data import sequences
from companion.methods.sequence.dma import DynamicMask, answer_selected, attended_key_fraction, mqar_answers, query_correct, selection_stats, window_fraction
from companion.models.gpt import GPT, GPTConfig, KVCache
from companion.masks.attention import causal_mask, random_mask, sliding_window_mask


def _model(window, seq=16, seed=0, n_layer=2, **kw):
    torch.manual_seed(seed)
    cfg = GPTConfig(vocab_size=20, block_size=seq, n_layer=n_layer, n_head=2, n_embd=16, **kw)
    return GPT(cfg, attn_qkv_fn=DynamicMask(n_layer, 16, 2, window)).eval()


def test_mask_keeps_exactly_w_keys_per_query_within_causal_range():
    m = _model(window=5)
    x = torch.randint(0, 20, (3, 16), generator=torch.Generator().manual_seed(1))
    m(x)
    for keep in m.attn_qkv_fn.last_keep.values():
        assert keep.shape == (3, 2, 16, 16)
        assert not (keep & ~causal_mask(16)).any()  # never a future key
        expected = torch.arange(1, 17).clamp(max=5)  # min(w, position + 1)
        assert torch.equal(keep.sum(-1), expected.expand(3, 2, 16))
        assert attended_key_fraction(keep) == window_fraction(16, 5)


def test_dma_attends_fewer_keys_than_dense_and_its_share_shrinks_with_length():
    """The attention cost the notebook reports: w keys per query, so a falling share of dense causal attention."""
    m = _model(window=4, seq=32)
    m(torch.randint(0, 20, (2, 32), generator=torch.Generator().manual_seed(7)))
    for keep in m.attn_qkv_fn.last_keep.values():
        assert attended_key_fraction(keep) == window_fraction(32, 4) < 1.0
    fractions = [window_fraction(t, 8) for t in (8, 16, 32, 64, 128)]
    assert fractions[0] == 1.0 and all(a > b for a, b in zip(fractions, fractions[1:]))
    assert fractions[-1] < 2 * 8 / 128  # about 2w / T for T >> w


def test_sparse_attention_with_window_covering_the_sequence_equals_dense_with_the_bias():
    m = _model(window=16)
    x = torch.randint(0, 20, (2, 16), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        m.attn_qkv_fn.A.zero_()  # zero bias: DMA with w >= T is plain causal attention
    dense = GPT(m.config).eval()
    dense.load_state_dict({k: v for k, v in m.state_dict().items() if not k.startswith("attn_qkv_fn")})
    assert torch.allclose(m(x), dense(x), atol=1e-5)
    assert m.attn_qkv_fn.last_keep[0].equal(causal_mask(16).expand(2, 2, 16, 16))


def test_kv_cache_gives_the_same_logits_as_a_full_forward():
    m = _model(window=4, token_shift=True)
    x = torch.randint(0, 20, (2, 12), generator=torch.Generator().manual_seed(3))
    cache = KVCache(2)
    parts = [m(x[:, :7], cache=cache), m(x[:, 7:9], cache=cache), m(x[:, 9:], cache=cache)]
    assert torch.allclose(torch.cat(parts, 1), m(x), atol=1e-5)


def test_gradient_flows_to_the_dma_parameters():
    m = _model(window=4).train()
    x = torch.randint(0, 20, (2, 16), generator=torch.Generator().manual_seed(4))
    F.cross_entropy(m(x).flatten(0, 1), x.flatten()).backward()
    hook = m.attn_qkv_fn
    assert hook.A.grad is not None and hook.A.grad.abs().sum() > 0
    assert all(lin.weight.grad.abs().sum() > 0 for lin in hook.dt_proj)
    assert any(p is hook.A for p in m.parameters())  # the gate is trained with the model


def test_mqar_answers_point_at_the_value_after_the_query_key():
    x, y = sequences.mqar(50, num_pairs=4, seq_len=32, vocab=32, generator=torch.Generator().manual_seed(5),
                        filler="distinct")
    a = mqar_answers(x, y)
    rows = torch.arange(50)[:, None]
    assert torch.equal(x[rows, a["value_pos"]], y[rows, a["query_pos"]])  # the token there is the answer
    assert torch.equal(x[rows, a["value_pos"] - 1], x[rows, a["query_pos"]])  # preceded by the query key
    assert (a["distance"] > 0).all()
    window = sliding_window_mask(32, 8)
    assert torch.equal(answer_selected(window, a), a["distance"] < 8)


def test_selection_stats_and_query_correct_shapes():
    x, y = sequences.mqar(20, num_pairs=2, seq_len=16, vocab=20, generator=torch.Generator().manual_seed(6))
    m = _model(window=4)
    s = selection_stats(m, x, y, batch_size=8)
    assert s["answer_selected"].shape == (20, 2) and s["answer_selected"].dtype == torch.bool
    assert abs(s["fraction"] - window_fraction(16, 4)) < 1e-9
    assert query_correct(m, x, y, batch_size=8).shape == (20, 2)


def test_bad_arguments_are_rejected():
    with pytest.raises(ValueError, match="window"):
        DynamicMask(1, 16, 2, 0)
    with pytest.raises(ValueError, match="form"):
        DynamicMask(1, 16, 2, 4, form="cubic")


def test_gate_starts_as_in_the_official_code_near_zero_unless_asked():
    """flash-dmattn's Doge model creates A as zeros and re-initialises it N(0, initializer_range = 0.02)."""
    torch.manual_seed(0)
    a = DynamicMask(64, 16, 4, 4).A
    assert a.shape == (64, 4) and abs(a.mean().item()) < 0.01 and 0.015 < a.std().item() < 0.025
    assert torch.equal(DynamicMask(2, 16, 2, 4, a_init=1.0, a_std=0.0).A, torch.ones(2, 2))


def test_dma_keeps_as_many_keys_per_query_as_the_static_patterns():
    """The notebook's comparisons are at equal attended keys: DMA, SWA and the random pattern keep min(w, p + 1)."""
    m = _model(window=3, seq=16)
    m(torch.randint(0, 20, (2, 16), generator=torch.Generator().manual_seed(8)))
    counts = m.attn_qkv_fn.last_keep[0].sum(-1)  # (N,H,L)
    rand = random_mask(16, 3, n_head=2, generator=torch.Generator().manual_seed(0))
    assert torch.equal(counts, rand.sum(-1).expand_as(counts))
    assert torch.equal(counts[0, 0], sliding_window_mask(16, 3).sum(-1))
    assert attended_key_fraction(rand) == attended_key_fraction(m.attn_qkv_fn.last_keep[0]) == window_fraction(16, 3)
