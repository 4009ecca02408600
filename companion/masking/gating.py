"""Dynamic channel gating (Fire Together Wire Together) and static L1 filter pruning, for CNNs of conv-BN-ReLU blocks.

Conventions: a *block* is a ``conv_bn_relu`` ``nn.Sequential`` (:func:`companion.models.cnn.conv_bn_relu`); channel
masks are (N, C) float in {0, 1}, **1 = keep**, and multiply the block's output (N, C, H, W), so a channel that is off
contributes nothing downstream and need not be computed (its filter in this block, its input slice in the next).

**Gating** (:class:`GatedNet`, following the paper's code, ``selkerdawy/FTWT`` ``utils/layers.py``):

- every block gets a :class:`MaskPredictor`: adaptive average pooling + one 1x1 conv on the block's **input**
  (the previous layer's activations, *detached* in the paper's ``decoupled`` mode) → one logit per output channel;
  the mask is ``sigmoid(logit) > 0.5`` (a straight-through binary in ``joint`` mode);
- its target (:func:`top_mass_target`) comes from the block's own output: channels ranked by their normalised
  spatial maximum of |activation| are kept while the cumulative mass stays within ``threshold``;
- :func:`ftwt_loss` = task cross-entropy + BCE(predicted logits, targets). In ``decoupled`` mode the two are
  independent: the hard mask passes no gradient to the predictors, whose input is detached, so the task loss
  trains the network and the BCE trains only the predictors.

**Static pruning** (the baseline): :func:`l1_keep` keeps, in every block, the filters with the largest L1 norm
(Li et al., 2017); ``GatedNet(net, gate="static", static=keeps)`` applies that fixed mask to every input (the same
as removing the filters), and is fine-tuned like any model.

Counted FLOPs per input (:func:`per_input_flops`) use :func:`companion.eval.active_channel_flops`: the dense
FLOPs of each conv counted by ``torch.utils.flop_counter``, scaled by the input's active input and output channel
fractions (for a chain of blocks: block i's inputs are block i-1's outputs).
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..eval import active_channel_flops, count_flops, layer_flops

GATES = ("predicted", "target", "none", "static")
MODES = ("decoupled", "joint")


def blocks_of(model: nn.Module) -> list[nn.Sequential]:
    """The conv-BN(-ReLU) blocks of ``model`` in module order: every ``nn.Sequential`` whose first two modules are a
    ``Conv2d`` and a ``BatchNorm2d``."""
    return [m for m in model.modules() if isinstance(m, nn.Sequential) and len(m) >= 2
            and isinstance(m[0], nn.Conv2d) and isinstance(m[1], nn.BatchNorm2d)]


def channel_criterion(act: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) activations → (N, C): the spatial maximum of |activation| per channel (the paper's heatmap)."""
    return act.detach().abs().amax(dim=(2, 3))


def top_mass_target(act: torch.Tensor, threshold: float, tol: float = 1e-5) -> torch.Tensor:
    """The self-supervised target (N, C) float in {0, 1} for activations (N, C, H, W).

    The criterion (:func:`channel_criterion`) is normalised to sum to 1 over channels; channels sorted by it,
    largest first, are kept while their cumulative mass is at most ``threshold`` (+``tol``), as in the paper's
    ``get_gt_mask_ratio``: the channel whose mass crosses the threshold is dropped, and so are all-zero channels.
    ``threshold >= 1`` keeps every channel with a non-zero criterion.
    """
    crit = channel_criterion(act)
    mass = crit / crit.sum(dim=1, keepdim=True).clamp_min(1e-12)
    if threshold >= 1:
        return (mass > tol).float()
    sorted_mass, order = mass.sort(dim=1, descending=True)
    keep_sorted = (sorted_mass.cumsum(dim=1) - threshold <= tol).float()
    return torch.zeros_like(mass).scatter(1, order, keep_sorted)


