"""Tests of companion.meap: MEAP's input masking (exact counts, labels untouched, determinism), its loss, and
the retrieval / attention-distinguishability measurements."""

from __future__ import annotations

import pytest
import torch

from companion.methods.sequence import meap
from companion.models.gpt import GPT, GPTConfig
from companion.data.sequences import IGNORE, multi_doc_retrieval


def test_num_masked_follows_the_official_rounding():
    assert meap.num_masked(32, 0.1) == 3 and meap.num_masked(32, 0.15) == 4
    assert meap.num_masked(5, 0.1) == 1  # at least one mask
    assert meap.num_masked(32, 0.0) == 0 and meap.num_masked(0, 0.1) == 0
    with pytest.raises(ValueError, match="mask ratio"):
        meap.num_masked(10, 1.0)


def test_mask_inputs_masks_a_share_of_the_sequence_among_eligible_positions_and_leaves_the_input_intact():
    tokens = torch.randint(0, 50, (64, 40), generator=torch.Generator().manual_seed(0))
    before = tokens.clone()
    maskable = torch.arange(40) < 30
    out, masked = meap.mask_inputs(tokens, 0.15, 99, maskable, generator=torch.Generator().manual_seed(1))
    assert torch.equal(tokens, before)  # the caller's tokens (and targets built from them) are untouched
    assert masked.sum(1).eq(6).all()  # int(40 * 0.15) = 6 per row, as int(block_size * ratio) officially
    assert not masked[:, 30:].any()  # only eligible positions
    assert (out[masked] == 99).all() and torch.equal(out[~masked], tokens[~masked])
    assert len({tuple(r.nonzero().flatten().tolist()) for r in masked}) > 1  # drawn per row
    per_row = torch.ones(64, 40, dtype=torch.bool)
    per_row[:, :10] = False
    per_row[0, :] = False
    per_row[0, 5:11] = True  # row 0: exactly the 6 positions 5..10
    _, masked = meap.mask_inputs(tokens, 0.15, 99, per_row, generator=torch.Generator().manual_seed(2))
    assert masked[0].nonzero().flatten().tolist() == list(range(5, 11)) and not masked[1:, :10].any()
    with pytest.raises(ValueError, match="at least 6"):
        meap.mask_inputs(tokens, 0.15, 99, torch.arange(40) < 5)


def test_mask_inputs_is_deterministic_in_the_generator():
    tokens = torch.arange(200).view(10, 20)
    a = meap.mask_inputs(tokens, 0.2, -1, generator=torch.Generator().manual_seed(3))
    b = meap.mask_inputs(tokens, 0.2, -1, generator=torch.Generator().manual_seed(3))
    c = meap.mask_inputs(tokens, 0.2, -1, generator=torch.Generator().manual_seed(4))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) and not torch.equal(a[1], c[1])
    with pytest.raises(ValueError, match="maskable"):
        meap.mask_inputs(tokens, 0.2, -1, maskable=torch.ones(5, dtype=torch.bool))


def test_lm_targets_are_the_next_token_everywhere():
    tokens = torch.tensor([[5, 6, 7, 8]])
    assert meap.lm_targets(tokens).tolist() == [[6, 7, 8, IGNORE]]


def test_meap_loss_masks_inputs_but_scores_the_unmasked_targets():
    seen = []

    class Spy(torch.nn.Module):
        def forward(self, x):
            seen.append(x.clone())
            return torch.zeros(*x.shape, 8)

    x = torch.randint(0, 7, (4, 10), generator=torch.Generator().manual_seed(0))
    y = meap.lm_targets(x)
    protect = torch.zeros(4, 10, dtype=torch.bool)
    protect[:, :5] = True
    loss_fn = meap.meap_loss_fn(0.2, 7, protect=lambda xb: protect, seed=0)
    loss = loss_fn(Spy(), x, y)
    assert seen[0].eq(7).sum(1).eq(2).all() and not x.eq(7).any()
    assert not seen[0][:, :5].eq(7).any()  # protected positions are never masked
    assert torch.isclose(loss, torch.log(torch.tensor(8.0)))  # uniform logits against the kept targets
    assert torch.isclose(meap.next_token_loss(Spy(), x, y), loss)
    assert torch.equal(seen[1], x)  # plain NTP sees the unmasked input


def test_exact_match_and_accuracy_by_position():
    targets = torch.tensor([[IGNORE, 1, 2], [IGNORE, 1, 2], [IGNORE, 0, IGNORE]])
    logits = torch.nn.functional.one_hot(torch.tensor([[0, 1, 2], [0, 1, 0], [3, 0, 0]]), 4).float()
    correct = meap.exact_match(logits, targets)
    assert correct.tolist() == [True, False, True]
    acc = meap.accuracy_by_position(correct, torch.tensor([0, 0, 2]), 3)
    assert acc[0] == 0.5 and torch.isnan(acc[1]) and acc[2] == 1.0


