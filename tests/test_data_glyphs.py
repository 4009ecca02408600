"""Tests of companion.data.glyphs: the lexicon, token encoding round trip, the split and the rendering."""

from __future__ import annotations

import torch

from companion.data import glyphs


def test_lexicon_is_sorted_distinct_lowercase_words_in_range():
    words = glyphs.lexicon(3, 8)
    assert len(words) > 500 and words == sorted(set(words))
    assert all(w.isascii() and w.isalpha() and w.islower() and 3 <= len(w) <= 8 for w in words)


def test_encode_decode_round_trip_and_lengths():
    tokens, lengths = glyphs.encode(["ab", "zebra"], 6)
    assert tokens.shape == (2, 7) and lengths.tolist() == [3, 6]
    assert tokens[0].tolist() == [1, 2, glyphs.EOS, glyphs.EOS, glyphs.EOS, glyphs.EOS, glyphs.EOS]
    assert glyphs.decode(tokens) == ["ab", "zebra"]
    assert glyphs.decode(torch.tensor([[1, glyphs.MASK, glyphs.BOS, 0, 5]])) == ["a_^"]


def test_split_is_disjoint_and_seeded():
    words = glyphs.lexicon()
    tr, te = glyphs.split(words, 100, torch.Generator().manual_seed(0))
    assert len(te) == 100 and not set(tr) & set(te) and len(tr) + 100 == len(words)
    assert glyphs.split(words, 100, torch.Generator().manual_seed(0))[1] == te


def test_render_places_noisy_prototypes_at_a_jittered_offset():
    g = torch.Generator().manual_seed(0)
    protos = glyphs.prototypes(8, g)
    clean = glyphs.render(["cab"], protos, 6, noise=0.0, occlusion=0.0, jitter=2, generator=g)[0]
    nonzero = clean.abs().sum(1) > 0
    start = int(nonzero.float().argmax())
    assert nonzero.sum() == 3 and start <= 2
    assert torch.equal(clean[start:start + 3], protos[[2, 0, 1]])
    occluded = glyphs.render(["abcdefgh"] * 200, protos, 10, noise=0.0, occlusion=0.25, jitter=0, generator=g)
    assert abs((occluded.abs().sum(2) == 0)[:, :8].float().mean().item() - 0.25) < 0.03
    noisy = glyphs.render(["a"] * 500, protos, 1, noise=0.5, occlusion=0.0, jitter=0, generator=g)
    assert abs((noisy[:, 0] - protos[0]).std().item() - 0.5) < 0.03


def test_render_lines_draws_each_word_as_a_noisy_line_image():
    g = torch.Generator().manual_seed(0)
    clean = glyphs.render_lines(["cab", "individual"], 64, noise=0.0, occlusion=0.0, generator=g)
    assert clean.shape == (2, 1, 64, 64) and clean.max() > 0.5
    rows = (clean[:, 0].sum(2) > 0)
    assert rows[:, :20].sum() == 0 and rows[:, 44:].sum() == 0  # one line, vertically centred
    cols = (clean[:, 0].sum(1) > 0).sum(1)
    assert cols[1] > cols[0]  # longer words cover more columns
    hidden = glyphs.render_lines(["cab"], 64, noise=0.0, occlusion=1.0, generator=g)
    assert hidden.abs().sum() == 0
