"""Tests of companion.methods.parameter_masks.first_layer_skip: the task mix, prompt-only routing, router training and the skip baselines.

``skip``: True = the layer is skipped (the identity) for that sequence.
"""

from __future__ import annotations

import pytest
import torch

from companion.methods.parameter_masks import first_layer_skip
from companion.models import GPT, GPTConfig
from companion.data.sequences import IGNORE


VOCAB = first_layer_skip.task_vocab_size(16)


def _model(n_layer=3, seed=0) -> GPT:
    torch.manual_seed(seed)
    return GPT(GPTConfig(vocab_size=VOCAB, block_size=13, n_layer=n_layer, n_head=2, n_embd=32)).eval()


def _data(n=64, seed=0):
    return first_layer_skip.skip_tasks(n, n_symbols=6, block=4, generator=torch.Generator().manual_seed(seed))


def test_skip_tasks_answers_follow_each_task_rule():
    tokens, targets, task, prompt_len = _data(200)
    assert tokens.shape == targets.shape == (200, 13) and prompt_len == 7
    x, a = tokens[:, :6], tokens[:, 7:]
    rules = {"copy": x, "reverse": x.flip(1), "shift": (x + 1) % 16, "count": (x[:, -1:] + torch.arange(1, 7)) % 16}
    for t, name in enumerate(first_layer_skip.TASKS):
        assert torch.equal(a[task == t], rules[name][task == t]) and (task == t).any()
    assert (tokens[:, 6] == 16).all() and (x < 16).all()
    assert torch.equal(targets[:, 6:12], a) and (targets[:, :6] == IGNORE).all() and (targets[:, 12] == IGNORE).all()
    with pytest.raises(ValueError, match="unknown tasks"):
        first_layer_skip.skip_tasks(4, tasks=("sort",))


def test_the_task_is_implied_by_the_pair_of_blocks_and_by_no_single_symbol():
    tokens, _, task, _ = _data(400)
    blocks = tokens[:, :6] // 4  # (N, S) the block of every prompt symbol
    for t, name in enumerate(first_layer_skip.TASKS):
        present = {tuple(sorted(set(row.tolist()))) for row in blocks[task == t]}
        assert present == {tuple(sorted(first_layer_skip.TASK_BLOCKS[name]))}  # both blocks, and only those
    serving = [sum(b in pair for pair in first_layer_skip.TASK_BLOCKS.values()) for b in range(4)]
    assert serving == [2, 2, 2, 2]  # every block appears in two tasks: one symbol never names the task


@torch.no_grad()
def test_hard_routing_equals_running_the_model_with_the_decided_skips():
    m, (tokens, _, _, p_len) = _model(), _data(32)
    routers = first_layer_skip.LayerRouters(3, 32)
    torch.manual_seed(1)
    for lin in routers.proj:  # random routers so that decisions differ between sequences
        torch.nn.init.normal_(lin.weight, std=2.0)
    skip, keep = first_layer_skip.route(m, routers, tokens, p_len, threshold=0.5)
    assert skip.shape == keep.shape == (32, 3) and 0 < skip.sum() < skip.numel()
    with routers.attach(m, p_len, "hard"):
        routed = m(tokens)
    assert torch.allclose(routed, m(tokens, skip=skip), atol=1e-5)
    # the decision reads the prompt only: changing the answer tokens changes nothing
    other = tokens.clone()
    other[:, p_len:] = 0
    assert torch.equal(first_layer_skip.route(m, routers, other, p_len)[0], skip)


def test_soft_gate_interpolates_and_hooks_are_removed():
    m, (tokens, _, _, p_len) = _model(), _data(8)
    routers = first_layer_skip.LayerRouters(3, 32, init_keep=0.999999)
    with torch.no_grad(), routers.attach(m, p_len, "soft"):
        nearly_dense = m(tokens)
    assert torch.allclose(nearly_dense, m(tokens), atol=1e-3)
    assert all(not block._forward_hooks for block in m.blocks)
    with pytest.raises(ValueError, match="mode"):
        with routers.attach(m, p_len, "sometimes"):
            pass


def test_router_training_moves_only_the_routers_and_the_penalty_lowers_keep():
    m, (tokens, targets, _, p_len) = _model(n_layer=2), _data(128)
    before = [p.clone() for p in m.parameters()]
    keeps = {}
    for lam in (0.0, 5.0):
        routers = first_layer_skip.LayerRouters(2, 32)
        history = first_layer_skip.train_routers(m, routers, tokens, targets, p_len, steps=30, lam=lam, lr=0.05,
                                                 batch_size=32, device="cpu", mode="straight_through", progress=False)
        assert len(history) == len(history.metrics["keep"]) == len(history.metrics["answer"]) == 30
        assert history[-1] == pytest.approx(history.metrics["answer"][-1] + lam * history.metrics["keep"][-1], rel=1e-5)
        keeps[lam] = first_layer_skip.route(m, routers, tokens, p_len)[1].mean().item()
    assert all(torch.equal(a, b) for a, b in zip(before, m.parameters()))
    assert keeps[5.0] < keeps[0.0]


