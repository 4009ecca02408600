"""UGround (Qian et al., 2025) at toy scale: Policy-Prompted Masking on a tiny multimodal transformer and
``sam_lite``.

A :class:`Grounder` is the package's multimodal GPT (:class:`~companion.models.mllm.ToyMLLM`) over
[image tokens, a referring expression, ``<seg>``] plus a promptable segmenter (``zoo.sam_lite``, image encoder
frozen, the rest fine-tuned as LISA fine-tunes SAM's decoder). Two ways to connect the ``<seg>`` state to the
segmenter (``prompt``):

- ``"sparse"`` — LISA's "<SEG> as prompt": the ``<seg>`` state, through a two-layer MLP, is the segmenter's
  sparse prompt embedding (N, 1, C);
- ``"masp"`` — UGround's Mask as Prompt: additionally the similarity map between the ``<seg>`` state and the
  image-token states of the same layer (scaled dot products on the g×g token grid, an affine map to logits,
  bilinearly upsampled) is the segmenter's dense logit-mask prompt (N, 32, 32). The official code keeps the
  ``<seg>`` embedding as the sparse prompt beside it and supervises the similarity map with its own BCE + dice
  loss; so do we.

Which layer's states connect (``layer``): the last, or — Stochastic Skip Connection (``policy=True``) — one
sampled per ``<seg>`` token from a categorical policy over the n_layer + 1 hidden states (the embedding output
included, as the official ``PolicyPromptedMasking`` does): logits ``<stop-grad(h_l), W_l>`` with a learned
(n_layer + 1, D) gate initialised to ones; REINFORCE with the negative similarity-map loss as reward, an EMA
baseline (decay 0.9) and weight 0.4. The chosen layer serves both prompts (the official default mode 3), and
evaluation uses the last layer (the official default ``eval_legacy=True``); :func:`predict` can also follow the
policy's greedy choice. Every layer's states go through the transformer's final LayerNorm, so similarities of
different layers share one scale.

Shapes: image tokens (N, g², C_img) from frozen toy-CLIP dense features; ids (N, T) with ``<seg>`` last;
segmenter features (N, C, 8, 8) precomputed; targets (N, 32, 32) bool, all False for an absent target. Metrics:
:func:`ciou` (cumulative IoU over a set), :func:`paired_ratio_interval` (its paired bootstrap interval),
:func:`empty_predictions`.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ... import train
from ...data import refer
from ...models import mllm

VOCAB = (*refer.VOCAB, "<seg>")
SEG = VOCAB.index("<seg>")
PROMPTS = ("sparse", "masp")
PG_WEIGHT = 0.4  # the official λ of the policy loss
EMA_DECAY = 0.9  # the official EMA baseline of the reward


def prompt_ids(text: torch.Tensor) -> torch.Tensor:
    """Expression ids (N, T) (``refer`` ids, which ``VOCAB`` keeps) → (N, T + 1) with ``<seg>`` appended last."""
    return torch.cat([text, torch.full((len(text), 1), SEG, dtype=text.dtype)], dim=1)


class Grounder(nn.Module):
    """ToyMLLM + ``<seg>`` projection (+ similarity-to-logit affine, + layer policy) + a promptable segmenter.

    ``sam`` is a ``SamLite`` (a copy: its image encoder is frozen here and everything else set trainable; the
    notebook passes precomputed ``image_features``); ``sam_dim`` its prompt-embedding width; ``grid`` the side of
    the image-token grid.
    """

    def __init__(self, sam: nn.Module, sam_dim: int, prompt: str = "sparse", policy: bool = False, grid: int = 8,
                 image_dim: int = 64, n_layer: int = 2, n_head: int = 4, dim: int = 64, size: int = 32):
        super().__init__()
        if prompt not in PROMPTS:
            raise ValueError(f"prompt must be one of {PROMPTS}, not {prompt!r}")
        if policy and prompt != "masp":
            raise ValueError("the layer policy's reward is the similarity-map loss: it needs prompt='masp'")
        self.prompt, self.grid, self.size = prompt, grid, size
        self.mllm = mllm.ToyMLLM(VOCAB, image_dim=image_dim, max_len=grid * grid + refer.EXPR_LEN + 1,
                                 n_layer=n_layer, n_head=n_head, dim=dim)
        self.seg_proj = nn.Sequential(nn.Linear(dim, dim), nn.ReLU(), nn.Linear(dim, sam_dim))
        if prompt == "masp":
            self.sim_scale = nn.Parameter(torch.tensor(1.0))
            self.sim_bias = nn.Parameter(torch.tensor(0.0))
        self.gate = nn.Parameter(torch.ones(n_layer + 1, dim)) if policy else None
        self.sam = sam  # a zoo model arrives frozen: its prompt encoder and decoder train, its image encoder not
        for p in sam.parameters():
            p.requires_grad_(True)
        for p in self.sam_encoder_parameters():
            p.requires_grad_(False)

    @property
    def n_states(self) -> int:
        return self.mllm.gpt.config.n_layer + 1

    def sam_encoder_parameters(self):
        enc = getattr(self.sam, "encoder", None)
        return [] if enc is None else list(enc.parameters())

    def states(self, tokens: torch.Tensor, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Image tokens (N, Li, C), ids (N, T) → the ``<seg>`` states (N, S, D) and image-token states
        (N, S, Li, D) of all S = n_layer + 1 hidden states, each through the final LayerNorm."""
        _, cap = self.mllm(self.mllm.embed(tokens, ids), capture=True)
        hs = torch.stack(list(cap["hidden_states"]), dim=1)  # (N, S, L, D)
        hs = self.mllm.gpt.ln_f(hs)
        li = tokens.shape[1]
        return hs[:, :, -1], hs[:, :, :li]

    def layer_logits(self, seg: torch.Tensor) -> torch.Tensor:
        """The policy's logits over layers (N, S) from the detached ``<seg>`` states (N, S, D)."""
        return torch.einsum("nsd,sd->ns", seg.detach(), self.gate)

    def similarity(self, seg: torch.Tensor, img: torch.Tensor) -> torch.Tensor:
        """``<seg>`` states (N, D) and image-token states (N, Li, D) → similarity logits (N, size, size): scaled dot
        products on the token grid, the learned affine map, bilinear upsampling."""
        sim = torch.einsum("nd,nld->nl", seg, img) / math.sqrt(seg.shape[-1])
        sim = (self.sim_scale * sim + self.sim_bias).view(-1, 1, self.grid, self.grid)
        return F.interpolate(sim, size=(self.size, self.size), mode="bilinear", align_corners=False)[:, 0]

    def decode(self, seg: torch.Tensor, img: torch.Tensor, layer: torch.Tensor, images: torch.Tensor,
               features: torch.Tensor) -> dict:
        """Prompt the segmenter from the states of ``layer`` (N,) per sample → ``masks`` (N, size, size) logits and
        ``sim`` (the dense prompt, (N, size, size) logits, or None for ``"sparse"``)."""
        rows = torch.arange(len(seg), device=seg.device)
        seg_l = seg[rows, layer]  # (N, D)
        sparse = self.seg_proj(seg_l)[:, None]  # (N, 1, C)
        sim = self.similarity(seg_l, img[rows, layer]) if self.prompt == "masp" else None
        masks = self.sam(images, sparse=sparse, dense=sim, features=features)
        return {"masks": masks, "sim": sim}


