"""Mask-Adapter (Li et al., CVPR 2025) at toy scale: classify mask proposals from frozen CLIP dense features through
learned semantic activation maps instead of plain mask pooling.

The head (:class:`MaskAdapter`, following the official ``MASKAdapterHead``) embeds the binary mask with two stride-2
convolutions down to the feature grid, adds it to the frozen dense CLIP features, mixes them with a 1×1 convolution
and a few ConvNeXt blocks, and outputs ``maps`` activation maps per mask. Each map is turned into pooling weights by
a softmax over positions of its log-sigmoid; the weighted averages of the dense features are averaged over the maps
into one mask embedding, classified by cosine similarity with CLIP's text embeddings of the class names
(:func:`class_logits`). Unlike mask pooling, the weights may leave the mask (context) and ignore parts of it.

Training (:class:`AdapterObjective`) is the paper's: cross-entropy of the mask embeddings against the training
vocabulary (seen classes only), on ground-truth masks in a warm-up, then on ground-truth masks and "proposals"
matched to them (here IoU-jittered copies of the ground truth at IoU above the matcher's threshold), plus, in the
mask-consistency arm, the official code's consistency loss ``1 - cos(e(proposal), stopgrad(e(ground truth)))``
between each proposal's embedding and its matched ground-truth mask's.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ... import train
from ...masks.jitter import iou_jitter


def layer_norm_2d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """LayerNorm over the channels of (N, C, H, W) at each position."""
    return F.layer_norm(x.permute(0, 2, 3, 1), x.shape[1:2], weight, bias, eps).permute(0, 3, 1, 2)


class LayerNorm2d(nn.LayerNorm):
    """Channel LayerNorm of (N, C, H, W) feature maps."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return layer_norm_2d(x, self.weight, self.bias, self.eps)