def test_answer_scores_exact_match_is_greedy_decoding_of_the_answer():
    m, (tokens, targets, _, p_len) = _model(), _data(16)
    nll, exact = first_layer_skip.answer_scores(m, tokens, targets)
    assert nll.shape == exact.shape == (16,) and (nll > 0).all()
    logits = m(tokens)
    assert torch.allclose(nll[0], first_layer_skip.answer_loss(logits[:1], targets[:1]), atol=1e-5)
    gen = m.generate(tokens[:, :p_len], 6, use_cache=True)
    greedy_right = (gen[:, p_len:] == tokens[:, p_len:]).all(1)
    assert torch.equal(exact, greedy_right)


def test_matched_counts_and_per_task_sets_share_the_per_sequence_layer_counts():
    g = torch.Generator().manual_seed(0)
    counts = first_layer_skip.matched_counts(25, 10, g)
    assert counts.sum() == 25 and set(counts.tolist()) == {2, 3}
    last = first_layer_skip.last_k_skips(3)
    first = {k: torch.arange(3) < k for k in range(4)}
    task = torch.tensor([0, 1, 1, 0, 1, 0, 0, 1, 0, 1])
    per_task = first_layer_skip.skip_from_counts([last, first], counts, task)
    assert torch.equal(per_task.sum(1), counts)
    assert torch.equal(per_task[task == 0], first_layer_skip.skip_from_counts(last, counts[task == 0]))
    assert torch.equal(per_task[task == 1], first_layer_skip.skip_from_counts(first, counts[task == 1]))
    m, (tokens, targets, task, _) = _model(), _data(64)
    sets = first_layer_skip.per_task_best_fixed_skips(m, tokens, targets, task, 3)
    assert len(sets) == 4 and all(int(s[k].sum()) == k for s in sets for k in range(4))
    assert torch.equal(sets[2][1], first_layer_skip.best_fixed_skips(m, tokens[task == 2], targets[task == 2], 3)[1])


def test_fixed_baselines_skip_exactly_the_requested_number_of_layers():
    g = torch.Generator().manual_seed(0)
    assert [int(s.sum()) for s in first_layer_skip.k_subsets(4, 2)] == [2] * 6
    last = first_layer_skip.last_k_skips(4)
    assert last[1].tolist() == [False, False, False, True] and last[4].all() and not last[0].any()
    matched = first_layer_skip.matched_fixed_skip(last, total_skipped=25, n=10, generator=g)
    assert matched.sum() == 25 and set(matched.sum(1).tolist()) == {2, 3}
    skip = torch.tensor([[1, 1, 0, 0], [0, 0, 0, 1], [0, 0, 0, 0]], dtype=torch.bool)
    rnd = first_layer_skip.random_skip_like(skip.repeat(50, 1), g)
    assert torch.equal(rnd.sum(1), skip.repeat(50, 1).sum(1)) and not torch.equal(rnd, skip.repeat(50, 1))


def test_best_fixed_skips_picks_the_least_harmful_layer():
    m, (tokens, targets, _, _) = _model(), _data(64)
    best = first_layer_skip.best_fixed_skips(m, tokens, targets, 3)
    scores = [first_layer_skip.answer_scores(m, tokens, targets, s)[0].mean() for s in first_layer_skip.k_subsets(3, 1)]
    assert int(best[1].sum()) == 1 and best[1].nonzero().item() == int(torch.stack(scores).argmin())
    assert not best[0].any() and best[3].all()


def test_cache_check_finds_identical_decoding_and_no_valid_slots_in_skipped_layers():
    m, (tokens, _, _, p_len) = _model(), _data(6)
    skip = torch.tensor([[1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 0], [0, 0, 0], [1, 0, 1]], dtype=torch.bool)
    check = first_layer_skip.cache_check(m, tokens[:, :p_len], skip, new_tokens=6)
    assert check == {"mismatched": 0.0, "max_logit_diff": pytest.approx(0.0, abs=1e-4), "valid_in_skipped": 0.0}


@torch.no_grad()
def test_skipping_a_layer_equals_deleting_its_block_with_and_without_the_cache():
    """An independent oracle: a copy of the model with the skipped blocks removed decodes the same tokens."""
    import copy

    m, (tokens, _, _, p_len) = _model(n_layer=3, seed=3), _data(8)
    prompts = tokens[:, :p_len]
    for skip in ([True, False, False], [False, True, True], [False, False, True]):
        pruned = copy.deepcopy(m)
        pruned.blocks = torch.nn.ModuleList(b for b, s in zip(m.blocks, skip) if not s)
        pruned.config.n_layer = len(pruned.blocks)
        want = pruned.generate(prompts, 6, use_cache=False)
        for use_cache in (True, False):
            got = m.generate(prompts, 6, skip=torch.tensor(skip), use_cache=use_cache)
            assert torch.equal(got, want)
