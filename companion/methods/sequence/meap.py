"""MEAP (Mask-Enhanced Autoregressive Prediction): next-token training on inputs with a few tokens masked.

MEAP's pretraining recipe (the one implemented here) replaces a small share of the **input** tokens with a
``[MASK]`` token and trains the ordinary causal next-token loss on every position (:func:`lm_targets`) against
the **unmasked** targets: no extra compute, no bidirectional attention, no change to the model beyond one
extra embedding row. Nothing is masked at evaluation. (The paper's fine-tuning recipe, a second, masked copy
of each sample, is not implemented.) The paper credits the gain in key
information retrieval to *more distinguishable attention*; :func:`attention_focus` measures it.

Mask convention in this module: a bool ``masked`` tensor is **True = this input token was replaced**.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from ...data import sequences as seqdata
from ...data.sequences import IGNORE



def num_masked(length: int, ratio: float) -> int:
    """Tokens masked out of ``length`` eligible ones: ``max(1, int(length * ratio))`` (0 when ratio is 0),
    as in the official pretraining and SFT code."""
    if not 0.0 <= ratio < 1.0:
        raise ValueError(f"mask ratio must be in [0, 1), got {ratio}")
    return 0 if ratio == 0 or length == 0 else min(length, max(1, int(length * ratio)))


def mask_inputs(tokens: torch.Tensor, ratio: float, mask_token: int, maskable: torch.Tensor | None = None,
                generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Replace ``num_masked(T, ratio)`` random eligible positions of each row by ``mask_token``.

    tokens (N, T) long; ``maskable`` (T,) or (N, T) bool, True = may be masked (default: every position). The
    count is a share of the whole sequence, as the official pretraining code (``int(block_size * ratio)``),
    drawn among each row's eligible positions (each row must have that many). Returns (masked tokens (N, T),
    masked (N, T) bool). ``tokens`` is not modified, so the targets built from it stay the unmasked sequence.
    """
    n, length = tokens.shape
    allowed = torch.ones(n, length, dtype=torch.bool) if maskable is None else maskable.to(torch.bool).cpu()
    if allowed.shape not in ((length,), (n, length)):
        raise ValueError(f"maskable must have shape ({length},) or ({n}, {length}), got {tuple(allowed.shape)}")
    allowed = allowed.expand(n, length)
    k = num_masked(length, ratio)
    if (allowed.sum(1) < k).any():
        raise ValueError(f"every row needs at least {k} maskable positions")
    masked = torch.zeros(n, length, dtype=torch.bool)
    if k:
        score = torch.rand(n, length, generator=generator).masked_fill(~allowed, 2.0)  # ineligible sort last
        masked.scatter_(1, score.argsort(1)[:, :k], True)
    masked = masked.to(tokens.device)
    return tokens.masked_fill(masked, mask_token), masked


def lm_targets(tokens: torch.Tensor) -> torch.Tensor:
    """(N, T) next-token targets on every position (the pretraining loss): ``tokens[:, t + 1]``, -100 last."""
    targets = torch.full_like(tokens, IGNORE)
    targets[:, :-1] = tokens[:, 1:]
    return targets


def evidence(tokens: torch.Tensor, context_len: int, value_len: int) -> torch.Tensor:
    """(N, T) bool, True on what the prompt's questions need: each question's key and, in the context, the
    key and value tokens it asks about (the only copy of that fact).

    tokens (N, T) from :func:`retrieval_task`: a context of ``context_len`` tokens, then questions of
    ``2 + value_len`` tokens (``QUERY key value...``); keys are the only ids shared by context and questions.
    Computed from the tokens alone, so a training loss can protect these positions from masking.
    """
    n, length = tokens.shape
    step = 2 + value_len
    key_pos = torch.arange(context_len + 1, length, step)  # (Q,) each question's key
    hit = (tokens[:, :context_len, None] == tokens[:, None, key_pos]).any(-1)  # (N, ctx) asked keys in context
    needed = torch.zeros(n, length, dtype=torch.bool, device=tokens.device)
    for j in range(1 + value_len):  # the key and the value tokens after it
        needed[:, j:context_len] |= hit[:, :context_len - j]
    needed[:, key_pos] = True
    return needed


