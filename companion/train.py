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
