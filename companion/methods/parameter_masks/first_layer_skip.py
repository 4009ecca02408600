"""FiRST-style layer routers: per-layer keep probabilities decided from the prompt, held fixed while decoding.

Each transformer block ``l`` of a ``companion.models.GPT`` gets a tiny router: a linear layer on the
(normalised) block input, a sigmoid per prompt token, averaged over the prompt → one keep probability
``p_l`` per sequence. Training mixes softly, ``h ← h + p_l·(block(h) − h)``, with the base model frozen and a
latency penalty ``λ·mean_l p_l``; inference thresholds ``p_l`` once, layer by layer, during the prompt
(prefill), and the resulting skip matrix is then used for every generated token, so a skipped layer never
computes keys/values (``GPT``'s ``KVCache`` honours ``skip``).

Conventions: ``skip`` matrices are (N, n_layer) bool, **True = skip** (the ``GPT.forward`` convention); targets
use -100 where there is nothing to predict. Routers attach to the model through forward hooks, so the shared
GPT needs no router code.
"""

from __future__ import annotations

import itertools
import math
from contextlib import contextmanager

import torch
import torch.nn as nn
import torch.nn.functional as F

from ...data.sequences import IGNORE
from ...train import History, fit

TASKS = ("copy", "reverse", "count", "shift")
# The two symbol blocks each task's prompts are drawn from: every block serves two tasks, so no single symbol
# names the task; the pair of blocks present in a prompt does (blocks 0-1-3-2 form a cycle of tasks).
TASK_BLOCKS = {"copy": (0, 1), "reverse": (2, 3), "shift": (0, 2), "count": (1, 3)}


# ---------------------------------------------------------------------------------------------------------------
# Data: a prompt mix whose tasks may lean on different layers, the task implied by the prompt's content


def task_vocab_size(alphabet: int) -> int:
    """Symbols ``[0, alphabet)`` and one separator (there is no task token)."""
    return alphabet + 1


def skip_tasks(n: int, n_symbols: int = 6, block: int = 4, tasks=TASKS,
               generator: torch.Generator | None = None):
    """A multi-task prompt mix without a task token: ``[x_1..x_S, sep, a_1..a_S]``, tasks drawn uniformly.

    The alphabet is ``4 * block`` symbols in four blocks of ``block``; a prompt of task t draws its symbols
    from the two blocks ``TASK_BLOCKS[t]`` and holds at least one symbol of each. Every block serves two
    tasks, so a single symbol leaves two candidate tasks and the task is known only from two symbols of
    different blocks: the model (and a router) must infer it from the prompt's content.

    - ``copy``: a = x; ``reverse``: a = x reversed; ``shift``: a_i = x_i + 1 (mod alphabet);
    - ``count``: a_i = x_S + i (mod alphabet) — after the first answer symbol a bigram rule.

    Returns tokens (n, 2S+1) long, next-token targets (n, 2S+1) long (the answer a_i is the target at the
    position before it, -100 elsewhere), task ids (n,) long (index into ``TASKS``) and the prompt length S+1
    (symbols, separator).
    """
    unknown = set(tasks) - set(TASKS)
    if unknown or not tasks:
        raise ValueError(f"unknown tasks {sorted(unknown)}; allowed: {list(TASKS)}")
    if n_symbols < 2 or block < 1:
        raise ValueError(f"need n_symbols >= 2 and block >= 1, got {n_symbols} and {block}")
    g = generator if generator is not None else torch.Generator().manual_seed(0)
    alphabet = 4 * block
    allowed = torch.tensor([TASKS.index(t) for t in tasks])
    task = allowed[torch.randint(0, len(allowed), (n,), generator=g)]
    blocks = torch.tensor([TASK_BLOCKS[t] for t in TASKS])[task]  # (n, 2) the task's two blocks
    side = torch.randint(0, 2, (n, n_symbols), generator=g)  # which of the two blocks each symbol comes from
    one_sided = (side == side[:, :1]).all(1)  # make sure both blocks appear: flip one random position
    flip = torch.randint(0, n_symbols, (n,), generator=g)
    rows = torch.arange(n)[one_sided]
    side[rows, flip[one_sided]] = 1 - side[rows, flip[one_sided]]
    x = blocks.gather(1, side) * block + torch.randint(0, block, (n, n_symbols), generator=g)
    steps = torch.arange(1, n_symbols + 1)
    answers = {"copy": x, "reverse": x.flip(1), "shift": (x + 1) % alphabet,
               "count": (x[:, -1:] + steps) % alphabet}
    a = torch.zeros_like(x)
    for t, name in enumerate(TASKS):
        a = torch.where((task == t)[:, None], answers[name], a)
    sep = alphabet
    tokens = torch.cat([x, torch.full((n, 1), sep), a], dim=1)
    targets = torch.full_like(tokens, IGNORE)
    prompt_len = n_symbols + 1
    targets[:, prompt_len - 1:-1] = a
    return tokens, targets, task, prompt_len


