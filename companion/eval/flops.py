"""Counted compute: FLOPs measured by ``torch.utils.flop_counter`` — deterministic, unlike wall-clock time.

One counter for every family: ``count_flops(fn)`` counts the matrix multiplies, convolutions and attention of
``fn()`` (forward and any backward it runs); ``training_step_flops`` is one training step of a loss function.
Element-wise work (norms, activations, the optimizer update) is not counted, as usual for FLOP budgets.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn as nn


def count_flops(fn: Callable[[], object]) -> int:
    """Floating-point operations of ``fn()`` counted by ``torch.utils.flop_counter``.

    The CPU kernels of ``scaled_dot_product_attention`` are counted with torch's own attention formulas.
    """
    from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop_count, sdpa_flop_count

    def forward_flops(q, k, v, *_, out_shape=None, **__):  # arguments arrive as shapes
        return sdpa_flop_count(q, k, v)

    def backward_flops(grad_out, q, k, v, *_, out_shape=None, **__):
        return sdpa_backward_flop_count(grad_out, q, k, v)

    aten = torch.ops.aten
    custom = {}
    if hasattr(aten, "_scaled_dot_product_flash_attention_for_cpu"):
        custom[aten._scaled_dot_product_flash_attention_for_cpu] = forward_flops
        custom[aten._scaled_dot_product_flash_attention_for_cpu_backward] = backward_flops
    with FlopCounterMode(display=False, custom_mapping=custom) as counter:
        fn()
    return int(counter.get_total_flops())


def training_step_flops(model: nn.Module, loss_fn: Callable, batch: torch.Tensor) -> int:
    """FLOPs of one training step's forward and backward, ``loss_fn(model, batch, None).backward()``
    (``count_flops``); the gradients it leaves are cleared. Pass a loss function whose random masks come
    from a generator of its own, so counting does not shift the training run's masks."""
    flops = count_flops(lambda: loss_fn(model, batch, None).backward())
    model.zero_grad(set_to_none=True)
    return flops


__all__ = ["count_flops", "training_step_flops"]
