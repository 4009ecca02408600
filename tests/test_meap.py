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


@pytest.mark.parametrize("shared", [False, True])
def test_mask_inputs_masks_exactly_k_eligible_positions_and_leaves_the_input_intact(shared):
    tokens = torch.randint(0, 50, (64, 40), generator=torch.Generator().manual_seed(0))
    before = tokens.clone()
    maskable = torch.arange(40) < 30
    out, masked = meap.mask_inputs(tokens, 0.15, 99, maskable, shared=shared,
                                   generator=torch.Generator().manual_seed(1))
    assert torch.equal(tokens, before)  # the caller's tokens (and targets built from them) are untouched
    assert masked.sum(1).eq(4).all()  # int(30 * 0.15) = 4 per row
    assert not masked[:, 30:].any()  # only eligible positions
    assert (out[masked] == 99).all() and torch.equal(out[~masked], tokens[~masked])
    if shared:
        assert (masked == masked[:1]).all()  # one set of positions for the whole batch
    else:
        assert len({tuple(r.nonzero().flatten().tolist()) for r in masked}) > 1


def test_mask_inputs_is_deterministic_in_the_generator():
    tokens = torch.arange(200).view(10, 20)
    a = meap.mask_inputs(tokens, 0.2, -1, generator=torch.Generator().manual_seed(3))
    b = meap.mask_inputs(tokens, 0.2, -1, generator=torch.Generator().manual_seed(3))
    c = meap.mask_inputs(tokens, 0.2, -1, generator=torch.Generator().manual_seed(4))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) and not torch.equal(a[1], c[1])
    with pytest.raises(ValueError, match="maskable"):
        meap.mask_inputs(tokens, 0.2, -1, maskable=torch.ones(5, dtype=torch.bool))


def test_meap_loss_masks_inputs_but_scores_the_unmasked_targets():
    seen = []

    class Spy(torch.nn.Module):
        def forward(self, x):
            seen.append(x.clone())
            return torch.zeros(*x.shape, 8)

    x = torch.randint(0, 7, (4, 10), generator=torch.Generator().manual_seed(0))
    y = torch.full_like(x, IGNORE)
    y[:, -1] = 3
    loss_fn = meap.meap_loss_fn(0.2, 7, seed=0)
    loss = loss_fn(Spy(), x, y)
    assert seen[0].eq(7).sum(1).eq(2).all() and not x.eq(7).any()
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


def test_evidence_hidden_flags_prompts_whose_gold_key_or_value_is_masked():
    for task in meap.TASKS:
        batch, _ = meap.retrieval_task(task, 3, 4, position=torch.tensor([0, 1, 3]), value_len=2, filler_len=1,
                                       generator=torch.Generator().manual_seed(0))
        start = batch.gold_mask.int().argmax(1)
        masked = torch.zeros_like(batch.tokens, dtype=torch.bool)
        masked[0, start[0]] = True  # the gold key
        masked[1, start[1] + 2] = True  # the gold value's last token
        assert meap.evidence_hidden(batch, masked, value_len=2).tolist() == [True, True, False]
        if task == "documents":  # masking the gold document's filler hides nothing
            masked = torch.zeros_like(masked)
            masked[2, start[2] + 3] = True
            assert not meap.evidence_hidden(batch, masked, value_len=2).any()