def mask_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per-item BCE + dice of logits (N, H, W) against bool targets (N, H, W) → (N,). Dice only where the target
    is non-empty (an empty target is learned through BCE alone: every pixel off)."""
    t = targets.to(logits.dtype)
    bce = F.binary_cross_entropy_with_logits(logits, t, reduction="none").flatten(1).mean(1)
    p = torch.sigmoid(logits).flatten(1)
    tf = t.flatten(1)
    dice = 1 - (2 * (p * tf).sum(1) + 1) / (p.sum(1) + tf.sum(1) + 1)
    return bce + torch.where(tf.sum(1) > 0, dice, torch.zeros_like(dice))


class GroundingObjective(train.Objective):
    """The training loss of a :class:`Grounder` for ``train.fit`` (inputs: indices into the tensors given here).

    Mask loss on the segmenter's output; with ``"masp"`` plus the similarity-map loss (weight ``sim_weight``); with
    the policy, a layer is sampled per sample (``generator``) and the REINFORCE term with reward = −(similarity-map
    loss) and an EMA baseline is added. Logs the batch IoU, the similarity-map loss, the mean chosen layer and the
    policy's mean probability of each hidden state (``p0``, ``p1``, ...).
    """

    def __init__(self, tokens, ids, images, features, targets, generator: torch.Generator, sim_weight: float = 1.0):
        self.tokens, self.ids, self.images, self.features, self.targets = tokens, ids, images, features, targets
        self.generator, self.sim_weight = generator, sim_weight
        self.baseline = 0.0

    def __call__(self, model: Grounder, idx: torch.Tensor, _y=None):
        idx = idx.cpu()
        dev = next(model.parameters()).device
        tokens, ids, images, feats, tgt = (t[idx].to(dev) for t in
                                           (self.tokens, self.ids, self.images, self.features, self.targets))
        seg, img = model.states(tokens, ids)
        last = torch.full((len(idx),), model.n_states - 1, dtype=torch.long, device=dev)
        logp = None
        if model.gate is not None:
            probs = torch.softmax(model.layer_logits(seg), dim=-1)
            layer = torch.multinomial(probs.detach().cpu(), 1, generator=self.generator)[:, 0].to(dev)
            logp = torch.log(probs.gather(1, layer[:, None])[:, 0].clamp_min(1e-12))
        else:
            layer = last
        out = model.decode(seg, img, layer, images, feats)
        loss = mask_loss(out["masks"], tgt).mean()
        logs = {}
        if out["sim"] is not None:
            sim_loss = mask_loss(out["sim"], tgt)
            loss = loss + self.sim_weight * sim_loss.mean()
            logs["sim_loss"] = sim_loss.mean()
        if logp is not None:
            reward = -sim_loss.detach()
            self.baseline = EMA_DECAY * self.baseline + (1 - EMA_DECAY) * reward.mean().item()
            loss = loss + PG_WEIGHT * -((reward - self.baseline) * logp).mean()
            logs["layer"] = layer.float().mean()
            logs.update({f"p{s}": probs[:, s].mean() for s in range(probs.shape[1])})
        with torch.no_grad():
            inter = ((out["masks"] > 0) & tgt).flatten(1).sum(1).float()
            union = ((out["masks"] > 0) | tgt).flatten(1).sum(1).float()
            logs["iou"] = torch.where(union > 0, inter / union.clamp_min(1), torch.ones_like(union)).mean()
        return {"loss": loss, **logs}


@torch.no_grad()
def predict(model: Grounder, tokens, ids, images, features, layer="last", batch_size: int = 256) -> dict:
    """Predictions over a set: ``masks`` (N, H, W) bool, ``sim`` (N, H, W) float logits or None, ``layer`` (N,)
    the state index used. ``layer``: ``"last"``, ``"policy"`` (the policy's greedy choice) or an int."""
    model.eval()
    dev = next(model.parameters()).device
    masks, sims, layers = [], [], []
    for i in range(0, len(ids), batch_size):
        b = [t[i:i + batch_size].to(dev) for t in (tokens, ids, images, features)]
        seg, img = model.states(b[0], b[1])
        if layer == "policy":
            chosen = model.layer_logits(seg).argmax(-1)
        else:
            fixed = model.n_states - 1 if layer == "last" else int(layer)
            chosen = torch.full((len(seg),), fixed, dtype=torch.long, device=dev)
        out = model.decode(seg, img, chosen, b[2], b[3])
        masks.append((out["masks"] > 0).cpu())
        layers.append(chosen.cpu())
        if out["sim"] is not None:
            sims.append(out["sim"].cpu())
    return {"masks": torch.cat(masks), "sim": torch.cat(sims) if sims else None, "layer": torch.cat(layers)}


@torch.no_grad()
def layer_similarities(model: Grounder, tokens, ids) -> torch.Tensor:
    """Similarity-map logits of every hidden state: (N, S, size, size) (for figures)."""
    model.eval()
    seg, img = model.states(tokens, ids)
    return torch.stack([model.similarity(seg[:, s], img[:, s]) for s in range(seg.shape[1])], dim=1)


def trainable_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def ciou(pred: torch.Tensor, target: torch.Tensor) -> float:
    """Cumulative IoU (gRefCOCO's cIoU): total intersection / total union over all items of bool masks (N, ...)."""
    inter = (pred & target).flatten(1).sum().item()
    union = (pred | target).flatten(1).sum().item()
    return inter / union if union else 1.0


def paired_ratio_interval(pred_a: torch.Tensor, pred_b: torch.Tensor, target: torch.Tensor, resamples: int = 2000,
                          seed: int = 0, confidence: float = 0.95) -> tuple[float, float]:
    """95 % percentile-bootstrap interval of ``ciou(pred_b) - ciou(pred_a)``, resampling items (paired)."""
    ia = (pred_a & target).flatten(1).sum(1).double().numpy()
    ua = (pred_a | target).flatten(1).sum(1).double().numpy()
    ib = (pred_b & target).flatten(1).sum(1).double().numpy()
    ub = (pred_b | target).flatten(1).sum(1).double().numpy()
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(ia), (resamples, len(ia)))
    diff = ib[idx].sum(1) / np.maximum(ub[idx].sum(1), 1) - ia[idx].sum(1) / np.maximum(ua[idx].sum(1), 1)
    alpha = (1 - confidence) / 2
    return float(np.quantile(diff, alpha)), float(np.quantile(diff, 1 - alpha))


def empty_predictions(pred: torch.Tensor) -> torch.Tensor:
    """(N, H, W) bool → (N,) bool: the predicted mask has no pixel (the model says "no target")."""
    return ~pred.flatten(1).any(1)