def layer_drop_skip(n: int, n_layer: int, p: float, generator: torch.Generator) -> torch.Tensor:
    """(n, n_layer) bool: each layer skipped independently with probability ``p`` (stochastic depth)."""
    return torch.rand(n, n_layer, generator=generator) < p


# ---------------------------------------------------------------------------------------------------------------
# Routers


class LayerRouters(nn.Module):
    """One linear router per layer on the LayerNorm'd block input; keep probability = prompt mean of sigmoids."""

    def __init__(self, n_layer: int, n_embd: int, init_keep: float = 0.9):
        super().__init__()
        self.norm = nn.LayerNorm(n_embd, elementwise_affine=False)
        self.proj = nn.ModuleList(nn.Linear(n_embd, 1) for _ in range(n_layer))
        for lin in self.proj:
            nn.init.zeros_(lin.weight)
            nn.init.constant_(lin.bias, math.log(init_keep / (1 - init_keep)))
        self.keep: list[torch.Tensor | None] = [None] * n_layer  # (N,) keep probabilities of the last pass

    def keep_prob(self, layer_idx: int, x: torch.Tensor, prompt_len: int) -> torch.Tensor:
        """x (N, L, D) block input → (N,) mean over the first ``prompt_len`` positions of sigmoid(router)."""
        logits = self.proj[layer_idx](self.norm(x[:, :prompt_len])).squeeze(-1)  # (N, P)
        return torch.sigmoid(logits).mean(dim=1)

    def keep_matrix(self) -> torch.Tensor:
        """(N, n_layer) keep probabilities recorded by the last pass through ``attach``."""
        return torch.stack(self.keep, dim=1)

    @contextmanager
    def attach(self, model: nn.Module, prompt_len: int, mode: str = "soft", threshold: float = 0.5):
        """Route ``model``'s blocks while inside the context (full-sequence passes only, no cache).

        ``soft``: block output becomes h + p·(block(h) − h); ``hard``: the block is the identity for sequences
        with p < threshold (decided layer by layer, so later routers see the skips of earlier layers);
        ``straight_through``: the hard decision in the forward pass, the soft gradient in the backward pass.
        """
        if mode not in ("soft", "hard", "straight_through"):
            raise ValueError(f"mode must be 'soft', 'hard' or 'straight_through', got {mode!r}")
        self.keep = [None] * len(self.proj)

        def make_hook(i):
            def hook(module, args, output):
                x, (y, att) = args[0], output
                if len(args) > 3 and args[3] is not None:  # Block(x, mask, is_causal, cache, ...)
                    raise ValueError("routers decide from a full prompt pass; decode with GPT(skip=...) instead")
                p = self.keep_prob(i, x, prompt_len)
                self.keep[i] = p
                if mode == "soft":
                    return x + p[:, None, None] * (y - x), att
                if mode == "straight_through":  # the hard decision forward, the gradient of p backward
                    gate = (p >= threshold).float() + p - p.detach()
                    return x + gate[:, None, None] * (y - x), att
                return torch.where((p >= threshold)[:, None, None], y, x), att
            return hook

        handles = [block.register_forward_hook(make_hook(i)) for i, block in enumerate(model.blocks)]
        try:
            yield self
        finally:
            for h in handles:
                h.remove()


