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


def layer_flops(model: nn.Module, x: torch.Tensor, layers: dict[str, nn.Module]) -> dict[str, int]:
    """Dense FLOPs of each module in ``layers`` for **one** input: ``model(x[:1])`` runs once, every named module's
    input is captured, and its own forward on that input is counted with :func:`count_flops`."""
    captured: dict[str, tuple] = {}
    handles = [m.register_forward_hook(lambda mod, args, out, name=name: captured.__setitem__(name, args))
               for name, m in layers.items()]
    try:
        with torch.no_grad():
            model(x[:1])
    finally:
        for h in handles:
            h.remove()
    missing = set(layers) - set(captured)
    if missing:
        raise ValueError(f"modules {sorted(missing)} did not run in model(x)")
    with torch.no_grad():
        return {name: count_flops(lambda m=m, a=captured[name]: m(*a)) for name, m in layers.items()}


def active_channel_flops(total: int, dense: dict[str, int], in_active: dict[str, torch.Tensor],
                         out_active: dict[str, torch.Tensor]) -> torch.Tensor:
    """Per-input FLOPs (N,) float64 when only some channels of each layer are computed.

    ``total``: FLOPs of one input's whole forward (:func:`count_flops`); ``dense``: the part of it spent in
    channel-maskable layers (:func:`layer_flops`: convolutions with ``groups=1``, linear layers), whose cost is
    proportional to (input channels) x (output channels). ``in_active[name]`` and ``out_active[name]`` are the
    fractions (N,) of that layer's input and output channels that are active for each input (a missing entry
    means all). Per input: ``total - sum(dense) + sum_l dense_l * in_l * out_l``.
    """
    fractions = [t for t in (*in_active.values(), *out_active.values()) if torch.is_tensor(t) and t.dim() > 0]
    n = len(fractions[0]) if fractions else 1
    flops = torch.full((n,), float(total - sum(dense.values())), dtype=torch.float64)
    for name, d in dense.items():
        a = torch.as_tensor(in_active.get(name, 1.0), dtype=torch.float64)
        b = torch.as_tensor(out_active.get(name, 1.0), dtype=torch.float64)
        flops = flops + d * a * b
    return flops


__all__ += ["active_channel_flops", "layer_flops"]
