"""Tests of companion.seqdata: exact MQAR answers, the stdlib char corpus, and a tiny model learning MQAR."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from companion.models.gpt import GPT, GPTConfig
from companion.seqdata import CharTokenizer, char_corpus, lm_windows, mqar
from companion.train import fit


def _lookup_answers(tokens: torch.Tensor, targets: torch.Tensor) -> tuple[list[int], list[int]]:
    """Answer every query by finding its key's first occurrence in the sequence and reading the next token."""
    found, expected = [], []
    for seq, tgt in zip(tokens.tolist(), targets.tolist()):
        for pos, t in enumerate(tgt):
            if t != -100:
                found.append(seq[seq.index(seq[pos]) + 1])
                expected.append(t)
    return found, expected


@pytest.mark.parametrize("filler", ["shared", "distinct"])
def test_mqar_answers_are_recoverable_by_lookup_and_ignored_elsewhere(filler):
    tokens, targets = mqar(200, num_pairs=6, seq_len=40, vocab=32, num_queries=5,
                           generator=torch.Generator().manual_seed(0), filler=filler)
    assert tokens.shape == targets.shape == (200, 40)
    answered = targets != -100
    assert answered.sum(1).eq(5).all()
    assert answered[:, :30].sum() == 0  # only the query keys at the end carry a target
    assert answered[:, 30::2].all() and not answered[:, 31::2].any()
    assert torch.equal(targets[:, 30::2], tokens[:, 31::2])  # next-token targets: the value after the query key
    found, expected = _lookup_answers(tokens, targets)
    assert found == expected
    keys = tokens[:, :30][tokens[:, :30] < 16]
    assert ((targets[answered] >= 16) & (targets[answered] < 32)).all()
    if filler == "distinct":
        assert tokens.max() == 32 and (tokens[:, :30] == 32).sum(1).eq(30 - 12).all()
    assert len(keys) > 0


def test_mqar_is_deterministic_in_the_seed_and_validates_sizes():
    a = mqar(10, 4, 24, 32, generator=torch.Generator().manual_seed(5))
    b = mqar(10, 4, 24, 32, generator=torch.Generator().manual_seed(5))
    c = mqar(10, 4, 24, 32, generator=torch.Generator().manual_seed(6))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) and not torch.equal(a[0], c[0])
    with pytest.raises(ValueError, match="seq_len"):
        mqar(2, num_pairs=8, seq_len=20, vocab=32)


def test_char_corpus_is_deterministic_text_and_tokenizer_round_trips():
    text = char_corpus()
    assert len(text) > 100_000 and text == char_corpus()
    assert char_corpus(1000) == text[:1000]
    tok = CharTokenizer(text)
    sample = text[5000:5300]
    ids = tok.encode(sample)
    assert ids.dtype == torch.long and tok.decode(ids) == sample
    assert tok.vocab_size == len(set(text))
    with pytest.raises(ValueError, match="not in the tokenizer"):
        CharTokenizer("abc").encode("abd")
    x, y = lm_windows(ids, 16)
    assert x.shape == y.shape and torch.equal(x[:, 1:], y[:, :-1]) and torch.equal(x[1], ids[16:32])


def test_tiny_two_layer_gpt_learns_easy_mqar_with_fit():
    """Pinned recipe (2 pairs, T=8, token shift, lr 3e-3, 300 steps, seed 1): retrieval, not just copying a
    value from the context (which would give 1/2), and far above chance (1/8)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matrices: one thread is faster and leaves a core to parallel tests
    try:
        acc = _train_easy_mqar()
    finally:
        torch.set_num_threads(threads)
    assert acc > 0.75, acc


def _train_easy_mqar() -> float:
    torch.manual_seed(1)
    x, y = mqar(4000, num_pairs=2, seq_len=8, vocab=16, generator=torch.Generator().manual_seed(0))
    xt, yt = mqar(500, num_pairs=2, seq_len=8, vocab=16, generator=torch.Generator().manual_seed(1))
    model = GPT(GPTConfig(vocab_size=16, block_size=8, n_layer=2, n_head=4, n_embd=32, token_shift=True))
    loss_fn = lambda m, a, b: F.cross_entropy(m(a).flatten(0, 1), b.flatten(), ignore_index=-100)
    fit(model, x, y, steps=300, batch_size=32, lr=3e-3, seed=1, device="cpu", loss_fn=loss_fn, progress=False)
    with torch.no_grad():
        pred = model(xt).argmax(-1)
    answered = yt != -100
    return (pred[answered] == yt[answered]).float().mean().item()