def test_attention_focus_gold_share_and_entropy():
    att = torch.zeros(2, 1, 3, 4)
    att[0, 0, 2] = torch.tensor([1.0, 0.0, 0.0, 0.0])  # all on the gold key
    att[1, 0, 2] = torch.tensor([0.25, 0.25, 0.25, 0.25])  # uniform
    gold = torch.tensor([[True, False, False, False], [True, False, False, False]])
    f = meap.attention_focus(att, 2, gold)
    assert torch.allclose(f["gold_share"], torch.tensor([1.0, 0.25]))
    assert torch.allclose(f["entropy"], torch.tensor([0.0, torch.log(torch.tensor(4.0)).item()]), atol=1e-6)
    f = meap.attention_focus(att, 2, gold, context_len=2)  # renormalised over the first two keys
    assert torch.allclose(f["entropy"], torch.tensor([0.0, torch.log(torch.tensor(2.0)).item()]), atol=1e-6)


def test_retrieval_task_positions_and_evaluation_shapes():
    for task in meap.TASKS:
        batch, pos = meap.retrieval_task(task, 16, 4, position=torch.arange(16) % 4, filler_len=1,
                                         generator=torch.Generator().manual_seed(0))
        assert pos.tolist() == (torch.arange(16) % 4).tolist()
        assert batch.tokens.shape == (16, 4 * 3 + 3)
        assert batch.gold_mask[:, :batch.context_len].any(1).all()
    # needle depths are evenly spaced from the start to the latest position that fits
    batch, _ = meap.retrieval_task("needle", 2, 4, position=torch.tensor([0, 3]), filler_len=1)
    assert batch.gold.tolist() == [0, batch.context_len - 2]
    with pytest.raises(ValueError, match="task"):
        meap.retrieval_task("haystack", 2, 4)
    batch = multi_doc_retrieval(20, num_docs=4, generator=torch.Generator().manual_seed(0))
    model = GPT(GPTConfig(vocab_size=batch.vocab_size, block_size=batch.tokens.shape[1], n_layer=2, n_embd=16))
    r = meap.evaluate_retrieval(model, batch, batch_size=8)
    assert r["correct"].shape == r["gold_share"].shape == r["entropy"].shape == (20,)
    assert r["attention"].shape == (20, batch.tokens.shape[1]) and r["per_layer"].shape == (2,)
    assert 0 <= r["layer"] < 2 and ((r["gold_share"] >= 0) & (r["gold_share"] <= 1 + 1e-6)).all()


def test_evidence_marks_the_asked_facts_and_protected_masks_never_hide_them():
    batch, _ = meap.retrieval_task("documents", 200, 6, value_len=2, filler_len=1, num_questions=3,
                                   generator=torch.Generator().manual_seed(0))
    ctx, step = batch.context_len, 4
    need = meap.evidence(batch.tokens, ctx, 2)
    docs = batch.tokens[:, :ctx].view(200, 6, 4)
    asked = (docs[..., :1] == batch.tokens[:, None, ctx + 1::step]).any(-1)  # (N, 6) documents asked about
    expected = asked[..., None].expand(200, 6, 4).clone()
    expected[..., 3] = False  # filler is not evidence
    assert torch.equal(need[:, :ctx], expected.flatten(1))
    assert need[:, ctx:].nonzero()[:, 1].unique().tolist() == [1, 1 + step, 1 + 2 * step]  # question keys
    assert need.sum(1).eq(3 * 3 + 3).all()  # 3 asked documents x (key + 2 values) + 3 question keys
    assert (need & batch.gold_mask).sum(1).eq(3).all()  # the gold document (asked first) is evidence
    # unrestricted masks hide evidence in some prompts; masks that avoid it never do
    _, free = meap.mask_inputs(batch.tokens, 0.15, 99, generator=torch.Generator().manual_seed(1))
    assert meap.evidence_hidden(batch.tokens, free, ctx, 2).any()
    _, kept = meap.mask_inputs(batch.tokens, 0.15, 99, ~need, generator=torch.Generator().manual_seed(1))
    assert not meap.evidence_hidden(batch.tokens, kept, ctx, 2).any()
    for task in meap.TASKS:  # the needle: its key and value, and the question's key
        b, _ = meap.retrieval_task(task, 3, 4, position=torch.tensor([0, 1, 3]), value_len=2, filler_len=1,
                                   generator=torch.Generator().manual_seed(0))
        need = meap.evidence(b.tokens, b.context_len, 2)
        assert torch.equal(need[:, :b.context_len], b.gold_mask[:, :b.context_len] & (b.tokens[:, :b.context_len] < 64))
