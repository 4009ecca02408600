"""One training loop for every notebook: plain PyTorch + ``accelerate``, with a progress bar."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .runtime import accelerator as make_accelerator


def fit(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, steps: int, batch_size: int = 64,
        lr: float = 3e-3, weight_decay: float = 1e-4, seed: int = 0, device: str = "auto",
        loss_fn: Callable | None = None, augment: Callable | None = None, desc: str = "train",
        progress: bool = True) -> list[float]:
    """Train ``model`` for ``steps`` AdamW steps on minibatches drawn (seeded) from ``images``/``labels``.

    ``loss_fn(model, x, y) -> loss`` defaults to cross-entropy on ``model(x)``; ``augment(x, generator)``
    transforms a batch. The learning rate follows a cosine schedule with a short warm-up. Returns the
    per-step losses. The model is left in eval mode on the accelerator's device.
    """
    acc = make_accelerator(device)
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    warmup = max(1, steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + torch.cos(torch.tensor(torch.pi * s / steps)).item()))
    model, opt = acc.prepare(model, opt)
    loss_fn = loss_fn or (lambda m, x, y: F.cross_entropy(m(x), y))
    model.train()
    losses = []
    bar = tqdm(range(steps), desc=desc, disable=not progress, mininterval=1.0, leave=False)
    for _ in bar:
        idx = torch.randint(0, len(images), (batch_size,), generator=g)
        x, y = images[idx], labels[idx]
        if augment is not None:
            x = augment(x, g)
        x, y = x.to(acc.device), y.to(acc.device)
        loss = loss_fn(model, x, y)
        opt.zero_grad(set_to_none=True)
        acc.backward(loss)
        opt.step()
        sched.step()
        losses.append(loss.item())
        if len(losses) % 20 == 0:
            bar.set_postfix(loss=f"{sum(losses[-20:]) / 20:.3f}")
    model = acc.unwrap_model(model)
    model.eval()
    return losses


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
