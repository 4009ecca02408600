"""Masked-PDPP's pieces: PDPP's projection, the task mask, decoding, the plan metrics and the baselines."""

import torch

from companion.diffusion import gaussian
from companion.methods.sequence import masked_pdpp as mp
from companion.models.unet1d import TemporalUNet

LAY = mp.Layout(num_tasks=3, num_actions=5, obs_dim=2)


def batch(n=4, horizon=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    tasks = torch.randint(0, 3, (n,), generator=g)
    actions = torch.randint(0, 5, (n, horizon), generator=g)
    return tasks, actions, torch.randn(n, 2, generator=g), torch.randn(n, 2, generator=g)


def test_plan_tensor_and_projection():
    tasks, actions, start, goal = batch()
    x0 = mp.plan_tensor(LAY, tasks, actions, start, goal)
    assert x0.shape == (4, LAY.channels, 4)
    assert torch.equal(x0[:, LAY.actions].argmax(1), actions)
    cond = mp.condition(LAY, tasks, start, goal)
    noisy = torch.randn_like(x0)
    out = mp.project(noisy, cond)
    assert torch.equal(out[:, LAY.tasks], x0[:, LAY.tasks]) and torch.equal(out[:, LAY.obs], x0[:, LAY.obs])
    assert torch.equal(out[:, LAY.actions], noisy[:, LAY.actions])      # actions untouched, input not modified
    assert not torch.equal(noisy[:, LAY.tasks], out[:, LAY.tasks])


def test_mask_and_planner_outputs():
    tasks, actions, start, goal = batch()
    mask = torch.zeros(4, 5, dtype=torch.bool)
    mask[:, :2] = True
    cond = mp.condition(LAY, tasks, start, goal, mask)
    seen = {}

    class Spy(torch.nn.Module):
        def forward(self, x, t):
            seen["x"] = x
            return torch.randn_like(x) + 3

    planner = mp.Planner(Spy())
    out = planner(torch.randn(4, LAY.channels, 4), torch.zeros(4, dtype=torch.long), cond)
    assert (seen["x"][:, LAY.actions][:, 2:] == 0).all() and (out[:, LAY.actions][:, 2:] == 0).all()
    assert (out[:, LAY.actions][:, :2] != 0).all()
    x0 = mp.plan_tensor(LAY, tasks, actions, start, goal)
    assert torch.equal(out[:, LAY.obs], x0[:, LAY.obs]) and torch.equal(out[:, LAY.tasks], x0[:, LAY.tasks])
    x = torch.zeros(4, LAY.channels, 4)
    x[:, LAY.num_tasks + 4] = 1.0                                       # action 4 scores highest, but is masked
    x[:, LAY.num_tasks + 1] = 0.5
    assert (mp.decode(x, cond) == 1).all() and (mp.decode(x, mp.condition(LAY, tasks, start, goal)) == 4).all()


def test_loss_weight_and_widths():
    w = mp.loss_weight(LAY, 4, 10.0)
    assert w.shape == (1, LAY.channels, 4)
    assert (w[:, LAY.actions, 0] == 10).all() and (w[:, LAY.actions, -1] == 10).all()
    assert (w[:, LAY.actions, 1:3] == 1).all() and (w[:, LAY.obs] == 1).all()
    assert mp.fit_widths((8, 16, 32), 4) == (8, 16, 32) and mp.fit_widths((8, 16, 32), 6) == (8, 16)
    assert mp.fit_widths((8, 16), 3) == (8,)


def test_metrics_by_hand():
    truth = torch.tensor([[1, 2, 3], [1, 2, 3], [0, 0, 1]])
    pred = torch.tensor([[1, 2, 3], [1, 3, 2], [4, 4, 4]])
    assert mp.success(pred, truth).tolist() == [1.0, 0.0, 0.0]
    torch.testing.assert_close(mp.step_accuracy(pred, truth), torch.tensor([1.0, 1 / 3, 0.0]))
    torch.testing.assert_close(mp.iou(pred, truth, 5), torch.tensor([1.0, 1.0, 0.0]))
    torch.testing.assert_close(mp.iou(torch.tensor([[0, 1, 4]]), truth[2:], 5), torch.tensor([2 / 3]))


def test_most_frequent_plans_and_task_accuracy():
    train_tasks = torch.tensor([0, 0, 0, 1, 1])
    train_plans = torch.tensor([[1, 2], [3, 4], [3, 4], [0, 1], [2, 2]])
    got = mp.most_frequent_plans(train_tasks, train_plans, torch.tensor([0, 1, 2]), 3)
    assert got.tolist() == [[3, 4], [0, 1], [3, 4]]     # task 1: a tie, the first seen; task 2 unseen: overall mode
    tasks = torch.arange(100) % 4
    order, wrong = mp.task_confusion(tasks, 4, torch.Generator().manual_seed(0))
    assert (wrong != tasks).all() and (wrong < 4).all()
    prev = None
    for acc in (1.0, 0.7, 0.3, 0.0):
        got = mp.tasks_at_accuracy(tasks, order, wrong, acc)
        right = got == tasks
        assert right.sum().item() == round(100 * acc)
        assert prev is None or (right <= prev).all()     # nested: an item once wrong stays wrong
        prev = right


def test_training_step_and_masked_plan():
    tasks, actions, start, goal = batch(n=6)
    x0 = mp.plan_tensor(LAY, tasks, actions, start, goal)
    sched = gaussian.Schedule(20)
    planner = mp.Planner(TemporalUNet(LAY.channels, widths=(8, 16), time_dim=8))
    member = torch.tensor([[1, 1, 0, 0, 1], [0, 1, 1, 0, 0], [0, 0, 1, 1, 1]], dtype=torch.bool)
    loss_fn = mp.PlanLoss(LAY, sched, mp.loss_weight(LAY, 4), lambda t: member[t], torch.Generator().manual_seed(0))
    loss = loss_fn(planner, x0, tasks)
    loss.backward()
    assert loss.dim() == 0 and loss.item() > 0
    cond = mp.condition(LAY, tasks, start, goal, member[tasks])
    trace = []
    got = mp.plan(planner, cond, 4, sched, steps=5, seed=0, trace=trace)
    assert got.shape == (6, 4) and len(trace) == 5
    assert member[tasks].gather(1, got).all()
    assert torch.equal(got, mp.plan(planner, cond, 4, sched, steps=5, seed=0))


def test_action_distribution_and_key_figure():
    x = torch.zeros(2, LAY.channels, 3)
    x[0, LAY.num_tasks + 2] = 1.0                                       # a one-hot gives itself
    x[1, LAY.actions] = -1.0                                            # nothing positive: uniform
    d = mp.action_distribution(x, LAY)
    assert d.shape == (2, 5, 3)
    torch.testing.assert_close(d.sum(1), torch.ones(2, 3))
    assert (d[0, 2] == 1).all() and torch.allclose(d[1], torch.full((5, 3), 0.2))
    trace = [torch.randn(2, LAY.channels, 3) for _ in range(4)]
    fig = mp.key_figure({"a": trace, "b": trace}, LAY, torch.tensor([[0, 1, 2], [1, 2, 3]]),
                        torch.ones(2, 5, dtype=torch.bool), 1, {"a": [0.1, 0.2], "b": [0.0, 0.3]}, [0.0, 1.0],
                        0.9, 0.05)
    assert len(fig.axes) == 4                                           # two heatmaps, one colour bar, the sweep
