"""Masked-PDPP (Fang et al. 2023) on PDPP (Wang et al. 2023): procedure planning as projected diffusion over plans.

A plan is a tensor x (N, C + A + O, H): per step h of the horizon H, the task one-hot (C channels), the action
one-hot (A) and an observation (O). PDPP (MCG-NJU/PDPP, ``model/diffusion.py``, ``model/helpers.py``) denoises it
with x0 prediction, a cosine schedule and DDIM, and after every step *projects* the conditions: the (predicted)
task one-hot on every step, the start / goal features on the first / last step, zeros for the middle observations.
The projection is also applied to the noisy input and to the prediction during training, and the loss is an MSE
weighted 10x on the first and last action.

Masked-PDPP adds a **task mask**: a binary vector over the A actions keeping those of the predicted task. Its
official repository holds only a README, so this follows the paper's description: the mask multiplies the action
channels of the noisy input and of the prediction (``Planner``), and the final argmax runs over the kept actions
only (``decode``). Training uses the true task's mask.
"""

from __future__ import annotations

from dataclasses import dataclass

import matplotlib.pyplot as plt
import numpy as np
import torch
from torch import nn

from ...diffusion import gaussian


@dataclass(frozen=True)
class Layout:
    """Channel layout of a plan tensor: task one-hot, action one-hot, observation."""

    num_tasks: int
    num_actions: int
    obs_dim: int

    @property
    def channels(self) -> int:
        return self.num_tasks + self.num_actions + self.obs_dim

    @property
    def tasks(self) -> slice:
        return slice(0, self.num_tasks)

    @property
    def actions(self) -> slice:
        return slice(self.num_tasks, self.num_tasks + self.num_actions)

    @property
    def obs(self) -> slice:
        return slice(self.num_tasks + self.num_actions, self.channels)


def plan_tensor(layout: Layout, tasks, actions, start, goal) -> torch.Tensor:
    """The clean plan x0 (N, C + A + O, H) from tasks (N,), actions (N, H), start and goal features (N, O)."""
    n, horizon = actions.shape
    x = torch.zeros(n, layout.channels, horizon)
    x[:, layout.tasks] = nn.functional.one_hot(tasks, layout.num_tasks).float()[:, :, None]
    x[:, layout.actions] = nn.functional.one_hot(actions, layout.num_actions).float().transpose(1, 2)
    x[:, layout.obs, 0], x[:, layout.obs, -1] = start, goal
    return x


def condition(layout: Layout, tasks, start, goal, mask=None) -> dict:
    """The conditions of a batch: (predicted) tasks (N,), start / goal (N, O), optional action mask (N, A) bool."""
    return {"layout": layout, "task": nn.functional.one_hot(tasks, layout.num_tasks).float(), "start": start,
            "goal": goal, "mask": mask}


def project(x: torch.Tensor, cond: dict) -> torch.Tensor:
    """PDPP's condition projection: task one-hot on every step, start / goal features on the first / last step,
    zero observations in between. Returns a new tensor; the action channels are untouched."""
    lay = cond["layout"]
    x = x.clone()
    x[:, lay.tasks] = cond["task"].to(x)[:, :, None]
    x[:, lay.obs] = 0.0
    x[:, lay.obs, 0], x[:, lay.obs, -1] = cond["start"].to(x), cond["goal"].to(x)
    return x


def apply_mask(x: torch.Tensor, cond: dict) -> torch.Tensor:
    """Masked-PDPP's task mask on the action channels (zero outside the task); identity if ``cond["mask"]`` is None."""
    if cond.get("mask") is None:
        return x
    lay = cond["layout"]
    x = x.clone()
    x[:, lay.actions] = x[:, lay.actions] * cond["mask"].to(x)[:, :, None]
    return x


class Planner(nn.Module):
    """The denoiser as PDPP calls it: project the noisy input, (mask it), predict x0, project (and mask) the output.

    ``net`` maps (N, C + A + O, H) to the same shape given timesteps (e.g. ``TemporalUNet``); called as
    ``planner(x_t, t, cond)`` with ``cond`` from :func:`condition`.
    """

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: dict) -> torch.Tensor:
        x = apply_mask(project(x, cond), cond)
        return apply_mask(project(self.net(x, t), cond), cond)


def fit_widths(widths, horizon: int) -> tuple[int, ...]:
    """The longest prefix of ``widths`` whose UNet accepts ``horizon`` (a multiple of 2 ** (levels - 1))."""
    widths = tuple(widths)
    while len(widths) > 1 and horizon % 2 ** (len(widths) - 1):
        widths = widths[:-1]
    return widths


