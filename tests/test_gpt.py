"""Tests of companion.models.gpt: masks are exact, skip gates, exit heads, capture, and the KV cache.

Bool attention masks: True = may attend. ``skip``: True = the layer is the identity for that sequence.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from companion.models.gpt import GPT, GPTConfig, KVCache
from companion.models.layers import attention_map_hook
from companion.masks.attention import causal_mask, sliding_window_bias_fn, sliding_window_mask, topk_mask

ATOL = 1e-5


def _model(seed=0, **kw) -> GPT:
    torch.manual_seed(seed)
    cfg = dict(vocab_size=20, block_size=32, n_layer=3, n_head=2, n_embd=32)
    hook = kw.pop("attn_bias_fn", None)
    cfg.update(kw)
    return GPT(GPTConfig(**cfg), attn_bias_fn=hook).eval()


def _tokens(n=3, t=12, seed=1):
    return torch.randint(0, 20, (n, t), generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def test_causal_model_ignores_future_tokens():
    m = _model()
    x = _tokens()
    x2 = x.clone()
    x2[:, 7] = (x2[:, 7] + 1) % 20
    a, b = m(x), m(x2)
    assert torch.allclose(a[:, :7], b[:, :7], atol=ATOL)
    assert not torch.allclose(a[:, 7:], b[:, 7:], atol=1e-3)


@torch.no_grad()
def test_bidirectional_model_sees_future_tokens():
    m = _model(causal=False)
    x = _tokens()
    x2 = x.clone()
    x2[:, 7] = (x2[:, 7] + 1) % 20
    assert not torch.allclose(m(x)[:, :7], m(x2)[:, :7], atol=1e-3)


def test_mask_helpers_are_exact():
    assert torch.equal(causal_mask(3), torch.tensor([[1, 0, 0], [1, 1, 0], [1, 1, 1]], dtype=torch.bool))
    sw = sliding_window_mask(5, 2)
    assert sw.sum(-1).tolist() == [1, 2, 2, 2, 2]
    assert sw[4].tolist() == [False, False, False, True, True]
    # with a cache: the 2 queries are the last 2 of 6 positions
    assert torch.equal(sliding_window_mask(2, 3, k_len=6), sliding_window_mask(6, 3)[-2:])
    scores = torch.tensor([[0.0, 5.0, 1.0, 3.0]]).expand(4, 4)
    keep = topk_mask(scores, 2, allowed=causal_mask(4))
    assert keep.tolist() == [[True, False, False, False], [True, True, False, False],
                             [False, True, True, False], [False, True, False, True]]


@torch.no_grad()
def test_sliding_window_key_outside_window_has_no_influence():
    w = 3
    m = _model(attn_bias_fn=sliding_window_bias_fn(w), n_layer=1)
    x = _tokens()
    x2 = x.clone()
    x2[:, 2] = (x2[:, 2] + 1) % 20  # position 2 is inside the windows of queries 2..4 only (1 layer)
    a, b = m(x), m(x2)
    assert torch.allclose(a[:, 5:], b[:, 5:], atol=ATOL)
    assert not torch.allclose(a[:, 3:5], b[:, 3:5], atol=1e-3)
    # a second layer widens the receptive field to 2*(w-1): position 2 then reaches query 6, not 7
    m2 = _model(attn_bias_fn=sliding_window_bias_fn(w), n_layer=2)
    a, b = m2(x), m2(x2)
    assert torch.allclose(a[:, 7:], b[:, 7:], atol=ATOL)
    assert not torch.allclose(a[:, 6], b[:, 6], atol=1e-3)


@torch.no_grad()
def test_float_bias_hook_and_per_batch_mask_shapes():
    m = _model()
    x = _tokens()
    zero = m(x, attn_bias_fn=lambda i, q, k: torch.zeros(q, k))
    assert torch.allclose(zero, m(x), atol=ATOL)
    full = torch.ones(3, 2, 12, 12, dtype=torch.bool)
    full[1] = causal_mask(12) & sliding_window_mask(12, 2)
    out = m(x, attn_bias_fn=lambda i, q, k: full)
    assert torch.allclose(out[[0, 2]], m(x)[[0, 2]], atol=ATOL)
    assert torch.allclose(out[1], m(x[1:2], attn_bias_fn=sliding_window_bias_fn(2))[0], atol=ATOL)


@torch.no_grad()
def test_skipping_all_layers_is_embedding_then_head():
    m = _model()
    x = _tokens()
    expected = m.lm_head(m.ln_f(m.wte(x) + m.wpe(torch.arange(x.shape[1]))))
    assert torch.allclose(m(x, skip=[True] * 3), expected, atol=ATOL)
    assert not torch.allclose(m(x), expected, atol=1e-3)


@torch.no_grad()
def test_per_sequence_skip_matches_running_each_sequence_alone():
    m = _model()
    x = _tokens()
    skip = torch.tensor([[0, 1, 0], [1, 1, 1], [0, 0, 0]], dtype=torch.bool)
    out = m(x, skip=skip)
    for i in range(3):
        assert torch.allclose(out[i], m(x[i:i + 1], skip=skip[i])[0], atol=ATOL)
    with pytest.raises(ValueError, match="skip must have shape"):
        m(x, skip=[True, False])


@torch.no_grad()
def test_return_all_logits_gives_one_exit_per_layer_and_last_is_final():
    m = _model()
    x = _tokens()
    exits = m(x, return_all_logits=True)
    assert len(exits) == m.config.n_layer
    assert torch.allclose(exits[-1], m(x), atol=ATOL)
    exits = m(x, skip=[False, True, False], return_all_logits=True)
    assert torch.allclose(exits[0], exits[1], atol=ATOL)  # a skipped layer repeats the previous exit


@torch.no_grad()
def test_capture_returns_hidden_states_and_row_stochastic_causal_attention():
    m = _model()
    x = _tokens()
    logits, cap = m(x, capture=True)
    assert torch.allclose(logits, m(x), atol=ATOL)
    assert len(cap["hidden_states"]) == 4 and len(cap["attentions"]) == 3
    att = cap["attentions"][0]
    assert att.shape == (3, 2, 12, 12)
    assert torch.allclose(att.sum(-1), torch.ones(3, 2, 12), atol=ATOL)
    assert float(att.masked_select(~causal_mask(12)).abs().max()) == 0.0
    _, cap = m(x, skip=[False, True, False], capture=True)
    assert cap["attentions"][1] is None
    assert torch.equal(cap["hidden_states"][1], cap["hidden_states"][2])


@torch.no_grad()
def test_attention_map_hook_sees_the_captured_maps_and_can_replace_them():
    m, x = _model(), _tokens()
    _, cap = m(x, capture=True)
    seen = {}
    with attention_map_hook(m, lambda module, att: seen.__setitem__(module.layer_idx, att)):
        m(x)
    assert sorted(seen) == [0, 1, 2]
    assert all(torch.allclose(seen[i], cap["attentions"][i], atol=ATOL) for i in seen)
    first_only = lambda module, att: torch.zeros_like(att).index_fill_(-1, torch.tensor([0]), 1.0)
    with attention_map_hook(m, first_only):  # every query reads only the first position's value
        replaced = m(x)
    plain = m(x)
    assert torch.allclose(replaced[:, 0], plain[:, 0], atol=ATOL)  # the first query attended only itself anyway
    assert not torch.allclose(replaced[:, 1:], plain[:, 1:], atol=1e-3)


@pytest.mark.parametrize("token_shift", [False, True])
@torch.no_grad()
def test_cache_with_skip_equals_no_cache_with_skip(token_shift):
    m = _model(token_shift=token_shift)
    x = _tokens(t=10)
    skip = torch.tensor([[0, 1, 0], [1, 0, 1], [0, 0, 0]], dtype=torch.bool)
    full = m(x, skip=skip)
    cache = KVCache(3)
    prefix = m(x[:, :4], skip=skip, cache=cache)
    steps = [prefix] + [m(x[:, t:t + 1], skip=skip, cache=cache) for t in range(4, 10)]
    assert torch.allclose(torch.cat(steps, dim=1), full, atol=ATOL)
    assert not torch.allclose(full, m(x), atol=1e-3)  # the skip really changed the outputs
    gen_cached = m.generate(x[:, :5], 8, skip=skip, use_cache=True)
    gen_plain = m.generate(x[:, :5], 8, skip=skip, use_cache=False)
    assert torch.equal(gen_cached, gen_plain)
    # the logits along the generated sequences agree too
    cache = KVCache(3)
    step_logits = torch.cat([m(gen_cached[:, t:t + 1], skip=skip, cache=cache) for t in range(13)], dim=1)
    assert torch.allclose(step_logits, m(gen_cached, skip=skip), atol=ATOL)


@torch.no_grad()
def test_skipped_layer_neither_writes_nor_reads_its_cache():
    m = _model()
    x = _tokens(n=2, t=8)
    cache = KVCache(3)
    m(x[:, :5], cache=cache)  # prompt through all layers
    skip = torch.tensor([[False, True, False], [False, False, False]])
    out = torch.cat([m(x[:, t:t + 1], skip=skip, cache=cache) for t in range(5, 8)], dim=1)
    assert cache.valid[1][0, 5:].sum() == 0 and cache.valid[1][1].all() and cache.valid[0].all()
    # overwriting the skipped slots does not change what later queries compute
    cache2 = KVCache(3)
    m(x[:, :5], cache=cache2)
    m(x[:, 5:7], skip=skip, cache=cache2)
    cache2.k[1][0, :, 5:] = 100.0
    cache2.v[1][0, :, 5:] = -100.0
    unskip = torch.zeros(3, dtype=torch.bool)
    last = m(x[:, 7:8], skip=unskip, cache=cache2)
    cache3 = KVCache(3)
    m(x[:, :5], cache=cache3)
    m(x[:, 5:7], skip=skip, cache=cache3)
    assert torch.allclose(last, m(x[:, 7:8], skip=unskip, cache=cache3), atol=ATOL)
    assert out.shape == (2, 3, 20)


def test_cache_rejects_overflow_and_bidirectional_generation():
    with pytest.raises(ValueError, match="block_size"):
        _model().generate(_tokens(t=30), 5)
    with pytest.raises(ValueError, match="causal"):
        _model(causal=False).generate(_tokens(), 2)


def test_gradients_flow_through_masked_attention():
    m = _model(attn_bias_fn=sliding_window_bias_fn(4)).train()
    x = _tokens()
    F.cross_entropy(m(x).flatten(0, 1), x.flatten()).backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in m.parameters())


@torch.no_grad()
def test_qkv_hook_sees_the_layer_values_and_a_bool_window_equals_the_bias_hook():
    seen = []

    def window_from_qkv(layer_idx, q, k, v):
        seen.append((layer_idx, tuple(v.shape)))
        return sliding_window_mask(q.shape[2], 3, k.shape[2])

    x = _tokens(n=2, t=10)
    m = _model(attn_bias_fn=sliding_window_bias_fn(3))
    plain = GPT(m.config).eval()
    plain.load_state_dict(m.state_dict())
    assert torch.allclose(plain(x, attn_qkv_fn=window_from_qkv), m(x), atol=ATOL)
    assert seen == [(i, (2, 2, 10, 16)) for i in range(3)]  # every layer, values (N,H,K,hd)
