"""Task grammars for procedure planning: tasks over a shared action vocabulary, Markov plans, noisy start/goal features.

A stand-in for CrossTask / COIN plans with pre-extracted video features (S3D), small enough for a CPU:

- each of ``num_tasks`` tasks owns ``actions_per_task`` actions: ``shared_per_task`` of them drawn from a pool of
  ``shared_pool`` actions several tasks use (e.g. *pour water*), the rest its own; the vocabulary is their union;
- a task's plans are Markov chains over its actions (a Dirichlet start distribution and transition rows,
  ``concentration`` small = a peaked grammar; no action follows itself);
- the "visual" observations are ``o_start = f(a_1) + task_signal * g(task) + noise * N(0, I)`` before the first
  action and ``o_goal = f(a_T) + ...`` after the last. Actions in the same slot of different tasks look alike:
  ``f(a) = sqrt(1 - lookalike) * own(a) + sqrt(lookalike) * slot(a)`` (say *pour milk* and *pour water*), so the
  task, not the look, tells them apart.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class Grammar:
    """A sampled set of tasks. ``task_actions`` (T, k) long; ``start_probs`` (T, A); ``transitions`` (T, A, A), rows
    of a task's actions sum to 1 and are 0 outside the task; ``action_features`` (A, D); ``task_features`` (T, D)."""

    task_actions: torch.Tensor
    start_probs: torch.Tensor
    transitions: torch.Tensor
    action_features: torch.Tensor
    task_features: torch.Tensor
    task_signal: float

    @property
    def num_tasks(self) -> int:
        return self.task_actions.shape[0]

    @property
    def num_actions(self) -> int:
        return self.start_probs.shape[1]

    @property
    def obs_dim(self) -> int:
        return self.action_features.shape[1]

    def action_mask(self, tasks: torch.Tensor) -> torch.Tensor:
        """(N,) task ids -> (N, A) bool: True for the actions of each task."""
        member = torch.zeros(self.num_tasks, self.num_actions, dtype=torch.bool)
        member.scatter_(1, self.task_actions, True)
        return member[tasks]


def make_grammar(num_tasks: int = 6, actions_per_task: int = 8, shared_per_task: int = 2, shared_pool: int = 4,
                 obs_dim: int = 32, concentration: float = 0.3, lookalike: float = 0.5, task_signal: float = 0.5,
                 generator: torch.Generator | None = None) -> Grammar:
    """Draw tasks, their grammars and the feature prototypes; the vocabulary has
    ``num_tasks * (actions_per_task - shared_per_task) + shared_pool`` actions."""
    if not 0 <= shared_per_task <= min(actions_per_task, shared_pool):
        raise ValueError("need 0 <= shared_per_task <= min(actions_per_task, shared_pool)")
    if not 0 <= lookalike <= 1:
        raise ValueError("lookalike must be in [0, 1]")
    own = actions_per_task - shared_per_task
    A = num_tasks * own + shared_pool
    rows = []
    for k in range(num_tasks):
        shared = num_tasks * own + torch.randperm(shared_pool, generator=generator)[:shared_per_task]
        rows.append(torch.cat([torch.arange(k * own, (k + 1) * own), shared]))
    task_actions = torch.stack(rows)
    rng = np.random.default_rng(int(torch.randint(0, 2**31 - 1, (1,), generator=generator)))
    start = torch.zeros(num_tasks, A)
    trans = torch.zeros(num_tasks, A, A)
    for k, acts in enumerate(task_actions):
        g = torch.from_numpy(rng.gamma(concentration, size=(actions_per_task + 1, actions_per_task))).float()
        g[1:].fill_diagonal_(0.0)                          # no action follows itself
        g = g + 1e-6 * (g.sum(1, keepdim=True) < 1e-12)    # guard an all-zero row
        p = g / g.sum(1, keepdim=True)                     # Dirichlet(concentration) rows
        start[k, acts] = p[0]
        trans[k, acts[:, None], acts[None, :]] = p[1:]
    slot = torch.randn(actions_per_task, obs_dim, generator=generator)
    slots = torch.full((A,), -1, dtype=torch.long)
    slots[task_actions[:, :own].flatten()] = torch.arange(own).repeat(num_tasks)
    feats = torch.randn(A, obs_dim, generator=generator)
    own_rows = slots >= 0
    feats[own_rows] = (1 - lookalike) ** 0.5 * feats[own_rows] + lookalike ** 0.5 * slot[slots[own_rows]]
    task_feats = torch.randn(num_tasks, obs_dim, generator=generator)
    return Grammar(task_actions, start, trans, feats, task_feats, task_signal)


def sample_plans(grammar: Grammar, n: int, horizon: int, generator: torch.Generator | None = None,
                 tasks: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` plans: tasks (n,) uniform (or given), actions (n, horizon) long from each task's Markov chain."""
    if tasks is None:
        tasks = torch.randint(0, grammar.num_tasks, (n,), generator=generator)
    actions = torch.empty(n, horizon, dtype=torch.long)
    actions[:, 0] = torch.multinomial(grammar.start_probs[tasks], 1, generator=generator)[:, 0]
    for h in range(1, horizon):
        rows = grammar.transitions[tasks, actions[:, h - 1]]
        actions[:, h] = torch.multinomial(rows, 1, generator=generator)[:, 0]
    return tasks, actions


def observe(grammar: Grammar, tasks: torch.Tensor, actions: torch.Tensor, noise: float = 1.0,
            generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Start and goal features (n, D): the first / last action's prototype plus the task's, plus Gaussian noise."""
    base = grammar.task_signal * grammar.task_features[tasks]
    start = grammar.action_features[actions[:, 0]] + base
    goal = grammar.action_features[actions[:, -1]] + base
    return (start + noise * torch.randn(start.shape, generator=generator),
            goal + noise * torch.randn(goal.shape, generator=generator))