def loss_weight(layout: Layout, horizon: int, end_weight: float = 10.0) -> torch.Tensor:
    """(1, C + A + O, H) weights of PDPP's MSE: ``end_weight`` on the first and last action, 1 elsewhere."""
    w = torch.ones(1, layout.channels, horizon)
    w[:, layout.actions, 0] = end_weight
    w[:, layout.actions, -1] = end_weight
    return w


class PlanLoss:
    """``loss_fn`` for ``train.fit`` on clean plans x0 (inputs) and true tasks (targets): the weighted x0 loss with
    the conditions read from x0, and the true task's mask when ``task_actions`` (a callable tasks -> (N, A) bool)
    is given (Masked-PDPP)."""

    def __init__(self, layout: Layout, sched: gaussian.Schedule, weight: torch.Tensor, task_actions=None,
                 generator: torch.Generator | None = None):
        self.layout, self.sched, self.weight = layout, sched, weight
        self.task_actions, self.generator = task_actions, generator

    def __call__(self, model, x0, tasks):
        lay = self.layout
        mask = None if self.task_actions is None else self.task_actions(tasks.cpu()).to(x0.device)
        cond = condition(lay, tasks, x0[:, lay.obs, 0], x0[:, lay.obs, -1], mask)
        return gaussian.diffusion_loss(model, x0, self.sched, cond, prediction="x0", weight=self.weight.to(x0),
                                       generator=self.generator)


def decode(x: torch.Tensor, cond: dict) -> torch.Tensor:
    """(N, C + A + O, H) -> (N, H) actions: the argmax over the action channels (over the task's actions only when
    ``cond["mask"]`` is set)."""
    scores = x[:, cond["layout"].actions]
    if cond.get("mask") is not None:
        scores = scores.masked_fill(~cond["mask"].to(scores.device)[:, :, None], float("-inf"))
    return scores.argmax(1)


@torch.no_grad()
def plan(model, cond: dict, horizon: int, sched: gaussian.Schedule, steps: int = 10, seed: int = 0,
         trace: list | None = None) -> torch.Tensor:
    """Sample plans with DDIM (eta 0, ``steps`` levels) from seeded start noise; returns actions (N, H).
    ``trace``, if a list, receives each step's x0 prediction (N, C + A + O, H) on the CPU."""
    n = cond["task"].shape[0]
    callback = None if trace is None else (lambda level, x, x0: trace.append(x0.cpu()))
    x = gaussian.sample(model, (n, cond["layout"].channels, horizon), sched, cond=cond, prediction="x0",
                        sampler="ddim", steps=steps, project=project, callback=callback,
                        generator=torch.Generator().manual_seed(seed), device=next(model.parameters()).device)
    return decode(x, cond)


def action_distribution(x: torch.Tensor, layout: Layout) -> torch.Tensor:
    """(N, C + A + O, H) -> (N, A, H): the positive part of the action channels normalised over actions per step (a
    one-hot gives itself; all non-positive gives uniform), the "action probabilities" of a predicted plan."""
    a = x[:, layout.actions].clamp(min=0)
    total = a.sum(1, keepdim=True)
    return torch.where(total > 0, a / total.clamp(min=1e-12), torch.full_like(a, 1 / layout.num_actions))


