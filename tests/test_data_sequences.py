"""Tests of companion.data.sequences: exact MQAR answers, the stdlib char corpus, and a tiny model learning MQAR."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from companion.models.gpt import GPT, GPTConfig
from companion.data.sequences import CharTokenizer, char_corpus, lm_windows, mqar
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


def test_digit_tasks_answers_are_exact():
    from companion.data.sequences import DIGIT_TASKS, digit_tasks

    src, tgt, task = digit_tasks(400, length=4, generator=torch.Generator().manual_seed(0))
    assert src.shape == (400, 5) and tgt.shape == (400, 4) and task.shape == (400,)
    assert torch.equal(src[:, -1], 10 + task) and set(task.tolist()) == {0, 1, 2, 3}
    for s, t, k in zip(src.tolist(), tgt.tolist(), task.tolist()):
        digits = s[:-1]
        number = (int("".join(map(str, digits))) + 1) % 10**4
        expected = {"copy": digits, "reverse": digits[::-1], "sort": sorted(digits),
                    "increment": [int(c) for c in f"{number:04d}"]}[DIGIT_TASKS[k]]
        assert t == expected
    carry = digit_tasks(1, length=3, generator=torch.Generator().manual_seed(0))  # determinism
    assert torch.equal(carry[0], digit_tasks(1, length=3, generator=torch.Generator().manual_seed(0))[0])
    only_copy = digit_tasks(50, length=3, tasks=("copy",))
    assert torch.equal(only_copy[0][:, :-1], only_copy[1])
    with pytest.raises(ValueError, match="tasks must be"):
        digit_tasks(5, tasks=("add",))


def test_multi_doc_retrieval_places_the_gold_document_and_answers_with_its_value():
    from companion.data.sequences import multi_doc_retrieval

    gold = torch.arange(60) % 6
    r = multi_doc_retrieval(60, num_docs=6, value_len=2, filler_len=1, gold_position=gold,
                            generator=torch.Generator().manual_seed(0))
    doc_len, ctx = 4, 24
    assert r.context_len == ctx and r.tokens.shape == (60, ctx + 4) and torch.equal(r.gold, gold)
    assert r.vocab_size == 32 + 32 + 16 + 1 and (r.tokens[:, ctx] == r.vocab_size - 1).all()
    docs = r.tokens[:, :ctx].view(60, 6, doc_len)
    assert (docs[..., 0] < 32).all() and ((docs[..., 1:3] >= 32) & (docs[..., 1:3] < 64)).all()
    assert (docs[..., 3] >= 64).all()
    assert all(len(set(k.tolist())) == 6 for k in docs[..., 0])  # distinct keys: one gold document
    rows = torch.arange(60)
    assert torch.equal(r.tokens[:, ctx + 1], docs[rows, gold, 0])  # the question asks the gold key
    assert torch.equal(r.targets[:, ctx + 1:ctx + 3], docs[rows, gold, 1:3])  # ...and the answer is its value
    assert (r.targets[:, :ctx + 1] == -100).all() and (r.targets[:, -1] == -100).all()
    assert r.answer_positions.tolist() == [ctx + 1, ctx + 2]
    assert torch.equal(r.gold_mask[:, :ctx].view(60, 6, doc_len).all(-1), torch.nn.functional.one_hot(gold, 6).bool())
    assert r.gold_mask.sum(1).eq(doc_len).all()
    again = multi_doc_retrieval(60, num_docs=6, value_len=2, filler_len=1, gold_position=gold,
                                generator=torch.Generator().manual_seed(0))
    assert torch.equal(again.tokens, r.tokens)
    uniform = multi_doc_retrieval(2000, num_docs=4, generator=torch.Generator().manual_seed(1))
    assert uniform.gold.bincount(minlength=4).min() > 400
    with pytest.raises(ValueError, match="gold_position"):
        multi_doc_retrieval(3, num_docs=4, gold_position=4)
    with pytest.raises(ValueError, match="num_docs"):
        multi_doc_retrieval(3, num_docs=40)


def test_multi_doc_retrieval_can_ask_several_distinct_questions_the_gold_one_first():
    from companion.data.sequences import multi_doc_retrieval

    gold = torch.arange(40) % 5
    one = multi_doc_retrieval(40, num_docs=5, value_len=2, filler_len=1, gold_position=gold,
                              generator=torch.Generator().manual_seed(3))
    r = multi_doc_retrieval(40, num_docs=5, value_len=2, filler_len=1, gold_position=gold,
                            generator=torch.Generator().manual_seed(3), num_questions=3)
    ctx = 20
    assert r.tokens.shape == (40, ctx + 3 * 4) and torch.equal(r.tokens[:, :ctx + 4], one.tokens)  # same prefix
    assert torch.equal(r.gold_mask[:, :ctx], one.gold_mask[:, :ctx]) and torch.equal(r.gold, gold)
    docs = r.tokens[:, :ctx].view(40, 5, 4)
    asked = r.tokens[:, ctx + 1::4]  # (40, 3) the question keys
    assert (r.tokens[:, ctx::4] == r.vocab_size - 1).all()  # each question starts with QUERY
    assert all(len(set(k.tolist())) == 3 for k in asked)  # distinct questions
    for i in range(40):
        for j, key in enumerate(asked[i].tolist()):
            d = docs[i, :, 0].tolist().index(key)
            assert j > 0 or d == gold[i]
            assert torch.equal(r.targets[i, ctx + 4 * j + 1:ctx + 4 * j + 3], docs[i, d, 1:3])
    assert (r.targets != -100).sum(1).eq(6).all()
    with pytest.raises(ValueError, match="num_questions"):
        multi_doc_retrieval(3, num_docs=4, num_questions=5)


def test_needle_haystack_hides_one_needle_at_the_requested_depth():
    from companion.data.sequences import needle_haystack

    depth = torch.tensor([0, 5, 13])
    r = needle_haystack(3, context_len=16, value_len=2, depth=depth, generator=torch.Generator().manual_seed(0))
    assert r.tokens.shape == (3, 20) and torch.equal(r.gold, depth)
    for i, d in enumerate(depth.tolist()):
        ctx = r.tokens[i, :16]
        assert ctx[d] < 32 and ((ctx[d + 1:d + 3] >= 32) & (ctx[d + 1:d + 3] < 64)).all()
        assert (ctx < 64).sum() == 3  # the needle is the only non-filler in the haystack
        assert r.tokens[i, 17] == ctx[d] and torch.equal(r.targets[i, 17:19], ctx[d + 1:d + 3])
        assert r.gold_mask[i].nonzero().flatten().tolist() == [d, d + 1, d + 2]
    with pytest.raises(ValueError, match="depth"):
        needle_haystack(2, context_len=16, value_len=2, depth=14)