def next_token_loss(model, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of ``model(x)`` (N, T, V) against targets ``y`` (N, T), ignoring -100."""
    return F.cross_entropy(model(x).flatten(0, 1), y.flatten(), ignore_index=IGNORE)


def meap_loss_fn(ratio: float, mask_token: int, maskable: torch.Tensor | None = None,
                 protect: Callable[[torch.Tensor], torch.Tensor] | None = None, seed: int = 0) -> Callable:
    """A ``loss_fn(model, x, y)`` for :func:`companion.train.fit`: mask the inputs (own seeded generator, so
    the minibatches drawn by ``fit`` stay those of the plain next-token run), then :func:`next_token_loss`
    against the unchanged targets. ``maskable`` (T,) bool limits where masks may go; ``protect(x)`` (N, T) bool
    marks positions never masked in that batch (e.g. :func:`evidence`, so every target stays inferable)."""
    g = torch.Generator().manual_seed(seed)

    def loss_fn(model, x, y):
        allowed = torch.ones(x.shape, dtype=torch.bool) if maskable is None else maskable.cpu().expand(x.shape)
        if protect is not None:
            allowed = allowed & ~protect(x).cpu()
        masked_x, _ = mask_inputs(x, ratio, mask_token, allowed, g)
        return next_token_loss(model, masked_x, y)

    return loss_fn


def exact_match(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """(N,) bool: every target position of the row (targets != -100) is predicted correctly (argmax)."""
    answered = targets != IGNORE
    right = (logits.argmax(-1) == targets) | ~answered
    return right.all(-1)


def accuracy_by_position(correct: torch.Tensor, position: torch.Tensor, num_positions: int) -> torch.Tensor:
    """(num_positions,) mean of ``correct`` (N,) per value of ``position`` (N,) (NaN where none)."""
    correct = correct.float()
    total = torch.zeros(num_positions).index_add_(0, position, correct)
    count = torch.zeros(num_positions).index_add_(0, position, torch.ones_like(correct))
    return total / count


def attention_focus(att: torch.Tensor, query_pos: int, gold_mask: torch.Tensor,
                    context_len: int | None = None) -> dict[str, torch.Tensor]:
    """How sharply one query position attends to the relevant tokens, per sequence.

    att (N, H, L, K) attention probabilities of one layer (rows sum to 1); ``query_pos`` the query row (e.g.
    the question's key, whose next token is the answer); ``gold_mask`` (N, K) bool, True on the relevant
    tokens (the gold document or needle). Returns, each (N,) and averaged over heads:

    - ``gold_share``: attention mass on the gold tokens (1 = all attention on them);
    - ``entropy``: entropy (nats) of the attention distribution over the first ``context_len`` keys (the
      context; default all keys), renormalised there — lower = more concentrated, i.e. more distinguishable.
    """
    p = att[:, :, query_pos, :].float()  # (N, H, K)
    gold = gold_mask[:, None, : p.shape[-1]].to(p.device, torch.bool)
    share = (p * gold).sum(-1)  # (N, H)
    ctx = p[..., : context_len if context_len is not None else p.shape[-1]]
    ctx = ctx / ctx.sum(-1, keepdim=True).clamp_min(1e-12)
    entropy = -(ctx * ctx.clamp_min(1e-12).log()).sum(-1)  # (N, H)
    return {"gold_share": share.mean(1).cpu(), "entropy": entropy.mean(1).cpu()}


def evidence_hidden(tokens: torch.Tensor, masked: torch.Tensor, context_len: int, value_len: int) -> torch.Tensor:
    """(N,) bool: the mask hides part of the :func:`evidence` (a question's key, or the only copy of an asked
    key or value in the context), so some (unchanged) target cannot be inferred from the masked input.
    ``masked`` (N, T) bool, True = replaced (from :func:`mask_inputs`)."""
    return (masked.to(torch.bool).cpu() & evidence(tokens, context_len, value_len).cpu()).any(1)


TASKS = ("documents", "needle")


def retrieval_task(task: str, n: int, num_positions: int, position=None, value_len: int = 1, filler_len: int = 2,
                   generator: torch.Generator | None = None, num_questions: int = 1,
                   **kwargs) -> tuple[seqdata.Retrieval, torch.Tensor]:
    """A retrieval batch whose gold information sits at one of ``num_positions`` positions.

    ``documents``: :func:`seqdata.multi_doc_retrieval` with ``num_positions`` documents of
    ``1 + value_len + filler_len`` tokens, position = gold document. ``needle``: :func:`seqdata.needle_haystack`
    with a haystack of the same length and the needle at ``num_positions`` evenly spaced depths (position 0 =
    start, ``num_positions - 1`` = as late as it fits). ``position`` None = uniform, else an int or (n,)
    tensor. ``num_questions`` (documents only): questions per prompt, the gold one first (a pretraining corpus
    where retrieval is most of what can be predicted). Returns (batch, position (n,)).
    """
    if task not in TASKS:
        raise ValueError(f"task must be one of {', '.join(TASKS)}, got {task!r}")
    g = generator if generator is not None else torch.Generator().manual_seed(0)
    if task == "documents":
        r = seqdata.multi_doc_retrieval(n, num_positions, value_len, filler_len, gold_position=position,
                                        generator=g, num_questions=num_questions, **kwargs)
        return r, r.gold
    if num_positions < 2 or num_questions != 1:
        raise ValueError(f"the needle task needs num_positions >= 2 and one question, got {num_positions}, "
                         f"{num_questions}")
    context_len = num_positions * (1 + value_len + filler_len)
    pos = torch.randint(0, num_positions, (n,), generator=g) if position is None else \
        torch.as_tensor(position, dtype=torch.long).expand(n).clone()
    last = context_len - value_len - 1  # the latest first token a needle can have
    depth = (pos * last + (num_positions - 1) // 2) // (num_positions - 1)
    r = seqdata.needle_haystack(n, context_len, value_len, depth=depth, generator=g, **kwargs)
    return r, pos


@torch.no_grad()
def evaluate_retrieval(model, batch: seqdata.Retrieval, device="cpu", batch_size: int = 256) -> dict:
    """Unmasked evaluation of a causal LM (``companion.models.GPT``) on a retrieval batch.

    Returns ``correct`` (N,) bool exact match of the answer; ``layer`` the *retrieval layer*, i.e. the layer
    whose attention from the question's key (the position that predicts the answer) puts the most mass, on
    average, on the gold tokens; at that layer ``gold_share`` and ``entropy`` (N,) (see
    :func:`attention_focus`); ``attention`` (N, K) that layer's head-averaged attention row; ``per_layer``
    the mean gold share of every layer.
    """
    model.eval()
    query_pos = batch.context_len + 1
    correct, focus, rows = [], [], []
    for i in range(0, len(batch.tokens), batch_size):
        x = batch.tokens[i:i + batch_size].to(device)
        logits, cap = model(x, capture=True)
        correct.append(exact_match(logits.cpu(), batch.targets[i:i + batch_size]))
        gm = batch.gold_mask[i:i + batch_size]
        focus.append([attention_focus(a, query_pos, gm, batch.context_len) for a in cap["attentions"]])
        rows.append(torch.stack([a[:, :, query_pos].mean(1).cpu() for a in cap["attentions"]]))  # (layers, n, K)
    n_layer = len(focus[0])
    share = torch.stack([torch.cat([f[j]["gold_share"] for f in focus]) for j in range(n_layer)])  # (layers, N)
    entropy = torch.stack([torch.cat([f[j]["entropy"] for f in focus]) for j in range(n_layer)])
    layer = int(share.mean(1).argmax())
    return {"correct": torch.cat(correct), "layer": layer, "gold_share": share[layer], "entropy": entropy[layer],
            "attention": torch.cat(rows, dim=1)[layer], "per_layer": share.mean(1)}
