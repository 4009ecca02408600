"""Tests of the input-agnostic sparse patterns in companion.masks.attention: each keeps exactly min(w, position + 1)
causal keys per query (the count of a sliding window and of a causal top-w), hand-checked examples, per-head
random draws, and the fixed-mask hook with a KV cache. Bool masks: True = may attend."""

from __future__ import annotations

import pytest
import torch

from companion.masks.attention import (causal_mask, fixed_mask_bias_fn, global_local_mask, pattern_mask, random_mask,
                                       sliding_window_mask, strided_mask)
from companion.models.gpt import GPT, GPTConfig, KVCache


def _rows(mask):
    return [torch.nonzero(row).flatten().tolist() for row in mask]


PATTERNS = {
    "sliding": lambda t, w: sliding_window_mask(t, w),
    "strided": lambda t, w: strided_mask(t, w, stride=4, local=min(2, w), offset=1),
    "global": lambda t, w: global_local_mask(t, w, n_global=min(2, w)),
    "random": lambda t, w: random_mask(t, w, n_head=3, generator=torch.Generator().manual_seed(0)),
}


@pytest.mark.parametrize("name", PATTERNS)
@pytest.mark.parametrize("window", [1, 3, 5])
def test_every_pattern_keeps_exactly_min_w_causal_keys_per_query(name, window):
    mask = PATTERNS[name](20, window)
    assert mask.dtype == torch.bool and mask.shape[-2:] == (20, 20)
    assert not (mask & ~causal_mask(20)).any()  # never a future key
    expected = torch.arange(1, 21).clamp(max=window)
    assert torch.equal(mask.sum(-1), expected.expand(mask.shape[:-1]))


def test_strided_pattern_by_hand():
    # w = 4, stride 4, local 1: the query itself, then distances 1, 5, 9, ... (offset 0 beyond the local key)
    m = strided_mask(12, 4, stride=4, local=1)
    assert _rows(m)[11] == [2, 6, 10, 11]
    assert _rows(m)[5] == [0, 3, 4, 5]  # distance 1 and 5 on the stride, then the most recent other key (3)
    assert _rows(m)[2] == [0, 1, 2]  # fewer than w earlier keys: all of them
    # no local keys, stride 3, offset 2: distances 2, 5, 8, 11
    assert _rows(strided_mask(12, 4, stride=3, offset=2))[11] == [0, 3, 6, 9]
    # different offsets cover different keys
    a, b = strided_mask(16, 4, stride=4, offset=0), strided_mask(16, 4, stride=4, offset=2)
    assert not (a & b)[-1].any()


def test_global_local_pattern_by_hand():
    m = global_local_mask(8, 3, n_global=1)
    assert _rows(m)[7] == [0, 6, 7]
    assert _rows(m)[3] == [0, 2, 3]
    assert _rows(global_local_mask(8, 3, n_global=0)) == _rows(sliding_window_mask(8, 3))


def test_sliding_window_is_the_pattern_of_recency():
    dist = torch.arange(10)[:, None] - torch.arange(10)[None, :]
    assert torch.equal(pattern_mask(-dist.float(), 4), sliding_window_mask(10, 4))


def test_random_pattern_draws_differ_by_head_are_reproducible_and_cover_the_context():
    g = lambda s: torch.Generator().manual_seed(s)  # noqa: E731
    m = random_mask(64, 4, n_head=4, generator=g(1))
    assert m.shape == (4, 64, 64)
    assert torch.equal(m, random_mask(64, 4, n_head=4, generator=g(1)))
    assert not torch.equal(m[0], m[1])
    assert m[:, 32:, :16].any()  # late queries reach early keys (unlike a window of 4)
    assert random_mask(10, 3, generator=g(0)).shape == (10, 10)


def test_bad_pattern_arguments_are_rejected():
    with pytest.raises(ValueError):
        strided_mask(8, 4, stride=0)
    with pytest.raises(ValueError):
        strided_mask(8, 4, stride=3, offset=3)
    with pytest.raises(ValueError):
        strided_mask(8, 2, stride=3, local=3)
    with pytest.raises(ValueError):
        global_local_mask(8, 2, n_global=3)
    with pytest.raises(ValueError, match="window"):
        pattern_mask(torch.zeros(4, 4), 0)


def test_fixed_mask_hook_restricts_attention_and_matches_a_kv_cache():
    torch.manual_seed(0)
    mask = random_mask(12, 3, n_head=2, generator=torch.Generator().manual_seed(3))
    cfg = GPTConfig(vocab_size=20, block_size=12, n_layer=2, n_head=2, n_embd=16)
    m = GPT(cfg, attn_bias_fn=fixed_mask_bias_fn(mask)).eval()
    x = torch.randint(0, 20, (2, 12), generator=torch.Generator().manual_seed(4))
    _, cap = m(x, capture=True)
    for att in cap["attentions"]:
        assert (att[:, ~mask] == 0).all()  # no weight outside the pattern, per head
    cache = KVCache(2)
    parts = [m(x[:, :5], cache=cache), m(x[:, 5:6], cache=cache), m(x[:, 6:], cache=cache)]
    assert torch.allclose(torch.cat(parts, 1), m(x), atol=1e-5)
    assert fixed_mask_bias_fn(mask)(0, 2, 7).shape == (2, 2, 7)