class MaskPredictor(nn.Module):
    """Adaptive average pooling to ``pool`` x ``pool``, flattened, and a 1x1 conv → one logit per output channel.

    (N, in_channels, H, W) → (N, out_channels). The weights start at zero and the bias at ``init_logit``, so every
    gate starts open (the pretrained network unchanged) and the BCE closes them.
    """

    def __init__(self, in_channels: int, out_channels: int, pool: int = 1, init_logit: float = 1.0):
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(pool)
        self.conv = nn.Conv2d(in_channels * pool * pool, out_channels, 1)
        nn.init.zeros_(self.conv.weight)
        nn.init.constant_(self.conv.bias, init_logit)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(self.pool(x).flatten(1)[:, :, None, None]).flatten(1)


def binarize(prob: torch.Tensor, straight_through: bool = True) -> torch.Tensor:
    """``prob > 0.5`` as float; with ``straight_through`` the gradient of ``prob`` passes unchanged."""
    hard = (prob > 0.5).to(prob.dtype)
    return hard + prob - prob.detach() if straight_through else hard


@contextmanager
def channel_masks(blocks: list[nn.Module], fn):
    """While inside, block i's output ``out`` becomes ``fn(i, block_input, out)`` (forward hooks)."""
    handles = [b.register_forward_hook(lambda mod, args, out, i=i: fn(i, args[0], out)) for i, b in enumerate(blocks)]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