@torch.no_grad()
def route(model, routers: LayerRouters, tokens: torch.Tensor, prompt_len: int,
          threshold: float = 0.5) -> tuple[torch.Tensor, torch.Tensor]:
    """Prefill decision from the prompt only: returns skip (N, n_layer) bool (True = skip) and the keep
    probabilities (N, n_layer) that produced it."""
    with routers.attach(model, prompt_len, "hard", threshold):
        model(tokens[:, :prompt_len])
    keep = routers.keep_matrix()
    return keep < threshold, keep


def answer_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over the positions with a target (≠ -100)."""
    return F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=IGNORE)


def train_routers(model, routers: LayerRouters, tokens, targets, prompt_len: int, steps: int, lam: float,
                  lr: float = 1e-2, batch_size: int = 64, seed: int = 0, device: str = "auto",
                  mode: str = "soft", progress: bool = True) -> History:
    """Train only the routers (the base model is frozen): answer loss + ``lam``·mean keep probability, the
    blocks gated by ``mode`` (see ``LayerRouters.attach``). Returns ``fit``'s history: the per-step total losses,
    with the answer loss and the mean keep probability in ``metrics["answer"]`` and ``metrics["keep"]``."""
    from ...runtime import resolve_device

    model.requires_grad_(False).to(resolve_device(device))

    def loss_fn(r, x, y):
        with r.attach(model, prompt_len, mode):
            loss = answer_loss(model(x), y)
        keep = r.keep_matrix().mean()
        return {"loss": loss + lam * keep, "answer": loss, "keep": keep}

    return fit(routers, tokens, targets, steps, batch_size=batch_size, lr=lr, weight_decay=0.0, seed=seed,
               device=device, loss_fn=loss_fn, desc="routers", progress=progress)


def _device(model) -> torch.device:
    return next(model.parameters()).device


# ---------------------------------------------------------------------------------------------------------------
# Scoring and input-agnostic baselines


@torch.no_grad()
def answer_scores(model, tokens, targets, skip=None, batch_size: int = 512) -> tuple[torch.Tensor, torch.Tensor]:
    """Per sequence: mean answer NLL (N,) and exact match (N,) bool — every answer token the argmax under
    teacher forcing, which is exactly when greedy decoding reproduces the whole answer."""
    nll, exact = [], []
    dev = _device(model)
    if skip is not None:
        skip = torch.as_tensor(skip, dtype=torch.bool)
        skip = skip.expand(len(tokens), -1) if skip.dim() == 1 else skip
    for i in range(0, len(tokens), batch_size):
        x, y = tokens[i:i + batch_size].to(dev), targets[i:i + batch_size].to(dev)
        logits = model(x, skip=None if skip is None else skip[i:i + batch_size].to(dev))
        has = y != IGNORE
        tok_nll = F.cross_entropy(logits.transpose(1, 2), y.clamp_min(0), reduction="none")  # (n, T)
        nll.append(((tok_nll * has).sum(1) / has.sum(1)).cpu())
        exact.append(((logits.argmax(-1) == y) | ~has).all(1).cpu())
    return torch.cat(nll), torch.cat(exact)


def k_subsets(n_layer: int, k: int) -> list[torch.Tensor]:
    """Every skip vector (n_layer,) bool with exactly ``k`` layers skipped."""
    out = []
    for combo in itertools.combinations(range(n_layer), k):
        s = torch.zeros(n_layer, dtype=torch.bool)
        s[list(combo)] = True
        out.append(s)
    return out


def best_fixed_skips(model, tokens, targets, n_layer: int) -> dict[int, torch.Tensor]:
    """For every k in 0..n_layer the k-subset of layers whose skipping gives the lowest mean answer NLL on
    (validation) ``tokens`` — the strongest input-agnostic choice, found exhaustively."""
    best = {}
    for k in range(n_layer + 1):
        scored = [(answer_scores(model, tokens, targets, s)[0].mean().item(), i, s)
                  for i, s in enumerate(k_subsets(n_layer, k))]
        best[k] = min(scored, key=lambda t: (t[0], t[1]))[2]
    return best


def last_k_skips(n_layer: int) -> dict[int, torch.Tensor]:
    """Skip the last k layers, for every k in 0..n_layer."""
    return {k: torch.arange(n_layer) >= n_layer - k for k in range(n_layer + 1)}


def per_task_best_fixed_skips(model, tokens, targets, task, n_layer: int) -> list[dict[int, torch.Tensor]]:
    """:func:`best_fixed_skips` on each task's sequences separately (task ids (N,) index ``TASKS``): the best
    input-agnostic set *within* each task — an oracle that knows the task label."""
    return [best_fixed_skips(model, tokens[task == t], targets[task == t], n_layer) for t in range(len(TASKS))]


def matched_counts(total_skipped: int, n: int, generator: torch.Generator) -> torch.Tensor:
    """(n,) long layer counts summing to ``total_skipped``: k = floor(mean) on some sequences and k+1 on the
    rest, which sequences drawn at random (not from their content)."""
    k, extra = divmod(int(total_skipped), n)
    counts = torch.full((n,), k, dtype=torch.long)
    counts[torch.randperm(n, generator=generator)[:extra]] += 1
    return counts


def skip_from_counts(per_k, counts: torch.Tensor, task: torch.Tensor | None = None) -> torch.Tensor:
    """(N, n_layer) bool: row i skips the set ``per_k[counts[i]]``; with ``task`` (N,) ``per_k`` is one such
    dict per task and row i takes its own task's set."""
    if task is None:
        return torch.stack([per_k[int(k)] for k in counts])
    return torch.stack([per_k[int(t)][int(k)] for t, k in zip(task, counts)])