def success(pred: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
    """SR per plan (N,) float: 1 if every step is right."""
    return (pred == truth).all(1).float()


def step_accuracy(pred: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
    """mAcc per plan (N,): the fraction of steps right."""
    return (pred == truth).float().mean(1)


def iou(pred: torch.Tensor, truth: torch.Tensor, num_actions: int) -> torch.Tensor:
    """mIoU per plan (N,): |set(pred) & set(truth)| / |set(pred) | set(truth)| over the action sets (P3IV / PDPP
    compute it over a batch; per plan gives paired items)."""
    p = nn.functional.one_hot(pred, num_actions).amax(1).bool()
    t = nn.functional.one_hot(truth, num_actions).amax(1).bool()
    return (p & t).sum(1).float() / (p | t).sum(1).float()


def most_frequent_plans(train_tasks, train_actions, tasks, num_tasks: int) -> torch.Tensor:
    """The most-frequent-plan baseline: for each of ``tasks`` (N,), the plan seen most often with that task in
    training (ties: the first seen); a task never seen gets the most frequent plan overall. Returns (N, H)."""
    overall = _mode(train_actions)
    table = torch.stack([_mode(train_actions[train_tasks == k]) if (train_tasks == k).any() else overall
                         for k in range(num_tasks)])
    return table[tasks]


def _mode(plans: torch.Tensor) -> torch.Tensor:
    uniq, inverse, counts = torch.unique(plans, dim=0, return_inverse=True, return_counts=True)
    first = torch.full((len(uniq),), len(plans), dtype=torch.long).scatter_reduce(
        0, inverse, torch.arange(len(plans)), reduce="amin")
    best = max(range(len(uniq)), key=lambda i: (counts[i].item(), -first[i].item()))
    return uniq[best]


def task_confusion(tasks: torch.Tensor, num_tasks: int, generator: torch.Generator):
    """A nested way to lower task accuracy: (order, wrong) with ``order`` a permutation of the items and ``wrong``
    (N,) a wrong task per item (uniform over the other tasks). See :func:`tasks_at_accuracy`."""
    order = torch.randperm(len(tasks), generator=generator)
    wrong = (tasks + torch.randint(1, num_tasks, tasks.shape, generator=generator)) % num_tasks
    return order, wrong


def tasks_at_accuracy(tasks, order, wrong, accuracy: float) -> torch.Tensor:
    """The true tasks with the first ``round((1 - accuracy) N)`` items of ``order`` replaced by their wrong task;
    the replaced sets are nested as accuracy falls, so accuracy 1 is the oracle and 0 the wrong-task arm."""
    out = tasks.clone()
    k = round((1 - accuracy) * len(tasks))
    out[order[:k]] = wrong[order[:k]]
    return out


def key_figure(traces: dict, layout: Layout, truth, task_mask, position: int, sweep: dict, accuracies,
               classifier_accuracy: float, baseline_sr: float, item: int = 0):
    """Left: the action distribution of the x0 prediction over the DDIM steps (rows; the positive part of the action
    channels, normalised to sum to 1) for plan ``item``'s step ``position``, one panel per model in ``traces``
    (name -> list of (N, C+A+O, H)), one colour scale; a cyan triangle marks the true action, the grey band the
    actions outside the plan's true task. Right: SR against task accuracy, one line per model (``sweep``: name -> SR
    list), the trained classifier's accuracy and the most-frequent-plan SR marked."""
    fig = plt.figure(figsize=(11, 3.4))
    grid = fig.add_gridspec(1, len(traces) + 1, width_ratios=[1.3] * len(traces) + [1.2])
    outside = ~task_mask[item].numpy()
    maps = {name: np.stack([action_distribution(x0[item:item + 1], layout)[0, :, position].numpy() for x0 in trace])
            for name, trace in traces.items()}
    vmax = max(float(m.max()) for m in maps.values())
    for j, (name, scores) in enumerate(maps.items()):
        ax = fig.add_subplot(grid[0, j])
        image = ax.imshow(scores, aspect="auto", cmap="magma", vmin=0, vmax=vmax, interpolation="nearest")
        for a in np.flatnonzero(outside):
            ax.axvspan(a - 0.5, a + 0.5, ymin=0.97, ymax=1.0, color="0.6", lw=0)
        ax.plot([int(truth[item, position])], [len(scores) - 0.5], marker="^", ms=8, color="tab:cyan",
                clip_on=False, label="true action")
        ax.set_title(name, fontsize=9)
        ax.set_xlabel(f"action (step {position + 1} of the plan)", fontsize=8)
        if j == 0:
            ax.set_ylabel("DDIM step (top: noisiest)", fontsize=8)
        ax.tick_params(labelsize=7)
    fig.colorbar(image, ax=ax, fraction=0.05, pad=0.02).ax.tick_params(labelsize=7)
    ax = fig.add_subplot(grid[0, -1])
    for name, srs in sweep.items():
        ax.plot(accuracies, srs, marker="o", ms=3, label=name)
    ax.axvline(classifier_accuracy, color="0.5", ls="--", lw=1, label="trained classifier")
    ax.axhline(baseline_sr, color="0.3", ls=":", lw=1, label="most frequent plan")
    ax.set_xlabel("task accuracy (true task replaced by a wrong one)", fontsize=8)
    ax.set_ylabel("success rate (SR)", fontsize=8)
    ax.legend(fontsize=7, frameon=False)
    ax.spines[["top", "right"]].set_visible(False)
    fig.tight_layout()
    return fig
