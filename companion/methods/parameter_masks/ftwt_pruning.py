"""Fire Together Wire Together at toy scale: FTWT gating of a VGG-style ``SmallCNN`` against static L1 pruning
at matched FLOPs.

The gating itself (predictors, top-mass targets, the decoupled loss, L1 filter pruning, per-input FLOPs) is
:mod:`companion.masking.gating`; this module holds what only this notebook needs: the FLOPs
matching of the L1 baseline, the threshold's FLOPs estimate, per-class channel usage, and a forward pass that
really skips inactive channels (batch 1), for the benchmark.
"""

from __future__ import annotations

import copy

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ...claims import bootstrap_interval
from ...eval import active_channel_flops, count_flops, layer_flops
from ...masking import gating


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    """(N,) predicted classes in eval mode."""
    model.eval()
    return torch.cat([model(x[i:i + batch_size]).argmax(1) for i in range(0, len(x), batch_size)])


@torch.no_grad()
def record_masks(gated: gating.GatedNet, x: torch.Tensor, batch_size: int = 512) -> tuple[list, list]:
    """The masks applied and the top-mass targets of ``gated``'s forward on ``x`` in eval mode: two lists with one
    (N, C_i) tensor per block."""
    gated.eval()
    masks, targets = [], []
    for i in range(0, len(x), batch_size):
        gated(x[i:i + batch_size])
        masks.append(gated.masks)
        targets.append(gated.targets)
    return [torch.cat(p) for p in zip(*masks)], [torch.cat(p) for p in zip(*targets)]


@torch.no_grad()
def estimated_flops(net: nn.Module, x: torch.Tensor, threshold: float, pool: int = 1) -> torch.Tensor:
    """The FLOPs saving known before any gating training: per input (N,), the counted FLOPs if every block kept
    exactly its top-mass target channels on the (ungated) pretrained ``net``, predictor cost included."""
    observer = gating.GatedNet(net, threshold, gate="none", pool=pool)
    return gating.per_input_flops(observer, x, head=net.fc, masks=record_masks(observer, x)[1])


@torch.no_grad()
def static_flops(net: nn.Module, x: torch.Tensor, keeps: list[torch.Tensor]) -> float:
    """Counted FLOPs of one input through ``net`` statically pruned to ``keeps`` (same for every input)."""
    pruned = gating.GatedNet(net, gate="static", static=keeps)
    return float(gating.per_input_flops(pruned, x[:1], head=net.fc)[0])


@torch.no_grad()
def match_l1(net: nn.Module, x: torch.Tensor, target: float, profile: list[float] | None = None
             ) -> tuple[list[int], list[torch.Tensor], float]:
    """Per-block filter counts for L1 pruning whose counted FLOPs are the smallest found **at or above** ``target``
    (the baseline never gets fewer FLOPs than the method).

    The counts follow a per-block ``profile`` of keep fractions (default: the same in every block) scaled by one
    factor: the largest scale whose FLOPs stay at or below ``target`` is taken, then one filter at a time is added
    where it costs the fewest FLOPs until ``target`` is reached. Returns (counts, keep vectors, counted FLOPs
    per input)."""
    blocks = gating.blocks_of(net)
    widths = [b[0].out_channels for b in blocks]
    profile = [1.0] * len(widths) if profile is None else [max(float(p), 1e-6) for p in profile]
    probe = gating.GatedNet(net, gate="static", static=[torch.ones(c, dtype=torch.bool) for c in widths])
    probe.eval()
    total = count_flops(lambda: probe(x[:1]))
    dense = layer_flops(probe, x[:1], gating.flop_layers(probe, net.fc))

    def flops(counts):
        ins, outs = gating.chain_fractions([torch.tensor([[k / c]]) for k, c in zip(counts, widths)])
        return float(active_channel_flops(total, dense, ins, outs)[0])

    scaled = lambda f: [max(1, min(c, int(f * p * c + 1e-9))) for p, c in zip(profile, widths)]
    scales = sorted({k / (p * c) for p, c in zip(profile, widths) for k in range(1, c + 1)})
    counts = scaled(scales[0])
    for f in scales:
        if flops(scaled(f)) <= target:
            counts = scaled(f)
    while flops(counts) < target - 1e-6 and any(k < c for k, c in zip(counts, widths)):
        options = [(flops(counts[:i] + [k + 1] + counts[i + 1:]), i) for i, (k, c) in enumerate(zip(counts, widths))
                   if k < c]
        counts[min(options)[1]] += 1
    return counts, gating.l1_keep(blocks, counts), flops(counts)