def matched_fixed_skip(per_k: dict[int, torch.Tensor], total_skipped: int, n: int,
                       generator: torch.Generator) -> torch.Tensor:
    """An input-agnostic (N, n_layer) skip matrix skipping exactly ``total_skipped`` layers over ``n`` sequences
    (see :func:`matched_counts`)."""
    return skip_from_counts(per_k, matched_counts(total_skipped, n, generator))


def random_skip_like(skip: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Per sequence, a uniformly random set of as many layers as ``skip`` skips for it (N, n_layer) bool."""
    counts = skip.sum(1, keepdim=True)
    order = torch.rand(skip.shape, generator=generator).argsort(1).argsort(1)  # a random rank per layer
    return order < counts


# ---------------------------------------------------------------------------------------------------------------
# KV cache compatibility


@torch.no_grad()
def cache_check(model, prompts: torch.Tensor, skip: torch.Tensor, new_tokens: int) -> dict[str, float]:
    """Decode greedily with and without the KV cache under the same per-sequence skips.

    Returns ``mismatched``: sequences whose generated tokens differ; ``max_logit_diff``: largest |Δlogit| of a
    cached step-by-step pass against one uncached pass over the generated text; ``valid_in_skipped``: cache
    slots marked valid in (sequence, layer) pairs that were skipped (0 = skipped layers store no keys/values).
    """
    from ...models.gpt import KVCache

    dev = _device(model)
    prompts, skip = prompts.to(dev), skip.to(dev)
    cached = model.generate(prompts, new_tokens, skip=skip, use_cache=True)
    plain = model.generate(prompts, new_tokens, skip=skip, use_cache=False)
    cache = KVCache(model.config.n_layer)
    steps = [model(cached[:, :prompts.shape[1]], skip=skip, cache=cache)]
    steps += [model(cached[:, t:t + 1], skip=skip, cache=cache) for t in range(prompts.shape[1], cached.shape[1])]
    diff = (torch.cat(steps, dim=1) - model(cached, skip=skip)).abs().max().item()
    valid = torch.stack(cache.valid, dim=1)  # (N, n_layer, T)
    return {"mismatched": float((cached != plain).any(1).sum()), "max_logit_diff": diff,
            "valid_in_skipped": float(valid[skip].sum())}