class GatedNet(nn.Module):
    """A CNN whose conv-BN-ReLU blocks are channel-gated per input.

    ``gate``: ``"predicted"`` (the predictors' masks: FTWT), ``"target"`` (the top-mass targets themselves),
    ``"none"`` (nothing masked; predictions and targets are still recorded) or ``"static"`` (the fixed keep
    vectors ``static``, one (C_i,) bool per block: static pruning; no predictors are built or run).
    After every forward, ``self.logits``, ``self.targets`` and ``self.masks`` hold one (N, C_i) tensor per block
    (the masks actually applied; all ones for ``"none"``). After a training forward they hold the autograd graph:
    run a forward under ``torch.no_grad`` before ``copy.deepcopy`` of the model.
    """

    def __init__(self, net: nn.Module, threshold: float | None = None, gate: str = "predicted", mode: str = "decoupled",
                 pool: int = 1, static: list[torch.Tensor] | None = None):
        super().__init__()
        if gate not in GATES or mode not in MODES:
            raise ValueError(f"gate must be one of {GATES} and mode one of {MODES}, got {gate!r}, {mode!r}")
        if (gate == "static") != (static is not None):
            raise ValueError("pass static keep vectors exactly when gate='static'")
        if gate != "static" and threshold is None:
            raise ValueError("dynamic gating needs a mass threshold")
        self.net, self.threshold, self.gate, self.mode = net, threshold, gate, mode
        self.blocks = blocks_of(net)  # a plain list: the blocks stay registered under self.net only
        if static is not None:
            if len(static) != len(self.blocks):
                raise ValueError(f"need one keep vector per block ({len(self.blocks)}), got {len(static)}")
            self.register_buffer("static_keep", torch.nn.utils.rnn.pad_sequence(
                [k.float() for k in static], batch_first=True))
            self.predictors = nn.ModuleList()
        else:
            self.predictors = nn.ModuleList(MaskPredictor(b[0].in_channels, b[0].out_channels, pool)
                                            for b in self.blocks)
        self.logits: list[torch.Tensor] = []
        self.targets: list[torch.Tensor] = []
        self.masks: list[torch.Tensor] = []

    def _hook(self, i: int, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        c = out.shape[1]
        if self.gate == "static":
            mask = self.static_keep[i, :c].expand(len(out), c)
        else:
            logits = self.predictors[i](x.detach() if self.mode == "decoupled" else x)
            target = top_mass_target(out, self.threshold)
            self.logits.append(logits)
            self.targets.append(target)
            if self.gate == "predicted":
                mask = binarize(torch.sigmoid(logits), straight_through=self.mode == "joint")
            elif self.gate == "target":
                mask = target
            else:
                mask = torch.ones_like(target)
        self.masks.append(mask)
        return out * mask[:, :, None, None]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) images → (N, classes) logits of the gated network."""
        self.logits, self.targets, self.masks = [], [], []
        with channel_masks(self.blocks, self._hook):
            return self.net(x)


def ftwt_loss(model: GatedNet, x: torch.Tensor, y: torch.Tensor) -> dict:
    """Task cross-entropy of the gated forward + mean over blocks of BCE(predicted logits, top-mass targets);
    also reports both parts and the mean active-channel fraction (``train.fit`` logs them)."""
    task = F.cross_entropy(model(x), y)
    bce = torch.stack([F.binary_cross_entropy_with_logits(lg, t) for lg, t in zip(model.logits, model.targets)]).mean()
    active = torch.cat([m.detach() for m in model.masks], dim=1).mean()
    return {"loss": task + bce, "task": task.detach(), "bce": bce.detach(), "active": active}


def l1_keep(blocks: list[nn.Module], counts: list[int]) -> list[torch.Tensor]:
    """Static L1 filter pruning: in block i keep the ``counts[i]`` filters whose conv weights have the largest L1
    norm (ties to the lower index). Returns one (C_i,) bool keep vector per block."""
    if len(counts) != len(blocks):
        raise ValueError(f"need one count per block ({len(blocks)}), got {len(counts)}")
    keeps = []
    for b, k in zip(blocks, counts):
        norms = b[0].weight.detach().abs().flatten(1).sum(1)
        order = sorted(range(len(norms)), key=lambda j: (-norms[j].item(), j))
        keep = torch.zeros(len(norms), dtype=torch.bool)
        keep[order[:k]] = True
        keeps.append(keep)
    return keeps


def chain_fractions(masks: list[torch.Tensor], head: str | None = "head") -> tuple[dict, dict]:
    """Active input and output channel fractions per layer of a chain of blocks (block i's input channels are
    block i-1's output channels; the first block sees all input channels), for masks (N, C_i). Layers are named
    ``"block{i}"``; with ``head`` the layer after the last block (e.g. the classifier) gets its input fraction.
    Returns ``(in_active, out_active)`` for :func:`companion.eval.active_channel_flops`."""
    out = {f"block{i}": m.float().mean(1) for i, m in enumerate(masks)}
    ins = {f"block{i}": masks[i - 1].float().mean(1) for i in range(1, len(masks))}
    if head is not None:
        ins[head] = masks[-1].float().mean(1)
    return ins, out


def flop_layers(model: GatedNet, head: nn.Module | None = None) -> dict[str, nn.Module]:
    """The channel-maskable layers of a gated chain: ``block{i}``'s conv, and ``head`` (a linear on the last block's
    pooled output) if given."""
    layers = {f"block{i}": b[0] for i, b in enumerate(model.blocks)}
    if head is not None:
        layers["head"] = head
    return layers


@torch.no_grad()
def per_input_flops(model: GatedNet, x: torch.Tensor, head: nn.Module | None = None, batch_size: int = 512,
                    masks: list[torch.Tensor] | None = None) -> torch.Tensor:
    """Counted FLOPs (N,) of each input's gated forward: the whole forward (predictors included) counted once by
    ``count_flops``, the blocks' convs (and ``head``) scaled by the input's active channel fractions. The masks are
    the ones ``model`` applies to ``x`` (or ``masks``, one (N, C_i) per block, e.g. targets recorded elsewhere)."""
    was_training = model.training
    model.eval()
    total = count_flops(lambda: model(x[:1]))
    dense = layer_flops(model, x[:1], flop_layers(model, head))
    if masks is None:
        parts = []
        for i in range(0, len(x), batch_size):
            model(x[i:i + batch_size])
            parts.append([m.detach() for m in model.masks])
        masks = [torch.cat(p) for p in zip(*parts)]
    model.train(was_training)
    ins, outs = chain_fractions(masks, "head" if head is not None else None)
    return active_channel_flops(total, dense, ins, outs)


__all__ = ["GATES", "GatedNet", "MODES", "MaskPredictor", "binarize", "blocks_of", "chain_fractions",
           "channel_criterion", "channel_masks", "flop_layers", "ftwt_loss", "l1_keep", "per_input_flops",
           "top_mass_target"]
