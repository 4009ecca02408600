"""Tests of companion.models.seq2seq: shapes, a causal decoder, a bidirectional encoder, exits through the
shared head, and cached step-by-step decoding equal to teacher forcing."""

from __future__ import annotations

import torch

from companion.masks.attention import causal_mask
from companion.methods.parameter_masks.mue_early_exit import greedy_decode, teacher_forcing_input
from companion.models.layers import attention_map_hook
from companion.models.seq2seq import Seq2Seq, Seq2SeqConfig

ATOL = 1e-5


def _model(seed=0, **kw) -> Seq2Seq:
    torch.manual_seed(seed)
    cfg = dict(vocab_size=15, src_len=9, tgt_len=8, n_enc=3, n_dec=2, n_head=2, n_embd=32)
    cfg.update(kw)
    return Seq2Seq(Seq2SeqConfig(**cfg)).eval()


def _tokens(n, t, seed=1, high=14):
    return torch.randint(0, high, (n, t), generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def test_shapes_and_per_layer_states():
    m = _model()
    src, tgt = _tokens(4, 9), _tokens(4, 8, seed=2)
    assert m(src, tgt).shape == (4, 8, 15)
    enc = m.encode(src)
    assert len(enc) == 4 and all(h.shape == (4, 9, 32) for h in enc)
    dec = m.decode(tgt, m.memory(enc[-1]))
    assert len(dec) == 3 and all(h.shape == (4, 8, 32) for h in dec)
    all_logits = m(src, tgt, return_all_logits=True)
    assert len(all_logits) == 2 and torch.allclose(all_logits[-1], m(src, tgt), atol=ATOL)
    assert m.head.weight is m.tgt_tok.weight  # one shared exit head, tied to the decoder embedding


@torch.no_grad()
def test_cross_attention_maps_are_distributions_over_the_source():
    m = _model()
    src, tgt = _tokens(4, 9), _tokens(4, 8, seed=2)
    maps = {}
    with attention_map_hook(m.decoder, lambda module, att: maps.__setitem__((module.layer_idx, module.cross), att)):
        m(src, tgt)
    assert sorted(maps) == [(0, False), (0, True), (1, False), (1, True)]
    cross = maps[1, True]
    assert cross.shape == (4, 2, 8, 9) and torch.allclose(cross.sum(-1), torch.ones(4, 2, 8), atol=ATOL)
    assert float(maps[0, False].masked_select(~causal_mask(8)).abs().max()) == 0.0  # self-attention is causal


@torch.no_grad()
def test_decoder_is_causal_and_encoder_is_bidirectional():
    m = _model()
    src, tgt = _tokens(3, 9), _tokens(3, 8, seed=2)
    tgt2 = tgt.clone()
    tgt2[:, 5] = (tgt2[:, 5] + 1) % 14
    a, b = m(src, tgt), m(src, tgt2)
    assert torch.allclose(a[:, :5], b[:, :5], atol=ATOL)
    assert not torch.allclose(a[:, 5:], b[:, 5:], atol=1e-4)
    src2 = src.clone()
    src2[:, -1] = (src2[:, -1] + 1) % 14
    assert not torch.allclose(m.encode(src)[-1][:, 0], m.encode(src2)[-1][:, 0], atol=1e-4)
    assert not torch.allclose(m(src, tgt)[:, 0], m(src2, tgt)[:, 0], atol=1e-4)  # the decoder reads the memory


@torch.no_grad()
def test_truncated_stacks_are_prefixes():
    m = _model()
    src, tgt = _tokens(2, 9), _tokens(2, 8, seed=2)
    full = m.encode(src)
    assert torch.allclose(m.encode(src, n_layers=2)[-1], full[2], atol=ATOL)
    mem = m.memory(full[-1])
    assert torch.allclose(m.decode(tgt, mem, n_layers=1)[-1], m.decode(tgt, mem)[1], atol=ATOL)


@torch.no_grad()
def test_cached_greedy_decoding_matches_teacher_forcing():
    m = _model(seed=3)
    src = _tokens(5, 9)
    mem = m.memory(m.encode(src)[-1])
    tokens, layers = greedy_decode(m, mem, steps=8, bos=14)
    assert tokens.shape == (5, 8) and layers.eq(2).all()
    logits = m(src, teacher_forcing_input(tokens, 14))
    assert torch.equal(logits.argmax(-1), tokens)


@torch.no_grad()
def test_bidirectional_decoder_sees_later_positions_and_causal_does_not():
    src, tgt = _tokens(2, 9), _tokens(2, 8, seed=2)
    changed = tgt.clone()
    changed[:, -1] = (changed[:, -1] + 1) % 14
    causal, bidir = _model(), _model(causal=False)
    assert torch.allclose(causal(src, tgt)[:, :-1], causal(src, changed)[:, :-1], atol=ATOL)
    assert not torch.allclose(bidir(src, tgt)[:, 0], bidir(src, changed)[:, 0], atol=ATOL)


@torch.no_grad()
def test_feature_source_and_greedy_with_cache_equal_teacher_forcing():
    m = _model(src_dim=5)
    feats = torch.randn(3, 9, 5, generator=torch.Generator().manual_seed(0))
    memory = m.memory(m.encode(feats)[-1])
    tokens, passes = m.greedy(memory, 6, bos=14)
    assert passes == 6
    tf = m.decode(torch.cat([torch.full((3, 1), 14), tokens[:, :-1]], 1), memory)[-1]
    assert torch.equal(m.logits(tf).argmax(-1), tokens)
    eos = int(tokens[0, 0])  # stop as soon as every row has emitted this token
    short, n = m.greedy(memory, 6, bos=14, eos=eos)
    assert n <= 6 and ((short == eos).any(1)).all()