class ConvNeXtBlock(nn.Module):
    """x + MLP(LayerNorm(depthwise conv(x))), the MLP (4× wide, GELU) applied per position (Liu et al. 2022)."""

    def __init__(self, dim: int, kernel: int = 7):
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, kernel, padding=kernel // 2, groups=dim)
        self.norm = LayerNorm2d(dim, eps=1e-6)
        self.mlp = nn.Sequential(nn.Conv2d(dim, 4 * dim, 1), nn.GELU(), nn.Conv2d(4 * dim, dim, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.mlp(self.norm(self.dwconv(x)))


class MaskAdapter(nn.Module):
    """Semantic activation maps from (mask, dense CLIP features), and the mask embeddings they pool.

    ``features`` (N, C, g, g) frozen dense CLIP features, ``masks`` (N, H, W) bool or soft with H = W = 4g
    (one mask per row: repeat an image's features for each of its masks).
    """

    def __init__(self, feature_dim: int = 64, channels: int = 64, maps: int = 8, mask_channels: int = 16,
                 blocks: int = 3, kernel: int = 7):
        super().__init__()
        self.maps = maps
        self.mask_embed = nn.Sequential(
            nn.Conv2d(1, mask_channels // 4, 3, stride=2, padding=1), LayerNorm2d(mask_channels // 4), nn.GELU(),
            nn.Conv2d(mask_channels // 4, mask_channels, 3, stride=2, padding=1), LayerNorm2d(mask_channels),
            nn.GELU(), nn.Conv2d(mask_channels, feature_dim, 1))
        self.fuse = nn.Conv2d(feature_dim, channels, 1)
        self.blocks = nn.Sequential(*(ConvNeXtBlock(channels, kernel) for _ in range(blocks)))
        self.norm = LayerNorm2d(channels)
        self.final = nn.Conv2d(channels, maps, 1)

    def activation_maps(self, features: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        """(N, C, g, g), (N, H, W) → (N, maps, g, g) activation logits."""
        g = features.shape[-1]
        m = F.interpolate(masks[:, None].float(), size=(4 * g, 4 * g), mode="bilinear", align_corners=False)
        x = self.fuse(features + self.mask_embed(m))
        return self.final(self.norm(self.blocks(x)))

    def forward(self, features: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        """(N, C, g, g), (N, H, W) → (N, C) mask embeddings (not normalised): see :func:`weighted_pool`."""
        return weighted_pool(features, self.activation_maps(features, masks))


def pooling_weights(maps: torch.Tensor) -> torch.Tensor:
    """(N, K, g, g) activation logits → (N, K, g·g) weights: softmax over positions of log-sigmoid(maps)."""
    return F.softmax(F.logsigmoid(maps).flatten(2), dim=-1)


def weighted_pool(features: torch.Tensor, maps: torch.Tensor) -> torch.Tensor:
    """(N, C, g, g) features, (N, K, g, g) activation logits → (N, C): each map's weighted average of the features
    (:func:`pooling_weights`), averaged over the K maps."""
    pooled = torch.einsum("nkp,ncp->nkc", pooling_weights(maps), features.flatten(2))
    return pooled.mean(1)


def class_logits(embeddings: torch.Tensor, classifier: torch.Tensor, logit_scale: float) -> torch.Tensor:
    """(N, C) mask embeddings, (K, C) unit-norm text embeddings → (N, K) scaled cosine logits (CLIP's zero-shot
    head)."""
    return logit_scale * F.normalize(embeddings, dim=-1) @ classifier.T


def consistency_loss(proposal: torch.Tensor, ground_truth: torch.Tensor) -> torch.Tensor:
    """The mask-consistency loss of the official code: mean over rows of 1 - cos(proposal, ground truth), the
    ground-truth embedding detached (N, C) → scalar."""
    return 1.0 - F.cosine_similarity(proposal, ground_truth.detach(), dim=-1).mean()


def jittered_pool(masks: torch.Tensor, copies: int, low: float, high: float, generator: torch.Generator):
    """``copies`` IoU-jittered versions of each of the (O, H, W) masks, their target IoUs uniform in [low, high]:
    returns ((O, copies, H, W) bool, (O, copies) reached IoU)."""
    o = len(masks)
    targets = low + (high - low) * torch.rand(o * copies, generator=generator)
    jit, reached = iou_jitter(masks.repeat_interleave(copies, 0), targets, generator)
    return jit.view(o, copies, *masks.shape[1:]), reached.view(o, copies)


class AdapterObjective(train.Objective):
    """Mask-Adapter's training loss on frozen features; ``fit``'s inputs are object indices, its targets labels.

    ``features`` (S, C, g, g) of S scenes, ``scene`` (O,) the scene of each object, ``masks`` (O, H, W) ground
    truth, ``proposals`` (O, J, H, W) IoU-jittered masks matched to them, ``classifier`` (K, C) text embeddings
    of the training vocabulary (targets index into it). Before ``warmup`` (a share of training) the loss is the
    cross-entropy on ground-truth masks only; after it, on ground-truth masks and one random proposal per object
    (drawn with ``generator``), plus ``consistency`` × :func:`consistency_loss` of the proposals against their
    ground truth. The consistency term is computed (and logged) in every arm; a weight of 0 leaves it out.
    """

    def __init__(self, features, scene, masks, proposals, classifier, logit_scale: float, warmup: float = 0.3,
                 consistency: float = 0.0, generator: torch.Generator | None = None):
        self.features, self.scene, self.masks, self.proposals = features, scene, masks, proposals
        self.classifier, self.logit_scale = classifier, logit_scale
        self.warmup, self.consistency = warmup, consistency
        self.generator = generator if generator is not None else torch.Generator().manual_seed(0)

    def __call__(self, model, idx, y):
        feats, gt = self.features[self.scene[idx]], self.masks[idx]
        e_gt = model(feats, gt)
        if self.progress < self.warmup:
            return F.cross_entropy(class_logits(e_gt, self.classifier, self.logit_scale), y)
        pick = torch.randint(0, self.proposals.shape[1], (len(idx),), generator=self.generator)
        e_prop = model(feats, self.proposals[idx, pick])
        logits = class_logits(torch.cat([e_gt, e_prop]), self.classifier, self.logit_scale)
        ce = F.cross_entropy(logits, torch.cat([y, y]))
        cons = consistency_loss(e_prop, e_gt)
        return {"loss": ce + self.consistency * cons, "ce": ce, "consistency": cons}


@torch.no_grad()
def embed(model: MaskAdapter, features: torch.Tensor, scene: torch.Tensor, masks: torch.Tensor,
          batch_size: int = 512) -> torch.Tensor:
    """Mask embeddings (O, C) of O masks (O, H, W) on the features (S, C, g, g) of their scenes ``scene`` (O,)."""
    return train.predict(lambda s, m: model(features[s], m), scene, masks, batch_size=batch_size)
