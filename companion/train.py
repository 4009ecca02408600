"""One training loop for every notebook: plain PyTorch + ``accelerate``, with the step counter, history and
checkpoint callbacks that self-supervised objectives would otherwise each keep for themselves.

The contract:

- ``fit(model, inputs, targets, steps, loss_fn=...)`` draws seeded minibatches of aligned ``inputs`` and
  ``targets`` (``targets=None`` for self-supervised training: the loss gets ``y=None``) and takes ``steps``
  AdamW steps under a cosine schedule with a short warm-up.
- ``loss_fn(model, x, y)`` returns the loss, or a dict ``{"loss": loss, name: value, ...}`` whose other entries
  are logged per step in ``History.metrics[name]``. An :class:`Objective` (a loss with per-step state, such as
  a schedule over training) reads the current step from ``self.step`` and ``self.total``, which ``fit`` sets
  before every call.
- ``checkpoints={"at": [0, 100, 300], "fn": fn}`` — ``fn(model, step)`` runs on the model in eval mode
  before step ``step``'s update (``step == steps`` means after training); its return value is kept in
  ``History.checkpoints[step]`` (e.g. a linear probe along training).

``fit`` returns a :class:`History`: the per-step losses (a list, for plotting) with ``metrics`` and
``checkpoints``. The model is left in eval mode on the accelerator's device.

Contrastive losses over two views (z1, z2 of N scenes): :func:`info_nce` (SimCLR's NT-Xent),
:func:`multilabel_supcon` (hard or Jaccard-weighted positives) and :func:`soft_contrastive` (SoftCon: targets
from label-vector similarity).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from . import runtime


class Objective:
    """Base class of a loss with per-step state. ``fit`` sets ``step`` (0-based) and ``total`` before each call."""

    step: int = 0
    total: int = 0

    def __call__(self, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor | None):
        raise NotImplementedError

    @property
    def progress(self) -> float:
        """The share of training done before this step, in [0, 1)."""
        return self.step / max(self.total, 1)


class History(list):
    """Per-step losses (the list itself), per-step ``metrics`` the loss reported, and ``checkpoints`` values."""

    def __init__(self, losses=()):
        super().__init__(losses)
        self.metrics: dict[str, list[float]] = {}
        self.checkpoints: dict[int, object] = {}

    def log(self, values: dict) -> None:
        for k, v in values.items():
            self.metrics.setdefault(k, []).append(float(v.detach()) if torch.is_tensor(v) else float(v))


@dataclass
class Checkpoints:
    """``fn(model, step)`` at each step of ``at`` (``at`` may include ``steps``: after the last update)."""

    at: Sequence[int]
    fn: Callable[[torch.nn.Module, int], object]


def _checkpoints(spec) -> Checkpoints | None:
    if spec is None or isinstance(spec, Checkpoints):
        return spec
    return Checkpoints(spec["at"], spec["fn"])


def fit(model: torch.nn.Module, inputs: torch.Tensor, targets: torch.Tensor | None, steps: int, batch_size: int = 64,
        lr: float = 3e-3, weight_decay: float = 1e-4, seed: int = 0, device: str = "auto",
        loss_fn: Callable | None = None, augment: Callable | None = None, desc: str = "train",
        progress: bool = True, checkpoints=None, parameters=None) -> History:
    """Train ``model`` for ``steps`` AdamW steps on seeded minibatches of ``inputs``/``targets`` (see the module doc).

    ``loss_fn`` defaults to cross-entropy on ``model(x)``; ``augment(x, generator)`` transforms a batch;
    ``parameters`` (default: all of the model's) are what the optimizer updates.
    """
    if targets is None and loss_fn is None:
        raise ValueError("fit without targets needs a loss_fn (self-supervised objective)")
    acc = runtime.accelerator(device)
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters() if parameters is None else parameters, lr=lr,
                            weight_decay=weight_decay)
    warmup = max(1, steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + torch.cos(torch.tensor(torch.pi * s / steps)).item()))
    model, opt = acc.prepare(model, opt)
    loss_fn = loss_fn or (lambda m, x, y: F.cross_entropy(m(x), y))
    ckpt = _checkpoints(checkpoints)
    at = set(ckpt.at) if ckpt else set()
    history = History()

    def checkpoint(step: int) -> None:
        if step in at:
            model.eval()
            with torch.no_grad():
                history.checkpoints[step] = ckpt.fn(acc.unwrap_model(model), step)
            model.train()

    model.train()
    bar = runtime.progress(steps, desc=desc, enabled=progress)
    for step in bar:
        checkpoint(step)
        idx = torch.randint(0, len(inputs), (batch_size,), generator=g)
        x = inputs[idx]
        y = None if targets is None else targets[idx]
        if augment is not None:
            x = augment(x, g)
        x = x.to(acc.device)
        y = None if y is None else y.to(acc.device)
        if isinstance(loss_fn, Objective):
            loss_fn.step, loss_fn.total = step, steps
        out = loss_fn(model, x, y)
        if isinstance(out, dict):
            loss = out["loss"]
            history.log({k: v for k, v in out.items() if k != "loss"})
        else:
            loss = out
        opt.zero_grad(set_to_none=True)
        acc.backward(loss)
        opt.step()
        sched.step()
        history.append(loss.item())
        if len(history) % 20 == 0 or len(history) == steps:
            bar.set_postfix(loss=sum(history[-20:]) / len(history[-20:]))
    checkpoint(steps)
    model = acc.unwrap_model(model)
    model.eval()
    return history


@torch.no_grad()
def predict(fn: Callable[[torch.Tensor], torch.Tensor], *tensors: torch.Tensor, batch_size: int = 256,
            device: torch.device | str = "cpu") -> torch.Tensor:
    """Concatenated outputs of ``fn(*batch)`` over aligned ``tensors``, in batches, on ``device``."""
    outs = []
    for i in range(0, len(tensors[0]), batch_size):
        outs.append(fn(*(t[i:i + batch_size].to(device) for t in tensors)).float().cpu())
    return torch.cat(outs)


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    return (logits.argmax(-1) == labels).float().mean().item()


# ----------------------------------------------------------------------------------------------------
# contrastive losses over two views: ``z1[i]`` and ``z2[i]`` embed two augmentations of scene ``i``. Each
# loss stacks them into 2N embeddings; an embedding is never compared with itself, and its other view is a
# positive. ``labels`` (N, C) are the scenes' multi-hot label vectors.


def _two_view_logits(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(2N, 2N) cosine similarities / ``temperature`` of the stacked views, and the (2N, 2N) bool self mask."""
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    eye = torch.eye(len(z), dtype=torch.bool, device=z.device)
    return z @ z.T / temperature, eye


def _partner(n: int, device=None) -> torch.Tensor:
    """(2N,) index of each stacked embedding's other view."""
    i = torch.arange(n, device=device)
    return torch.cat([i + n, i])


def _soft_cross_entropy(logits: torch.Tensor, eye: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Mean over rows of ``-sum_j w_ij log softmax_j(logits_i) / sum_j w_ij``, self pairs left out of both."""
    logp = torch.log_softmax(logits.masked_fill(eye, float("-inf")), dim=1).masked_fill(eye, 0.0)
    weights = weights.masked_fill(eye, 0.0)
    return (-(weights * logp).sum(1) / weights.sum(1)).mean()


def info_nce(z1: torch.Tensor, z2: torch.Tensor, temperature: float = 0.2) -> torch.Tensor:
    """SimCLR's NT-Xent: z1, z2 (N, D); each of the 2N embeddings has its other view as the only positive and
    the other 2N - 2 as negatives (softmax over cosine / ``temperature``). Uses no labels. Scalar."""
    logits, eye = _two_view_logits(z1, z2, temperature)
    return F.cross_entropy(logits.masked_fill(eye, float("-inf")), _partner(len(z1), z1.device))


def label_similarity(labels: torch.Tensor) -> torch.Tensor:
    """(N, C) multi-hot (or non-negative) label vectors -> (N, N) cosine similarity in [0, 1] (0 for an
    all-zero vector)."""
    y = F.normalize(labels.float(), dim=1)
    return y @ y.T


def multilabel_supcon(z1: torch.Tensor, z2: torch.Tensor, labels: torch.Tensor, temperature: float = 0.2,
                      weighting: str = "any") -> torch.Tensor:
    """Multi-label SupCon (Khosla et al.'s L_out, the mean of -log softmax over an anchor's positives), z1, z2
    (N, D), labels (N, C) multi-hot. ``weighting="any"``: the hard form — every other embedding whose scene
    shares at least one label is a positive with weight 1; ``"jaccard"``: positives weighted by the Jaccard
    overlap of the two label sets. The anchor's other view is always a positive with weight 1. Scalar."""
    n = len(z1)
    logits, eye = _two_view_logits(z1, z2, temperature)
    y = torch.cat([labels, labels]).float()
    inter = y @ y.T
    if weighting == "any":
        w = (inter > 0).float()
    elif weighting == "jaccard":
        union = y.sum(1, keepdim=True) + y.sum(1) - inter
        w = inter / union.clamp_min(1.0)
    else:
        raise ValueError(f"weighting must be 'any' or 'jaccard', not {weighting!r}")
    idx = torch.arange(2 * n, device=z1.device)
    w = w.index_put((idx, _partner(n, z1.device)), torch.ones(2 * n, device=z1.device))
    return _soft_cross_entropy(logits, eye, w)


def soft_contrastive(z1: torch.Tensor, z2: torch.Tensor, labels: torch.Tensor, temperature: float = 0.2,
                     form: str = "softmax") -> torch.Tensor:
    """SoftCon's soft contrastive loss (Wang et al. 2024; no training code is public, so the form is our
    reading): the target of a pair is the cosine similarity of the two scenes' label vectors
    (:func:`label_similarity`, 1 for the two views of one scene), the prediction is the embeddings' cosine /
    ``temperature``. z1, z2 (N, D), labels (N, C). Scalar.

    - ``form="softmax"``: row-wise soft cross-entropy — each row of targets normalised to sum to 1 against the
      softmax over the other 2N - 1 embeddings. With one-hot labels the target is 1 on same-class pairs and 0
      elsewhere, and this is exactly single-label SupCon's L_out (:func:`multilabel_supcon`, either weighting).
    - ``form="bce"``: binary cross-entropy of ``sigmoid(cosine / temperature)`` against each target, averaged
      over all off-diagonal pairs. With one-hot labels it is the pairwise sigmoid loss with same-class pairs as
      positives and all other pairs as negatives.
    """
    n = len(z1)
    logits, eye = _two_view_logits(z1, z2, temperature)
    target = label_similarity(torch.cat([labels, labels]))
    idx = torch.arange(2 * n, device=z1.device)
    target = target.index_put((idx, _partner(n, z1.device)), torch.ones(2 * n, device=z1.device))
    if form == "softmax":
        return _soft_cross_entropy(logits, eye, target)
    if form == "bce":
        off = ~eye
        return F.binary_cross_entropy_with_logits(logits[off], target[off])
    raise ValueError(f"form must be 'softmax' or 'bce', not {form!r}")
