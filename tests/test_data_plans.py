"""Task grammars: plans stay inside their task, follow the chain, and the features carry what they should."""

import pytest
import torch

from companion.data import plans


def grammar(**kw):
    return plans.make_grammar(generator=torch.Generator().manual_seed(0), **kw)


def test_vocabulary_and_sharing():
    g = grammar(num_tasks=5, actions_per_task=7, shared_per_task=2, shared_pool=3)
    assert g.num_actions == 5 * 5 + 3 and g.task_actions.shape == (5, 7)
    assert all(len(set(row.tolist())) == 7 for row in g.task_actions)
    counts = torch.bincount(g.task_actions.flatten(), minlength=g.num_actions)
    assert torch.all(counts[:25] == 1) and counts[25:].sum() == 10     # own actions once, shared ones reused
    mask = g.action_mask(torch.tensor([0, 3]))
    assert mask.shape == (2, g.num_actions) and mask.sum(1).tolist() == [7, 7]
    with pytest.raises(ValueError):
        grammar(shared_per_task=5, shared_pool=4)


def test_plans_follow_the_task_grammar():
    g = grammar()
    tasks, actions = plans.sample_plans(g, 300, 4, torch.Generator().manual_seed(1))
    assert actions.shape == (300, 4) and tasks.shape == (300,)
    inside = g.action_mask(tasks).gather(1, actions)
    assert inside.all()
    assert (actions[:, 1:] != actions[:, :-1]).all()
    assert (g.start_probs[tasks, actions[:, 0]] > 0).all()
    for h in range(1, 4):
        assert (g.transitions[tasks, actions[:, h - 1], actions[:, h]] > 0).all()
    rows = g.transitions[0][g.task_actions[0]]
    torch.testing.assert_close(rows.sum(1), torch.ones(len(rows)))
    again = plans.sample_plans(g, 300, 4, torch.Generator().manual_seed(1))
    assert torch.equal(again[1], actions)


def test_observations_and_lookalikes():
    g = grammar(lookalike=0.9, obs_dim=64)
    tasks, actions = plans.sample_plans(g, 50, 3, torch.Generator().manual_seed(2))
    start, goal = plans.observe(g, tasks, actions, noise=0.0)
    torch.testing.assert_close(start, g.action_features[actions[:, 0]] + g.task_signal * g.task_features[tasks])
    noisy, _ = plans.observe(g, tasks, actions, noise=1.0, generator=torch.Generator().manual_seed(0))
    assert not torch.allclose(noisy, start)
    a, b = g.task_actions[0, 0], g.task_actions[1, 0]                  # slot 0 of two tasks: look alike
    c = g.task_actions[1, 1]
    cos = torch.nn.functional.cosine_similarity
    f = g.action_features
    assert cos(f[a], f[b], dim=0) > 0.6 and cos(f[a], f[b], dim=0) > cos(f[a], f[c], dim=0)