def l1_baseline(net: nn.Module, x: torch.Tensor, target: float, profile: list[float] | None = None
                ) -> tuple[gating.GatedNet, list[int], float]:
    """A copy of ``net`` statically L1-pruned (:func:`match_l1`) to the smallest counted FLOPs at or above
    ``target``, ready to fine-tune. Returns (pruned model, filters kept per block, its counted FLOPs per input)."""
    net = copy.deepcopy(net)
    counts, keeps, flops = match_l1(net, x, target, profile)
    return gating.GatedNet(net, gate="static", static=keeps), counts, flops


def flops_match_interval(estimate: torch.Tensor, measured: torch.Tensor) -> tuple[float, float]:
    """95 % bootstrap interval of |mean(measured) - mean(estimate)| (two independent samples: the estimate's
    training inputs, the measured test inputs); the lower end is 0 when the interval of the difference holds 0."""
    lo, hi = bootstrap_interval(estimate, measured, paired=False)
    if lo <= 0 <= hi:
        return 0.0, max(-lo, hi)
    return min(abs(lo), abs(hi)), max(abs(lo), abs(hi))


@torch.no_grad()
def channel_usage(masks: list[torch.Tensor], labels: torch.Tensor, n_classes: int) -> list[np.ndarray]:
    """Per block, (n_classes, C_i): the share of each class's inputs for which each channel is active."""
    return [np.stack([m[labels == c].float().mean(0).numpy() for c in range(n_classes)]) for m in masks]


@torch.no_grad()
def skipping_forward(gated: gating.GatedNet, x: torch.Tensor) -> torch.Tensor:
    """A VGG-style :class:`~companion.models.cnn.SmallCNN` wrapped in a predicted-gate :class:`gating.GatedNet`,
    run on **one** input (1, C, H, W) so that inactive channels are never computed: each block's predictor reads
    the compact input (its 1x1 weights sliced to the active input channels), then the conv runs with its weights
    sliced to the active output and input channels and BN uses the matching running statistics. Equals
    ``gated.eval()(x)``. Needs eval mode (running BN statistics), ``pool=1`` predictors and ``gate="predicted"``."""
    if len(x) != 1 or gated.gate != "predicted" or gated.training:
        raise ValueError("skipping_forward runs one input through an eval-mode predicted-gate network")
    net = gated.net
    h, active = x, torch.arange(x.shape[1])
    block_index = {id(b): i for i, b in enumerate(gated.blocks)}
    for layer in net.features:
        if id(layer) not in block_index:
            h = layer(h)
            continue
        pred = gated.predictors[block_index[id(layer)]]
        logits = F.conv2d(pred.pool(h), pred.conv.weight[:, active], pred.conv.bias).flatten(1)
        out = (logits[0] > 0).nonzero().flatten()  # sigmoid(logit) > 0.5
        conv, bn = layer[0], layer[1]
        h = F.conv2d(h, conv.weight[out][:, active], None, conv.stride, conv.padding)
        h = F.relu(F.batch_norm(h, bn.running_mean[out], bn.running_var[out], bn.weight[out], bn.bias[out],
                                False, 0.0, bn.eps))
        active = out
    return F.linear(h.mean(dim=(2, 3)), net.fc.weight[:, active], net.fc.bias)


__all__ = ["channel_usage", "estimated_flops", "flops_match_interval", "l1_baseline",
           "match_l1", "predict", "record_masks", "skipping_forward", "static_flops"]
